"""The `watch` cells' machinery (WatchSessions, the change stream): a watcher process that
times commit-to-delivery, the switch of the triggers that record changes, and a set of
idle watchers whose cost to the server is measured.

`python -m bench.watch TARGET PARENT` is the watcher: the shipped `AsyncSessionsClient`
on a channel of its own, in a process of its own, so that its receive times are not
those of the load generator's busy event loop (a caller's watcher does not share one with
its writers either). It prints `WATCHING` at its first change, then reads one line
`START_US END_US EXPECTED` (the measured window, wall-clock microseconds, and how many
changes the log holds in it), waits until it has seen that many of them (at most
DRAIN_TIMEOUT seconds) and prints its figures as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import uvloop

from bench import cpu
from bench.load import CHANNEL_OPTIONS, percentile
from tether.client import AsyncSessionsClient
from tether.v1 import session_service_pb2, session_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
# The tables whose triggers (migration 0005) write `changes`: USER leaves the foreign
# keys' internal triggers alone, and 0005's are the only user triggers of the schema.
CHANGE_TABLES = ("sessions", "members", "events")
# The bars: commit-to-delivery p99, and writes with changes recorded against without.
LATENCY_P99_MS = 100.0
WRITE_RATIO = 0.90
IDLE_WATCHERS = 1000
IDLE_CHANNELS = 10
IDLE_SECONDS = 5.0
# Seconds the watcher waits after the window for the changes still on their way.
DRAIN_TIMEOUT = 30.0
# Seconds to wait for a stream (or the watcher process) to come up.
OPEN_TIMEOUT = 60.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The longer idle window of a full run (seconds): idle watchers wait on their process's
# hub only, which looks at the log every TETHER_WATCH_POLL_INTERVAL; over this long,
# those looks and anything else periodic are in the figure.
LONG_IDLE = 30.0


@dataclass(frozen=True, slots=True)
class Latency:
    """Commit-to-delivery of the changes whose change_time is in the measured window:
    the watcher's wall-clock receive time minus the change's change_time."""

    changes_seen: int  # in the window
    changes_logged: int  # in the window, by the log itself (`changes`)
    changes_total: int  # everything the watcher received, warm-up and drain included
    p50_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float  # below 0 would mean the clocks disagree
    complete: bool  # every logged change of the window arrived before DRAIN_TIMEOUT
    watcher_cpu_s: float  # the watcher process's CPU time from its first change on


@dataclass(frozen=True, slots=True)
class Idle:
    """`watchers` open WatchSessions streams that see no change."""

    watchers: int
    channels: int
    open_seconds: float  # until every stream had its initial metadata
    rss_before_kib: int  # the server's, with the channels connected and no stream
    rss_after_kib: int
    idle_seconds: float
    server_cpu_s: float | None
    postgres_cpu_s: float | None  # the database's backends (None: not visible, e.g. SQLite)
    # The longer window (LONG_IDLE from the streams' opening): None when not measured (--quick).
    round_seconds: float | None = None
    round_server_cpu_s: float | None = None
    round_postgres_cpu_s: float | None = None

    @property
    def mib_per_1000(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / 1024 * 1000 / self.watchers

    @property
    def server_cpu_percent(self) -> float | None:
        return percent(self.server_cpu_s, self.idle_seconds)

    @property
    def postgres_cpu_percent(self) -> float | None:
        return percent(self.postgres_cpu_s, self.idle_seconds)

    @property
    def round_server_cpu_percent(self) -> float | None:
        return percent(self.round_server_cpu_s, self.round_seconds)

    @property
    def round_postgres_cpu_percent(self) -> float | None:
        return percent(self.round_postgres_cpu_s, self.round_seconds)


def percent(cpu_s: float | None, seconds: float | None) -> float | None:
    return None if cpu_s is None or not seconds else round(100 * cpu_s / seconds, 2)


def wall_us() -> int:
    return time.time_ns() // 1000


def as_datetime(us: int) -> datetime:
    """Exactly `us` (microseconds since the epoch): the same bounds as the watcher's."""
    return EPOCH + timedelta(microseconds=us)


# ---- the watcher process ---------------------------------------------------------------------


def summarize(
    received: list[tuple[int, int]], start: int, end: int, expected: int, cpu0: float
) -> dict[str, Any]:
    """Latency figures of the (change_time, receive time) pairs with change_time in the
    window; `cpu0`: the process's CPU time at the first change (its imports and start-up,
    most of its CPU time in a short cell, are not the watch's)."""
    latencies = sorted((got - at) / 1000 for at, got in received if start <= at <= end)
    return {
        "changes_seen": len(latencies),
        "changes_logged": expected,
        "changes_total": len(received),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(latencies[-1], 3) if latencies else float("nan"),
        "min_ms": round(latencies[0], 3) if latencies else float("nan"),
        "complete": len(latencies) >= expected,
        "watcher_cpu_s": round(time.process_time() - cpu0, 3),
    }


async def follow(target: str, parent: str) -> None:
    received: list[tuple[int, int]] = []  # (change_time, receive time), µs since the epoch
    cpu0 = 0.0

    async def watch(client: AsyncSessionsClient) -> None:
        nonlocal cpu0
        async for change in client.watch_sessions(parent=parent):
            received.append((change.change_time.ToMicroseconds(), wall_us()))
            if len(received) == 1:
                cpu0 = time.process_time()
                print("WATCHING", flush=True)

    async with AsyncSessionsClient(target, options=CHANNEL_OPTIONS) as client:
        task = asyncio.create_task(watch(client))
        line = await asyncio.to_thread(sys.stdin.readline)
        start, end, expected = (int(v) for v in line.split())
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while sum(start <= at <= end for at, _ in received) < expected and time.monotonic() < deadline:
            if task.done():
                task.result()  # the watch ended: say why
            await asyncio.sleep(0.05)
        task.cancel()
        print(json.dumps(summarize(received, start, end, expected, cpu0)), flush=True)


class Watcher:
    """The parent's handle on one watcher process."""

    def __init__(self, target: str, parent: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.watch", target, parent],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def _line(self) -> str:
        assert self.process.stdout is not None
        return (await asyncio.to_thread(self.process.stdout.readline)).decode()

    async def started(self, write: Callable[[], Awaitable[object]]) -> None:
        """Until the stream is open. The client's iterator shows that only by a change, so
        `write` one after another until the first arrives."""
        reading = asyncio.create_task(self._line())
        deadline = time.monotonic() + OPEN_TIMEOUT
        while not reading.done():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()  # which also ends the blocked read
                raise RuntimeError("the watcher saw no change")
            await write()
            await asyncio.wait({reading}, timeout=0.2)
        if reading.result().strip() != "WATCHING":
            raise RuntimeError(f"the watcher said {reading.result()!r}")

    async def finish(self, start: int, end: int, expected: int) -> Latency:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{start} {end} {expected}\n".encode())
        self.process.stdin.flush()
        line = await self._line()
        if not line:
            raise RuntimeError(f"the watcher exited with code {self.process.wait()} before its figures")
        return Latency(**json.loads(line))


async def logged_changes(conn: Any, namespace: str, start: int, end: int) -> int:
    """Changes of `namespace` whose change_time is in the window (bounds included)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM changes WHERE namespace = $1 AND change_time BETWEEN $2 AND $3",
        namespace,
        as_datetime(start),
        as_datetime(end),
    )
    return count


# ---- recording changes on and off ------------------------------------------------------------


async def may_alter(conn: Any) -> bool:
    """Whether this connection may switch the tables' triggers (owner or superuser): not
    so on a --database-url of someone else's."""
    allowed: bool | None = await conn.fetchval(
        "SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class"
        " WHERE oid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t))",
        list(CHANGE_TABLES),
    )
    return bool(allowed)


async def set_triggers(conn: Any, *, enabled: bool) -> None:
    """Turn the change-recording triggers on or off (ALTER TABLE waits for running writes)."""
    action = "ENABLE" if enabled else "DISABLE"
    for table in CHANGE_TABLES:
        await conn.execute(f"ALTER TABLE {table} {action} TRIGGER USER")
    disabled = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D'"
        " AND tgrelid::regclass::text = ANY($1::text[])",
        list(CHANGE_TABLES),
    )
    if (disabled == 0) != enabled:
        raise RuntimeError(f"triggers not {action.lower()}d: {disabled} disabled")


# ---- idle watchers -----------------------------------------------------------------------------


async def open_streams(
    channels: list[grpc.aio.Channel], parent: str, count: int
) -> list[grpc.aio.UnaryStreamCall[Any, Any]]:
    """`count` streams round-robin over `channels`, once the server has set each up. The raw
    stub: the client's iterator does not tell when its stream is open, the initial
    metadata (sent after the handler's first look at the log) does."""
    stubs = [session_service_pb2_grpc.SessionServiceStub(channel) for channel in channels]
    request = session_service_pb2.WatchSessionsRequest(parent=parent)
    calls = [stubs[i % len(stubs)].WatchSessions(request) for i in range(count)]
    async with asyncio.timeout(OPEN_TIMEOUT):
        await asyncio.gather(*(call.initial_metadata() for call in calls))
    return calls


async def idle_watchers(
    target: str,
    parent: str,
    server_pid: int,
    backends: list[int],
    count: int = IDLE_WATCHERS,
    channels: int = IDLE_CHANNELS,
    seconds: float = IDLE_SECONDS,
    *,
    poll_round: bool = False,
) -> Idle:
    """The server's RSS before and after `count` streams of `parent` (a namespace that sees
    no change) open, and its CPU time and its database backends' over `seconds` with them
    (and with `poll_round` on, also over LONG_IDLE seconds from their opening)."""
    server = cpu.tree(server_pid)
    opened = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    calls: list[grpc.aio.UnaryStreamCall[Any, Any]] = []
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            for channel in opened:
                await channel.channel_ready()
        await asyncio.sleep(1)  # so that the connections' own setup is in the "before"
        rss_before = cpu.rss_kib(server)
        began = time.perf_counter()
        calls = await open_streams(opened, parent, count)
        open_seconds = time.perf_counter() - began
        await asyncio.sleep(1)  # whatever the set-up left to finish
        rss_after = cpu.rss_kib(server)
        server0, postgres0 = cpu.snapshot(server), cpu.snapshot(backends)
        idle_began = time.perf_counter()
        await asyncio.sleep(seconds)
        server1, postgres1 = cpu.snapshot(server), cpu.snapshot(backends)
        rounds: dict[str, float | None] = {}
        if poll_round:
            await asyncio.sleep(max(0.0, began + open_seconds + LONG_IDLE - time.perf_counter()))
            rounds = {
                "round_seconds": round(time.perf_counter() - idle_began, 1),
                "round_server_cpu_s": cpu.used(server0, cpu.snapshot(server)),
                "round_postgres_cpu_s": cpu.used(postgres0, cpu.snapshot(backends)),
            }
    finally:
        for call in calls:
            call.cancel()
        for channel in opened:
            await channel.close()
    return Idle(
        watchers=count,
        channels=channels,
        open_seconds=round(open_seconds, 2),
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        idle_seconds=seconds,
        server_cpu_s=cpu.used(server0, server1),
        postgres_cpu_s=cpu.used(postgres0, postgres1),
        **rounds,
    )


if __name__ == "__main__":
    uvloop.run(follow(sys.argv[1], sys.argv[2]))
