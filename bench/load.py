"""A closed-loop asyncio load generator: `in_flight` workers, each issuing its next call as
soon as the previous one answers, spread over several gRPC channels, for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from tether.client import TetherError

# A call: given the channel to use and a sequence number unique within the run, one RPC.
Call = Callable[[grpc.aio.Channel, int], Awaitable[object]]
# Channels with identical arguments share gRPC's global subchannel pool, and so one TCP
# connection: each channel gets its own pool, so N channels are N connections (and can
# land on different `tether serve --workers` processes).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True, slots=True)
class Measurement:
    ops: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


class LoadGenerator:
    """Drives calls over `channels` gRPC channels (one TCP connection each) to one target."""

    def __init__(self, target: str, channels: int, server_pid: int) -> None:
        self.server_pid = server_pid  # the process serving `target` (and its children), for CPU time
        self._target = target
        self._channels = self._open(channels)
        self._sequence = 0

    def _open(self, channels: int) -> list[grpc.aio.Channel]:
        return [grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS) for _ in range(channels)]

    async def reconnect(self) -> None:
        """Close the channels and open as many new ones (new connections); call `ready()` next."""
        count = len(self._channels)
        await self.close()
        self._channels = self._open(count)

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channels[0]

    @property
    def channels(self) -> tuple[grpc.aio.Channel, ...]:
        """The channels in the order the workers use them (worker i: channel i mod N)."""
        return tuple(self._channels)

    async def ready(self) -> None:
        async with asyncio.timeout(30):
            for channel in self._channels:
                await channel.channel_ready()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def run(self, call: Call, *, in_flight: int, seconds: float, warmup: float) -> Measurement:
        """Warm up for `warmup` seconds (not recorded), then measure for `seconds`."""
        if warmup > 0:
            await self._loop(call, in_flight, warmup, None)
        latencies: list[float] = []
        ops, errors, first_error, elapsed = await self._loop(call, in_flight, seconds, latencies)
        latencies.sort()
        return Measurement(
            ops=ops,
            errors=errors,
            seconds=elapsed,
            p50_ms=percentile(latencies, 0.50) * 1e3,
            p99_ms=percentile(latencies, 0.99) * 1e3,
            first_error=first_error,
        )

    async def _loop(
        self, call: Call, in_flight: int, seconds: float, latencies: list[float] | None
    ) -> tuple[int, int, str, float]:
        errors = 0
        first_error = ""
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(index: int) -> None:
            nonlocal errors, first_error
            channel = self._channels[index % len(self._channels)]
            while True:
                self._sequence += 1
                sequence = self._sequence
                began = time.perf_counter()
                if began >= deadline:
                    return
                try:
                    await call(channel, sequence)
                except grpc.aio.AioRpcError as exc:  # a raw stub's
                    errors += 1
                    first_error = first_error or f"{exc.code().name}: {exc.details()}"
                    continue
                except TetherError as exc:  # AsyncSessionsClient's
                    errors += 1
                    first_error = first_error or str(exc)
                    continue
                if latencies is not None:
                    latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        elapsed = time.perf_counter() - start
        return (len(latencies) if latencies is not None else 0), errors, first_error, elapsed
