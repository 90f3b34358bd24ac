"""`python -m bench [--quick] [--json PATH] [--database-url URL] [--workers N]`: see README,
"Performance".

With `--workers N` the tether server is `tether serve --workers N`: its CPU time and
resident memory are those of the supervisor and all its worker processes, and the load
generator's channels (one TCP connection each) are reopened until the kernel has spread
them evenly over the workers (it hashes each new connection to one of them), so that a
run does not measure, say, 4 connections on one worker of two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import uvloop

from bench import cpu
from bench import database as db
from bench.floor import SERVICE as FLOOR_SERVICE
from bench.load import Call, LoadGenerator, Measurement
from tether.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

if TYPE_CHECKING:
    from tether.v1.session_service_pb2_grpc import SessionServiceAsyncStub

ROOT = Path(__file__).resolve().parent.parent
PARENT = f"namespaces/{db.NAMESPACE}"
# Each service cell's floor: the one statement the best possible handler would run.
FLOOR_OF = {
    "GetSession": "SELECT",
    "RecordActivity": "UPDATE",
    "CreateSession": "INSERT",
    "FindOrCreateSession": "SELECT",
}


@dataclass(frozen=True, slots=True)
class Settings:
    sizes: tuple[int, ...]
    seconds: float
    warmup: float
    mixed_seconds: float
    in_flight: tuple[int, ...]
    channels: int
    pool_size: int
    workers: int
    database_url: str | None
    server_url: str
    json_path: Path | None
    quick: bool


@dataclass(slots=True)
class Cell:
    group: str  # floor, service, mixed, scale
    name: str
    in_flight: int
    sessions: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    ops: int
    errors: int
    first_error: str
    statements_per_op: float | None
    # CPU microseconds per operation of the server process, the database's backends and the
    # load generator (None when /proc does not show them, e.g. a remote database).
    server_cpu_us_per_op: float | None
    postgres_cpu_us_per_op: float | None
    client_cpu_us_per_op: float | None
    baseline: str = ""  # what `ratio` compares with
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1e4, 1e5 sessions, short cells")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="an empty PostgreSQL database to fill (kept); default: a fresh database "
        "tether_bench_<hex> on 127.0.0.1:5432, dropped at the end",
    )
    parser.add_argument(
        "--server-url",
        metavar="URL",
        default=db.DEFAULT_SERVER,
        help=f"where the fresh database is created (default {db.DEFAULT_SERVER})",
    )
    parser.add_argument("--sizes", metavar="N,N", help="session counts for the scale cells")
    parser.add_argument("--seconds", type=float, metavar="S", help="measured seconds per cell")
    parser.add_argument("--mixed-seconds", type=float, metavar="S", help="seconds of the mixed run at 32")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels per target (default 4)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=10,
        help="database connections of each server (and of each tether worker) (default 10)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="tether serve --workers N: server processes (default 1)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    default_sizes = "10000,100000" if args.quick else "10000,1000000"
    return Settings(
        sizes=tuple(sorted(int(float(n)) for n in (args.sizes or default_sizes).split(","))),
        seconds=args.seconds or (0.4 if args.quick else 5.0),
        warmup=0.2 if args.quick else 1.0,
        mixed_seconds=args.mixed_seconds or (2.0 if args.quick else 60.0),
        in_flight=(1, 32),
        channels=args.channels,
        pool_size=args.pool_size,
        workers=args.workers,
        database_url=args.database_url,
        server_url=args.server_url,
        json_path=args.json,
        quick=args.quick,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_floor(dsn: str, pool_size: int) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", dsn, db.NAMESPACE, str(pool_size)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("PORT "):
        stop(process)
        raise RuntimeError("the floor server did not start")
    return process, f"127.0.0.1:{line.split()[1]}"


def start_tether(url: str, pool_size: int, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "TETHER_DATABASE_URL": url,
        "TETHER_LISTEN": target,
        "TETHER_LOG_LEVEL": "WARNING",  # the per-RPC line is INFO
        "TETHER_DB_POOL_SIZE": str(pool_size),
        "TETHER_WORKERS": str(workers),
    }
    return subprocess.Popen([sys.executable, "-m", "tether.server", "serve"], env=env), target


class Bench:
    def __init__(self, settings: Settings, url: str) -> None:
        self.s = settings
        self.url = url
        self.dsn = db.plain_dsn(url)
        self.run_id = secrets.token_hex(3)
        self.sessions = 0  # seeded sessions s-0 .. s-<sessions - 1>
        self.deep_token = ""
        self.statements_note = ""
        self.cells: list[Cell] = []
        self.stubs: dict[int, SessionServiceAsyncStub] = {}
        self.floor_methods: dict[tuple[int, str], Any] = {}
        self.connections_per_worker: list[int] = []

    def stub(self, channel: grpc.aio.Channel) -> SessionServiceAsyncStub:
        """The raw generated stub (not AsyncSessionsClient): no client-side work beyond
        what the floor's bytes-in/bytes-out calls do, so the ratios compare servers."""
        stub = self.stubs.get(id(channel))
        if stub is None:
            stub = self.stubs[id(channel)] = session_service_pb2_grpc.SessionServiceStub(channel)
        return stub

    def key(self, sequence: int) -> int:
        """A pseudo-random seeded session index (Knuth's multiplicative hash)."""
        return (sequence * 2654435761) % self.sessions

    # ---- the calls -------------------------------------------------------------------------

    def floor_call(self, method: str) -> Call:
        async def call(channel: grpc.aio.Channel, sequence: int) -> object:
            key = f"f{self.run_id}-{sequence}" if method == "Insert" else f"s-{self.key(sequence)}"
            rpc = self.floor_methods.get((id(channel), method))
            if rpc is None:
                rpc = self.floor_methods[(id(channel), method)] = channel.unary_unary(
                    f"/{FLOOR_SERVICE}/{method}", request_serializer=None, response_deserializer=None
                )
            return await rpc(key.encode())

        return call

    async def get_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        name = f"{PARENT}/sessions/s-{self.key(sequence)}"
        return await self.stub(channel).GetSession(session_service_pb2.GetSessionRequest(name=name))

    async def record_activity(self, channel: grpc.aio.Channel, sequence: int) -> object:
        name = f"{PARENT}/sessions/s-{self.key(sequence)}"
        return await self.stub(channel).RecordActivity(session_service_pb2.RecordActivityRequest(name=name))

    async def create_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        session = session_pb2.Session(
            kind=session_pb2.Session.KIND_DIRECT,
            agent=f"{PARENT}/participants/agent-{sequence % db.AGENTS}",
            user=f"{PARENT}/participants/user-{sequence % db.USERS}",
        )
        request = session_service_pb2.CreateSessionRequest(
            parent=PARENT, session_id=f"c{self.run_id}-{sequence}", session=session
        )
        return await self.stub(channel).CreateSession(request)

    async def find_or_create_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """95 % of the keys exist (seeded conversations), 5 % are new."""
        if sequence % 20:
            index = self.key(sequence)
            agent, conversation = f"agent-{index % db.AGENTS}", f"c-{index}"
        else:
            agent, conversation = "agent-0", f"n{self.run_id}-{sequence}"
        request = session_service_pb2.FindOrCreateSessionRequest(
            parent=PARENT,
            external_conversation=session_service_pb2.FindOrCreateSessionRequest.ExternalConversation(
                agent=f"{PARENT}/participants/{agent}", channel="web", conversation_id=conversation
            ),
        )
        return await self.stub(channel).FindOrCreateSession(request)

    async def list_first(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self.stub(channel).ListSessions(session_service_pb2.ListSessionsRequest(parent=PARENT))

    async def list_deep(self, channel: grpc.aio.Channel, sequence: int) -> object:
        request = session_service_pb2.ListSessionsRequest(parent=PARENT, page_token=self.deep_token)
        return await self.stub(channel).ListSessions(request)

    async def add_member(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """A new (session, user) pair every call: seeded sessions start without members."""
        session = (sequence // db.USERS) % self.sessions
        member = session_pb2.Member(
            participant=f"{PARENT}/participants/user-{sequence % db.USERS}",
            role=session_pb2.Member.ROLE_MEMBER,
        )
        request = session_service_pb2.AddMemberRequest(parent=f"{PARENT}/sessions/s-{session}", member=member)
        return await self.stub(channel).AddMember(request)

    async def mixed(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """Per 20 calls: 8 RecordActivity, 5 GetSession, 4 FindOrCreateSession, 2 ListSessions
        (first page), 1 CreateSession."""
        slot = sequence % 20
        if slot < 8:
            return await self.record_activity(channel, sequence)
        if slot < 13:
            return await self.get_session(channel, sequence)
        if slot < 17:
            return await self.find_or_create_session(channel, sequence * 20 + 1)  # an existing key
        if slot < 19:
            return await self.list_first(channel, sequence)
        return await self.create_session(channel, sequence)

    # ---- measuring -------------------------------------------------------------------------

    async def measure(
        self,
        gen: LoadGenerator,
        counters: db.Counters,
        group: str,
        name: str,
        call: Call,
        in_flight: int,
        seconds: float | None = None,
    ) -> Cell:
        await gen.run(call, in_flight=in_flight, seconds=self.s.warmup, warmup=0)
        backends = await counters.backends()
        server_pids = cpu.tree(gen.server_pid)  # with --workers: the supervisor and its workers
        statements0 = await counters.snapshot()
        server0, postgres0, client0 = (
            cpu.snapshot(server_pids),
            cpu.snapshot(backends),
            time.process_time(),
        )
        m: Measurement = await gen.run(call, in_flight=in_flight, seconds=seconds or self.s.seconds, warmup=0)
        server1, postgres1, client1 = (
            cpu.snapshot(server_pids),
            cpu.snapshot(backends),
            time.process_time(),
        )
        statements1 = await counters.snapshot()
        ops = max(m.ops, 1)

        def per_op(used: float | None) -> float | None:
            return None if used is None else round(used * 1e6 / ops)

        statements = None
        if statements0 is not None and statements1 is not None:
            statements = (statements1 - statements0 - 2) / ops  # minus the snapshot's own query
        cell = Cell(
            group=group,
            name=name,
            in_flight=in_flight,
            sessions=self.sessions,
            ops_per_s=round(m.ops_per_s, 1),
            p50_ms=round(m.p50_ms, 3),
            p99_ms=round(m.p99_ms, 3),
            ops=m.ops,
            errors=m.errors,
            first_error=m.first_error,
            statements_per_op=None if statements is None else round(statements, 2),
            server_cpu_us_per_op=per_op(cpu.used(server0, server1)),
            postgres_cpu_us_per_op=per_op(cpu.used(postgres0, postgres1)),
            client_cpu_us_per_op=per_op(client1 - client0),
        )
        self.cells.append(cell)
        print(f"  {group:7} {name:24} {in_flight:>3} in flight: {m.ops_per_s:8.0f} ops/s", file=sys.stderr)
        if m.errors:
            print(f"    {m.errors} errors, first: {m.first_error}", file=sys.stderr)
        return cell

    async def grow(self, conn: Any, size: int) -> None:
        started = time.perf_counter()
        await db.seed_sessions(conn, self.sessions, size)
        self.sessions = size
        self.deep_token = await db.deep_page_token(conn, 0.9)
        print(f"seeded {size} sessions in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        counters = db.Counters(conn)
        await counters.setup()
        self.statements_note = (
            "from pg_stat_statements"
            if counters.statements_available
            else f"n/a: pg_stat_statements unavailable ({counters.why_not})"
        )
        await db.seed_base(conn)
        await self.grow(conn, self.s.sizes[0])
        floor_process, floor_target = start_floor(self.dsn, self.s.pool_size)
        try:
            tether_process, tether_target = start_tether(self.url, self.s.pool_size, self.s.workers)
        except BaseException:
            stop(floor_process)
            raise
        floor = LoadGenerator(floor_target, self.s.channels, floor_process.pid)
        tether = LoadGenerator(tether_target, self.s.channels, tether_process.pid)
        try:
            await floor.ready()
            await self.wait_listening(tether_process, tether_target)
            await tether.ready()
            await self.spread(tether, tether_target)
            await self.wait_serving(tether)
            for in_flight in self.s.in_flight:
                for method in ("Empty", "Select", "Update", "Insert"):
                    label = method if method == "Empty" else method.upper()
                    await self.measure(floor, counters, "floor", label, self.floor_call(method), in_flight)
            service: list[tuple[str, Call]] = [
                ("GetSession", self.get_session),
                ("RecordActivity", self.record_activity),
                ("CreateSession", self.create_session),
                ("FindOrCreateSession", self.find_or_create_session),
                ("ListSessions first page", self.list_first),
                ("ListSessions 90% deep", self.list_deep),
                ("AddMember", self.add_member),
            ]
            for in_flight in self.s.in_flight:
                for name, call in service:
                    await self.measure(tether, counters, "service", name, call, in_flight)
            await self.measure(tether, counters, "mixed", "mixed", self.mixed, 1)
            rss_start = cpu.rss_kib(cpu.tree(tether_process.pid))
            cell = await self.measure(
                tether, counters, "mixed", "mixed", self.mixed, 32, seconds=self.s.mixed_seconds
            )
            rss_end = cpu.rss_kib(cpu.tree(tether_process.pid))
            cell.extra = {
                "rss_start_kib": rss_start,
                "rss_end_kib": rss_end,
                "rss_growth_percent": round(100 * (rss_end - rss_start) / max(rss_start, 1), 1),
            }
            for index, size in enumerate(self.s.sizes):
                if index:
                    await self.grow(conn, size)
                for name, call in (
                    ("GetSession", self.get_session),
                    ("ListSessions first page", self.list_first),
                    ("ListSessions 90% deep", self.list_deep),
                ):
                    await self.measure(tether, counters, "scale", name, call, 1)
        finally:
            await floor.close()
            await tether.close()
            stop(floor_process)
            stop(tether_process)
            await conn.close()
        self.add_ratios()

    async def wait_listening(self, process: subprocess.Popen[bytes], target: str) -> None:
        """Until every tether process listens on `target`'s port (connections made earlier
        would all land on the first worker and stay there)."""
        port = int(target.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while cpu.listeners(port) < self.s.workers:
            if process.poll() is not None:
                raise RuntimeError(f"tether serve exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tether serve: not {self.s.workers} listeners on {target} after 60s")
            await asyncio.sleep(0.05)

    async def spread(self, gen: LoadGenerator, target: str, attempts: int = 50) -> None:
        """With several workers: reopen the channels until each worker holds as many of
        their connections as any other, give or take one."""
        if self.s.workers == 1:
            return
        port = int(target.rsplit(":", 1)[1])
        for attempt in range(1, attempts + 1):
            workers = cpu.tree(gen.server_pid)[1:]
            deadline = time.monotonic() + 10
            while sum(counts := list(cpu.connections(workers, port).values())) != self.s.channels:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"expected {self.s.channels} connections to {target}, saw {counts}")
                await asyncio.sleep(0.01)
            spread = sorted(counts, reverse=True)
            if spread[0] - spread[-1] <= 1:
                break
            if attempt < attempts:
                await gen.reconnect()
                await gen.ready()
        self.stubs.clear()  # keyed by id(channel): the closed channels' ids may come back
        self.connections_per_worker = spread
        print(f"connections per tether worker: {spread} (channels opened {attempt} time(s))", file=sys.stderr)

    async def wait_serving(self, gen: LoadGenerator) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.get_session(gen.channel, 0)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def add_ratios(self) -> None:
        floors = {(c.name, c.in_flight): c for c in self.cells if c.group == "floor"}
        smallest = {
            (c.name, c.in_flight): c
            for c in self.cells
            if c.group == "scale" and c.sessions == self.s.sizes[0]
        }
        for cell in self.cells:
            if cell.group == "service" and cell.name in FLOOR_OF:
                base = floors[(FLOOR_OF[cell.name], cell.in_flight)]
                cell.baseline = f"{base.name} floor ops/s"
                cell.ratio = round(cell.ops_per_s / base.ops_per_s, 2) if base.ops_per_s else None
            elif cell.group == "floor" and cell.name != "Empty":
                base = floors[("Empty", cell.in_flight)]
                cell.baseline = "Empty ops/s"
                cell.ratio = round(cell.ops_per_s / base.ops_per_s, 2) if base.ops_per_s else None
            elif cell.group == "scale" and cell.sessions != self.s.sizes[0]:
                base = smallest[(cell.name, cell.in_flight)]
                cell.baseline = f"p50 at {base.sessions:,} sessions"
                cell.ratio = round(cell.p50_ms / base.p50_ms, 2) if base.p50_ms else None


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(cells: Sequence[Cell]) -> str:
    header = (
        "| group | cell | sessions | in flight | ops/s | p50 ms | p99 ms | errors "
        "| ratio | ratio to | stmts/op | CPU µs/op: server | PostgreSQL | client |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for c in cells:
        lines.append(
            f"| {c.group} | {c.name} | {c.sessions:,} | {c.in_flight} | {c.ops_per_s:,.0f} | {c.p50_ms:.2f} "
            f"| {c.p99_ms:.2f} | {c.errors} | {fmt(c.ratio, '.2f') if c.baseline else ''} | {c.baseline} "
            f"| {fmt(c.statements_per_op, '.1f')} | {fmt(c.server_cpu_us_per_op, '.0f')} "
            f"| {fmt(c.postgres_cpu_us_per_op, '.0f')} | {fmt(c.client_cpu_us_per_op, '.0f')} |"
        )
    return "\n".join(lines)


def environment(url: str, workers: int) -> dict[str, str]:
    async def server_version() -> str:
        conn = await asyncpg.connect(db.plain_dsn(url))
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return {
        "date": db.now(),
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "postgresql": asyncio.run(server_version()),
        "grpcio": grpc.__version__,
        "tether workers": str(workers),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    url = settings.database_url or asyncio.run(db.create_fresh(settings.server_url))
    on_exit: Callable[[], None] = (
        (lambda: None) if settings.database_url else lambda: asyncio.run(db.drop(url, settings.server_url))
    )
    try:
        print(f"database {url}", file=sys.stderr)
        db.migrate(url)
        bench = Bench(settings, url)
        uvloop.run(bench.run())
        env = environment(url, settings.workers)
    finally:
        on_exit()
    rendered = table(bench.cells)
    print()
    print(rendered)
    mixed = next(c for c in bench.cells if c.group == "mixed" and c.extra)
    print()
    whose = "server" if settings.workers == 1 else f"server (supervisor + {settings.workers} workers)"
    print(
        f"{whose} RSS over the mixed run at 32 in flight ({settings.mixed_seconds:g}s): "
        f"{mixed.extra['rss_start_kib'] / 1024:.1f} -> {mixed.extra['rss_end_kib'] / 1024:.1f} MiB "
        f"({mixed.extra['rss_growth_percent']:+.1f} %)"
    )
    print(f"statements per operation: {bench.statements_note}")
    print(" | ".join(f"{k}: {v}" for k, v in env.items()) + f" | took {time.perf_counter() - started:.0f}s")
    if settings.json_path:
        settings.json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "environment": env,
            "settings": {k: str(v) for k, v in asdict(settings).items()},
            "statements_per_op": bench.statements_note,
            "connections_per_worker": bench.connections_per_worker,
            "cells": [asdict(c) for c in bench.cells],
            "table": rendered,
        }
        settings.json_path.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
