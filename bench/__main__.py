"""`python -m bench [--quick] [--json PATH] [--database-url URL | --server-url URL] [--workers N]
[--no-sqlite] [--only watch]`: see README, "Performance".

By default the PostgreSQL side runs on a throwaway cluster the bench starts itself
(`bench.cluster`: pg_stat_statements preloaded, so statements per operation are counted)
and stops at the end; `--server-url` uses an existing server instead (a fresh database
there, dropped at the end) and `--database-url` an existing empty database (kept).

Groups of cells: `floor` (one raw statement per call), `stub` (the raw generated stub, no
request id), `client` (`tether.client.AsyncSessionsClient` as a caller uses it: its own
channel per connection, its default deadline, retry policy and request ids), `events`
(ListEvents "last 20" through the client, at each size's count of events in a namespace
of their own), `mixed` (stub), `gateway` (a Slack-style gateway on the client,
`bench.gateway`: one op is one message, one AppendEvent; and the same messages as 3-4
calls of the API before events), `sqlite` (through the client, one `tether serve` on an
SQLite file), `scale` (stub) and `scale client` at each size, and `watch` (WatchSessions,
`bench.watch`: commit-to-delivery under the client's mixed workload, the write path with
changes recorded and without, 1,000 idle watchers); `--only watch` runs only that group.

With `--workers N` the tether server is `tether serve --workers N`: its CPU time and
resident memory are those of the supervisor and all its worker processes, and the load
generator's channels (one TCP connection each; the clients' likewise) are reopened until
the kernel has spread them evenly over the workers (it hashes each new connection to one
of them), so that a run does not measure, say, 4 connections on one worker of two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import uvloop

from bench import cpu, sqlite, watch
from bench import database as db
from bench.cluster import Cluster, find_bindir, free_port
from bench.floor import SERVICE as FLOOR_SERVICE
from bench.gateway import Gateway, MultiCallGateway, chat_message
from bench.load import CHANNEL_OPTIONS, Call, LoadGenerator, Measurement
from tether.client import (
    AsyncSessionsClient,
    AuthorKey,
    Event,
    ExternalConversation,
    Member,
    Participant,
    Session,
)
from tether.v1 import event_pb2, session_pb2, session_service_pb2, session_service_pb2_grpc

if TYPE_CHECKING:
    from tether.v1.session_service_pb2_grpc import SessionServiceAsyncStub

ROOT = Path(__file__).resolve().parent.parent
PARENT = f"namespaces/{db.NAMESPACE}"
EVENTS_PARENT = f"namespaces/{db.EVENTS_NAMESPACE}"
# An event's content, by sequence % 2 as `Bench.author` picks the author: a short chat
# message (the agent's reply, the user's message).
CHAT = (
    chat_message("Sure: your order 1234 ships tomorrow; I will send the tracking link.", "model"),
    chat_message("Hi, where is my order 1234? It was due yesterday.", "user"),
)
# Each stub and client cell's floor: the one statement the best possible handler would run.
FLOOR_OF = {
    "GetSession": "SELECT",
    "RecordActivity": "UPDATE",
    "CreateSession": "INSERT",
    "FindOrCreateSession": "SELECT",
    "FindOrCreateSession hit": "SELECT",
    "AppendEvent": "INSERT",
}
SCALE_GROUPS = ("scale", "scale client")
GATEWAY_PG = "gateway (PostgreSQL)"
GATEWAY_MULTI_PG = "gateway, 3-4 calls (PostgreSQL)"
GATEWAY_SQLITE = "gateway (SQLite)"
GATEWAYS = (GATEWAY_PG, GATEWAY_MULTI_PG, GATEWAY_SQLITE)
# Issue 11's targets: AppendEvent and the one-call gateway against the INSERT floor,
# ListEvents "last 20" at the largest count of events against the smallest.
APPEND_EVENT_RATIO = 0.5
GATEWAY_RATIO = 0.4
LIST_EVENTS_GROWTH = 1.3
EVENTS_GROUP = "events"
LIST_EVENTS = "ListEvents last 20"
SQLITE_WRITERS = "64 writers: CreateSession + RecordActivity"
# Issue 10's SQLite targets (the ratio column of the sqlite cells is measured / target).
SQLITE_WRITES_PER_S = 1000.0
SQLITE_P99_MS = 100.0
SQLITE_GET_P50_MS = 1.0
WATCH_GROUP = "watch"
WATCH_MIXED = "mixed (client) + 1 watcher"
WATCH_MIXED_ALONE = "mixed (client), no watcher"
WATCH_IDLE = f"{watch.IDLE_WATCHERS:,} idle watchers"
# The write-path cells, each measured with changes recorded and without (GetSession: the
# control, which no trigger touches).
WATCH_WRITES = ("GetSession", "RecordActivity", "CreateSession", "AppendEvent")
RECORDED, NOT_RECORDED = "changes recorded", "triggers off"
# Every server process the bench started: stopped at exit whatever happened.
CHILDREN: list[subprocess.Popen[bytes]] = []


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
    server_url: str | None
    json_path: Path | None
    quick: bool
    sqlite: bool
    only: str | None  # one group alone (the setup and seeding as always), or None: all


@dataclass(slots=True)
class Cell:
    group: str  # floor, stub, client, events, mixed, gateway, sqlite, scale, scale client, watch
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
        "tether_bench_<hex> on a throwaway cluster (see --server-url)",
    )
    parser.add_argument(
        "--server-url",
        metavar="URL",
        help="an existing PostgreSQL server where the fresh database is created and dropped at the end "
        "(statements per operation are n/a unless pg_stat_statements is preloaded there); default: a "
        "throwaway cluster the bench starts with pg_stat_statements (initdb as the postgres OS user when "
        f"root), or {db.DEFAULT_SERVER} when no PostgreSQL binaries are found",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite cells")
    parser.add_argument(
        "--only", choices=(WATCH_GROUP,), help="run only this group of cells (with the usual setup)"
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
        sqlite=not args.no_sqlite,
        only=args.only,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def how_it_ended(process: subprocess.Popen[bytes]) -> str:
    # The bench stops its servers only at the end: a stop before it came from elsewhere.
    code = process.returncode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}, not by the bench"
    if code == 0:
        return "stopped cleanly (exit code 0: SIGTERM or SIGINT from something other than the bench)"
    return f"exited with code {code}"


def check_alive(pid: int, what: str) -> None:
    """RuntimeError when the server process `pid` the bench started has ended: better a
    clear failure than cell after cell of connection errors."""
    for process in CHILDREN:
        if process.pid == pid and process.poll() is not None:
            raise RuntimeError(f"{what} (pid {pid}) {how_it_ended(process)}")


def start_floor(dsn: str, pool_size: int) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", dsn, db.NAMESPACE, str(pool_size)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    CHILDREN.append(process)
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
    process = subprocess.Popen([sys.executable, "-m", "tether.server", "serve"], env=env)
    CHILDREN.append(process)
    return process, target


class Bench:
    def __init__(self, settings: Settings, url: str, sqlite_path: Path | None) -> None:
        self.s = settings
        self.url = url
        self.dsn = db.plain_dsn(url)
        self.sqlite_path = sqlite_path
        self.run_id = secrets.token_hex(3)
        self.sessions = 0  # seeded sessions s-0 .. s-<sessions - 1>
        # Seeded sessions e-0 .. e-<event_sessions - 1> of NAMESPACE, with their agent and user as
        # members (the SQLite file has as many).
        self.event_sessions = 0
        # EVENTS_NAMESPACE: sessions e-0 .. e-<listed_sessions - 1>, EVENTS_PER_SESSION events each.
        self.listed_sessions = 0
        self.events = 0  # events in EVENTS_NAMESPACE
        self.deep_token = ""
        self.statements_note = ""
        self.cells: list[Cell] = []
        self.stubs: dict[int, SessionServiceAsyncStub] = {}
        # One AsyncSessionsClient (its own channel: one TCP connection) per load generator
        # channel, by id() of that channel: a client cell's worker i uses the client of the
        # channel a stub cell's worker i uses, so both paths run over as many connections.
        self.clients: dict[int, AsyncSessionsClient] = {}
        self.floor_methods: dict[tuple[int, str], Any] = {}
        self.connections_per_worker: list[int] = []
        self.client_connections_per_worker: list[int] = []
        self.gateway = Gateway(PARENT, f"g{self.run_id}-")
        self.multi_gateway = MultiCallGateway(PARENT, f"m{self.run_id}-")
        self.sqlite_gateway = Gateway(PARENT, f"g{self.run_id}-")
        # The measured window of the last cell (wall clock, µs since the epoch): what the
        # watch cells compare change times with.
        self.window_us = (0, 0)

    def wants(self, group: str) -> bool:
        return self.s.only in (None, group)

    def stub(self, channel: grpc.aio.Channel) -> SessionServiceAsyncStub:
        """The raw generated stub (not AsyncSessionsClient): no client-side work beyond
        what the floor's bytes-in/bytes-out calls do, so the ratios compare servers."""
        stub = self.stubs.get(id(channel))
        if stub is None:
            stub = self.stubs[id(channel)] = session_service_pb2_grpc.SessionServiceStub(channel)
        return stub

    def client(self, channel: grpc.aio.Channel) -> AsyncSessionsClient:
        return self.clients[id(channel)]

    async def open_clients(self, gen: LoadGenerator, target: str) -> list[AsyncSessionsClient]:
        """A client per channel of `gen`, made as a caller makes one: given the target, with
        its defaults (deadline, retry service config, wait-for-ready). The client cannot
        share a channel and keep its service config, so each opens its own; the option
        `grpc.use_local_subchannel_pool` gives each its own TCP connection (clients to
        one target would otherwise share one). Each makes one call, which connects it."""
        clients = [AsyncSessionsClient(target, options=CHANNEL_OPTIONS) for _ in gen.channels]
        for channel, client in zip(gen.channels, clients, strict=True):
            self.clients[id(channel)] = client
        await asyncio.gather(*(client.get_session(name=f"{PARENT}/sessions/s-0") for client in clients))
        return clients

    async def close_clients(self, gen: LoadGenerator) -> None:
        for channel in gen.channels:
            client = self.clients.pop(id(channel), None)
            if client is not None:
                await client.close()

    def key(self, sequence: int) -> int:
        """A pseudo-random seeded session index (Knuth's multiplicative hash)."""
        return (sequence * 2654435761) % self.sessions

    def conversation(self, sequence: int, *, hits_only: bool) -> tuple[str, str]:
        """(agent, conversation id) of a find-or-create: a seeded conversation, except for
        one call in 20 (a new one) unless `hits_only`."""
        if hits_only or sequence % 20:
            index = self.key(sequence)
            return f"agent-{index % db.AGENTS}", f"c-{index}"
        return "agent-0", f"n{self.run_id}-{sequence}"

    def event_session(self, sequence: int) -> int:
        """A pseudo-random index of the event sessions e-<i> (what AppendEvent appends to)."""
        return (sequence * 2654435761) % self.event_sessions

    @staticmethod
    def author(index: int, sequence: int) -> tuple[Participant.Kind.ValueType, str]:
        """(kind, participant id, which is also its external id) of the author of an event
        in e-<index>: its user and its agent in turn, both members."""
        if sequence % 2:
            return Participant.KIND_USER, f"user-{index % db.USERS}"
        return Participant.KIND_AGENT, f"agent-{index % db.AGENTS}"

    # ---- the calls: floor and raw stub -----------------------------------------------------

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
        return await self._stub_find_or_create(channel, sequence, hits_only=False)

    async def find_or_create_hit(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """Every key exists (seeded conversations)."""
        return await self._stub_find_or_create(channel, sequence, hits_only=True)

    async def _stub_find_or_create(
        self, channel: grpc.aio.Channel, sequence: int, *, hits_only: bool
    ) -> object:
        agent, conversation = self.conversation(sequence, hits_only=hits_only)
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

    def new_member(self, sequence: int) -> tuple[str, str]:
        """(session, participant) of an AddMember: a new pair every call (the load generator's
        sequence never repeats), since seeded sessions start without members."""
        session = (sequence // db.USERS) % self.sessions
        return f"{PARENT}/sessions/s-{session}", f"{PARENT}/participants/user-{sequence % db.USERS}"

    async def add_member(self, channel: grpc.aio.Channel, sequence: int) -> object:
        session, participant = self.new_member(sequence)
        member = session_pb2.Member(participant=participant, role=session_pb2.Member.ROLE_MEMBER)
        request = session_service_pb2.AddMemberRequest(parent=session, member=member)
        return await self.stub(channel).AddMember(request)

    async def append_event(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """A chat message appended to an existing session by name, by an existing member
        named in the event (the common path)."""
        index = self.event_session(sequence)
        _, author = self.author(index, sequence)
        request = session_service_pb2.AppendEventRequest(
            parent=f"{PARENT}/sessions/e-{index}",
            event=event_pb2.Event(author=f"{PARENT}/participants/{author}", content=CHAT[sequence % 2]),
        )
        return await self.stub(channel).AppendEvent(request)

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

    # ---- the calls: AsyncSessionsClient ----------------------------------------------------
    # The same requests as the stub cells, through the shipped client, which sends a fresh
    # request id with every creating call (CreateSession, FindOrCreateSession, AddMember).

    async def c_get_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self.client(channel).get_session(name=f"{PARENT}/sessions/s-{self.key(sequence)}")

    async def c_record_activity(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self.client(channel).record_activity(name=f"{PARENT}/sessions/s-{self.key(sequence)}")

    async def c_create_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        session = Session(
            kind=Session.KIND_DIRECT,
            agent=f"{PARENT}/participants/agent-{sequence % db.AGENTS}",
            user=f"{PARENT}/participants/user-{sequence % db.USERS}",
        )
        return await self.client(channel).create_session(
            parent=PARENT, session_id=f"k{self.run_id}-{sequence}", session=session
        )

    async def c_find_or_create_session(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self._client_find_or_create(channel, sequence, hits_only=False)

    async def c_find_or_create_hit(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self._client_find_or_create(channel, sequence, hits_only=True)

    async def _client_find_or_create(
        self, channel: grpc.aio.Channel, sequence: int, *, hits_only: bool
    ) -> object:
        agent, conversation = self.conversation(sequence, hits_only=hits_only)
        key = ExternalConversation(
            agent=f"{PARENT}/participants/{agent}", channel="web", conversation_id=conversation
        )
        return await self.client(channel).find_or_create_session(parent=PARENT, external_conversation=key)

    async def c_list_first(self, channel: grpc.aio.Channel, sequence: int) -> object:
        return await self.client(channel).list_sessions_page(parent=PARENT)

    async def c_add_member(self, channel: grpc.aio.Channel, sequence: int) -> object:
        session, participant = self.new_member(sequence)
        member = Member(participant=participant, role=Member.ROLE_MEMBER)
        return await self.client(channel).add_member(parent=session, member=member)

    async def c_append_event(self, channel: grpc.aio.Channel, sequence: int) -> object:
        index = self.event_session(sequence)
        _, author = self.author(index, sequence)
        return await self.client(channel).append_event(
            parent=f"{PARENT}/sessions/e-{index}",
            event=Event(author=f"{PARENT}/participants/{author}", content=CHAT[sequence % 2]),
        )

    async def c_append_event_by_key(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """The same append with the session by its conversation key (and the template a DM
        gateway sends: DIRECT, the user left to the author) and the author by kind and
        external id: both exist, so this too is the common path."""
        index = self.event_session(sequence)
        kind, author = self.author(index, sequence)
        agent = f"{PARENT}/participants/agent-{index % db.AGENTS}"
        key = ExternalConversation(agent=agent, channel="web", conversation_id=f"e-{index}")
        return await self.client(channel).append_event(
            parent=PARENT,
            external_conversation=key,
            session=Session(kind=Session.KIND_DIRECT),
            author_key=AuthorKey(kind=kind, external_id=author),
            event=Event(content=CHAT[sequence % 2]),
        )

    async def c_list_events(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """The last 20 events of a pseudo-random session of EVENTS_NAMESPACE."""
        index = (sequence * 2654435761) % self.listed_sessions
        return await self.client(channel).list_events_page(
            parent=f"{EVENTS_PARENT}/sessions/e-{index}", newest_first=True, page_size=20
        )

    async def c_mixed(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """`mixed` through the client: the same 20 calls, the creating ones with request ids."""
        slot = sequence % 20
        if slot < 8:
            return await self.c_record_activity(channel, sequence)
        if slot < 13:
            return await self.c_get_session(channel, sequence)
        if slot < 17:
            return await self.c_find_or_create_session(channel, sequence * 20 + 1)  # an existing key
        if slot < 19:
            return await self.c_list_first(channel, sequence)
        return await self.c_create_session(channel, sequence)

    async def c_writes(self, channel: grpc.aio.Channel, sequence: int) -> object:
        """Half CreateSession, half RecordActivity."""
        if sequence % 2:
            return await self.c_create_session(channel, sequence)
        return await self.c_record_activity(channel, sequence)

    def on_gateway(self, gateway: Gateway | MultiCallGateway) -> Call:
        async def call(channel: grpc.aio.Channel, sequence: int) -> object:
            await gateway.message(self.client(channel), sequence)
            return None

        return call

    # ---- measuring -------------------------------------------------------------------------

    async def measure(
        self,
        gen: LoadGenerator,
        counters: db.Counters | None,
        group: str,
        name: str,
        call: Call,
        in_flight: int,
        seconds: float | None = None,
        counts: Callable[[], dict[str, int]] | None = None,
    ) -> Cell:
        """One cell. `counters` None: no PostgreSQL behind `gen` (SQLite). `counts`: running
        counters of the workload (e.g. the gateway's calls), reported over the measured
        window in `extra`."""
        await gen.run(call, in_flight=in_flight, seconds=self.s.warmup, warmup=0)
        backends = [] if counters is None else await counters.backends()
        server_pids = cpu.tree(gen.server_pid)  # with --workers: the supervisor and its workers
        statements0 = None if counters is None else await counters.snapshot()
        counts0 = counts() if counts else {}
        server0, postgres0, client0 = (
            cpu.snapshot(server_pids),
            cpu.snapshot(backends),
            time.process_time(),
        )
        began = watch.wall_us()
        m: Measurement = await gen.run(call, in_flight=in_flight, seconds=seconds or self.s.seconds, warmup=0)
        self.window_us = (began, watch.wall_us())
        check_alive(gen.server_pid, f"the server of the {group} {name!r} cell")
        server1, postgres1, client1 = (
            cpu.snapshot(server_pids),
            cpu.snapshot(backends),
            time.process_time(),
        )
        counts1 = counts() if counts else {}
        statements1 = None if counters is None else await counters.snapshot()
        ops = max(m.ops, 1)
        calls = max(m.ops + m.errors, 1)  # statements are per call, failed ones included

        def per_op(used: float | None) -> float | None:
            return None if used is None else round(used * 1e6 / ops)

        statements = db.Counters.between(statements0, statements1)
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
            statements_per_op=None if statements is None else round(statements.total / calls, 3),
            server_cpu_us_per_op=per_op(cpu.used(server0, server1)),
            postgres_cpu_us_per_op=per_op(cpu.used(postgres0, postgres1)),
            client_cpu_us_per_op=per_op(client1 - client0),
        )
        if statements is not None:
            cell.extra["statements"] = [[query, round(n, 3)] for query, n in statements.per_op(calls)]
            cell.extra["nested_statements_per_op"] = round(statements.nested / calls, 3)
        if counts:
            window = {key: counts1[key] - counts0.get(key, 0) for key in counts1}
            cell.extra.update(window)
            rpcs = window.get("rpcs")
            if rpcs:
                cell.extra["rpcs_per_op"] = round(rpcs / calls, 2)
                if statements is not None:
                    cell.extra["statements_per_rpc"] = round(statements.total / rpcs, 3)
        self.cells.append(cell)
        print(f"  {group:12} {name:44} {in_flight:>3} in flight: {m.ops_per_s:8.0f} ops/s", file=sys.stderr)
        if m.errors:
            print(f"    {m.errors} errors, first: {m.first_error}", file=sys.stderr)
        return cell

    async def refresh_deep_token(self, conn: Any) -> None:
        """The 90 % deep page token, from the rows as they are now: RecordActivity cells move
        sessions to the front of the default order, and a token made before them can point
        past the last row (an empty page, which also costs the server a parent check)."""
        self.deep_token = await db.deep_page_token(conn, 0.9)

    async def grow(self, conn: Any, size: int) -> None:
        started = time.perf_counter()
        await db.seed_sessions(conn, self.sessions, size)
        self.sessions = size
        await self.refresh_deep_token(conn)
        print(f"seeded {size} sessions in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    async def grow_events(self, conn: Any, total: int) -> None:
        """Seed EVENTS_NAMESPACE with events up to `total` (EVENTS_PER_SESSION in each of the
        sessions e-0 .. e-<total / EVENTS_PER_SESSION - 1>, made as needed)."""
        started = time.perf_counter()
        want = max(self.listed_sessions, total // db.EVENTS_PER_SESSION, 1)
        await db.seed_event_sessions(conn, db.EVENTS_NAMESPACE, self.listed_sessions, want)
        await db.seed_events(conn, db.EVENTS_NAMESPACE, self.listed_sessions, want)
        self.listed_sessions = want
        self.events = await db.count_events(conn, db.EVENTS_NAMESPACE)
        print(
            f"seeded events: {self.events:,} in {EVENTS_PARENT} ({want:,} sessions of "
            f"{db.EVENTS_PER_SESSION}) in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )

    async def measure_list_events(self, gen: LoadGenerator, counters: db.Counters) -> None:
        """ListEvents "last 20" at 1 in flight, named by the events in EVENTS_NAMESPACE; first
        a look that the pages are what the cell claims (20 events, newest first)."""
        page = await self.c_list_events(gen.channel, 1)
        assert isinstance(page, session_service_pb2.ListEventsResponse)
        sequences = [e.sequence for e in page.events]
        if len(sequences) != 20 or sequences != sorted(sequences, reverse=True):
            raise RuntimeError(f"ListEvents last 20: expected 20 events newest first, got {sequences}")
        name = f"{LIST_EVENTS} ({self.events:,} events)"
        cell = await self.measure(gen, counters, EVENTS_GROUP, name, self.c_list_events, 1)
        cell.extra["events"] = self.events

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        counters = db.Counters(conn)
        await counters.setup()
        self.statements_note = (
            f"top-level statements from pg_stat_statements ({counters.settings}): BEGIN, COMMIT and the "
            "like count, statements run inside PostgreSQL (foreign key checks) do not; the server's "
            "background health ping (about 3 statements a second) is in the count"
            if counters.statements_available
            else f"n/a: pg_stat_statements unavailable ({counters.why_not})"
        )
        await db.seed_base(conn)
        await self.grow(conn, self.s.sizes[0])
        await db.seed_event_sessions(conn, db.NAMESPACE, 0, db.EVENT_SESSIONS)
        self.event_sessions = db.EVENT_SESSIONS
        await db.seed_base(conn, db.EVENTS_NAMESPACE)
        await self.grow_events(conn, self.s.sizes[0])
        floor_process, floor_target = start_floor(self.dsn, self.s.pool_size)
        tether_process, tether_target = start_tether(self.url, self.s.pool_size, self.s.workers)
        floor = LoadGenerator(floor_target, self.s.channels, floor_process.pid)
        tether = LoadGenerator(tether_target, self.s.channels, tether_process.pid)
        try:
            await floor.ready()
            await self.wait_listening(tether_process, tether_target, self.s.workers)
            await tether.ready()

            async def reopen_stubs() -> None:
                await tether.reconnect()
                await tether.ready()

            stub_connections = await self.spread(tether, tether_target, reopen_stubs, {}, "stub channel")
            self.stubs.clear()  # keyed by id(channel): the closed channels' ids may come back
            self.connections_per_worker = sorted(stub_connections.values(), reverse=True)
            await self.wait_serving(tether)
            await self.open_clients(tether, tether_target)

            async def reopen_clients() -> None:
                await self.close_clients(tether)
                await self.open_clients(tether, tether_target)

            client_connections = await self.spread(
                tether, tether_target, reopen_clients, stub_connections, "client"
            )
            self.client_connections_per_worker = sorted(client_connections.values(), reverse=True)
            await self.gateway.setup(self.client(tether.channel))
            await self.multi_gateway.setup(self.client(tether.channel))

            if self.wants("floor"):
                for in_flight in self.s.in_flight:
                    for method in ("Empty", "Select", "Update", "Insert"):
                        label = method if method == "Empty" else method.upper()
                        await self.measure(
                            floor, counters, "floor", label, self.floor_call(method), in_flight
                        )
            # Each method's stub cell, then at once its client cell: side by side in time.
            cells: list[tuple[str, Call, Call | None]] = [
                ("GetSession", self.get_session, self.c_get_session),
                ("RecordActivity", self.record_activity, self.c_record_activity),
                ("CreateSession", self.create_session, self.c_create_session),
                ("FindOrCreateSession", self.find_or_create_session, self.c_find_or_create_session),
                ("FindOrCreateSession hit", self.find_or_create_hit, self.c_find_or_create_hit),
                ("ListSessions first page", self.list_first, self.c_list_first),
                ("ListSessions 90% deep", self.list_deep, None),
                ("AddMember", self.add_member, self.c_add_member),
                ("AppendEvent", self.append_event, self.c_append_event),  # issue 11's target: at 32
            ]
            if self.wants("stub"):  # and its client twins
                for in_flight in self.s.in_flight:
                    for name, stub_call, client_call in cells:
                        if name == "AppendEvent" and in_flight != 32:
                            continue
                        if stub_call == self.list_deep:
                            await self.refresh_deep_token(conn)
                        await self.measure(tether, counters, "stub", name, stub_call, in_flight)
                        if client_call is not None:
                            await self.measure(tether, counters, "client", name, client_call, in_flight)
            if self.wants("mixed"):
                await self.measure(tether, counters, "mixed", "mixed", self.mixed, 1)
                rss_start = cpu.rss_kib(cpu.tree(tether_process.pid))
                cell = await self.measure(
                    tether, counters, "mixed", "mixed", self.mixed, 32, seconds=self.s.mixed_seconds
                )
                rss_end = cpu.rss_kib(cpu.tree(tether_process.pid))
                cell.extra = {
                    **cell.extra,
                    "rss_start_kib": rss_start,
                    "rss_end_kib": rss_end,
                    "rss_growth_percent": round(100 * (rss_end - rss_start) / max(rss_start, 1), 1),
                }
            if self.wants("gateway"):
                for name, gateway in ((GATEWAY_PG, self.gateway), (GATEWAY_MULTI_PG, self.multi_gateway)):
                    for in_flight in self.s.in_flight:
                        await self.measure(
                            tether,
                            counters,
                            "gateway",
                            name,
                            self.on_gateway(gateway),
                            in_flight,
                            counts=gateway.counts,
                        )
            if self.wants(WATCH_GROUP):
                await self.run_watch(tether, tether_target, counters, conn)
            if self.sqlite_path is not None and (self.wants("sqlite") or self.wants(WATCH_GROUP)):
                await self.run_sqlite(self.sqlite_path)
            if self.wants("scale"):  # and events
                for index, size in enumerate(self.s.sizes):
                    if index:
                        # ListEvents right before (at the smaller size) and right after its events grow.
                        await self.grow_events(conn, size)
                        await self.measure_list_events(tether, counters)
                        await self.grow(conn, size)
                    for name, call in (
                        ("GetSession", self.get_session),
                        ("ListSessions first page", self.list_first),
                        ("ListSessions 90% deep", self.list_deep),
                    ):
                        if call == self.list_deep:
                            await self.refresh_deep_token(conn)
                        await self.measure(tether, counters, "scale", name, call, 1)
                    for name, call in (
                        ("GetSession", self.c_get_session),
                        ("RecordActivity", self.c_record_activity),
                        ("CreateSession", self.c_create_session),
                        ("FindOrCreateSession hit", self.c_find_or_create_hit),
                        ("AppendEvent", self.c_append_event),
                        ("AppendEvent by key", self.c_append_event_by_key),
                    ):
                        await self.measure(tether, counters, "scale client", name, call, 1)
                    if index == 0:
                        await self.measure_list_events(tether, counters)
        finally:
            await self.close_clients(tether)
            await floor.close()
            await tether.close()
            stop(floor_process)
            stop(tether_process)
            await conn.close()
        self.add_ratios()

    async def run_sqlite(self, path: Path) -> None:
        """The sqlite cells, and the watch group's idle watchers on SQLite: a second `tether
        serve` (one process) on the SQLite file that `bench.sqlite` seeded with as many
        sessions as the PostgreSQL database has now."""
        process, target = start_tether(sqlite.url_of(path), self.s.pool_size, 1)
        gen = LoadGenerator(target, self.s.channels, process.pid)
        try:
            await self.wait_listening(process, target, 1)
            await gen.ready()
            await self.wait_serving(gen)
            await self.open_clients(gen, target)
            if self.wants("sqlite"):
                await self.sqlite_cells(gen)
            if self.wants(WATCH_GROUP):
                await self.measure_idle_watchers(gen, target, None, "SQLite")
        finally:
            await self.close_clients(gen)
            await gen.close()
            stop(process)

    async def sqlite_cells(self, gen: LoadGenerator) -> None:
        await self.sqlite_gateway.setup(self.client(gen.channel))
        for name, call, in_flight in (
            ("GetSession", self.c_get_session, 1),
            ("CreateSession", self.c_create_session, 32),
            ("RecordActivity", self.c_record_activity, 32),
            ("AppendEvent", self.c_append_event, 32),
            (SQLITE_WRITERS, self.c_writes, 64),
        ):
            await self.measure(gen, None, "sqlite", name, call, in_flight)
        for in_flight in self.s.in_flight:
            await self.measure(
                gen,
                None,
                "sqlite",
                GATEWAY_SQLITE,
                self.on_gateway(self.sqlite_gateway),
                in_flight,
                counts=self.sqlite_gateway.counts,
            )

    # ---- the watch cells -------------------------------------------------------------------

    async def run_watch(self, gen: LoadGenerator, target: str, counters: db.Counters, conn: Any) -> None:
        await self.measure_watch_latency(gen, target, counters, conn)
        await self.measure_change_recording(gen, counters, conn)
        await self.measure_idle_watchers(gen, target, counters, "PostgreSQL")

    async def measure_watch_latency(
        self, gen: LoadGenerator, target: str, counters: db.Counters, conn: Any
    ) -> None:
        """The client's mixed workload at 32 without a watcher, with one following the
        namespace (its commit-to-delivery latency), and without again: the baseline is the
        mean of the runs without, so that a drift in time weighs on both sides alike."""
        alone = [await self.measure(gen, counters, WATCH_GROUP, WATCH_MIXED_ALONE, self.c_mixed, 32)]
        cell, latency = await self.measure_watched(gen, target, counters, conn)
        alone.append(await self.measure(gen, counters, WATCH_GROUP, WATCH_MIXED_ALONE, self.c_mixed, 32))
        without = sum(c.ops_per_s for c in alone) / len(alone)
        cell.extra["watch"] = asdict(latency)
        cell.extra["ops_per_s_without"] = round(without, 1)
        cell.baseline = "mean ops/s without a watcher (before, after)"
        cell.ratio = round(cell.ops_per_s / without, 2) if without else None
        print(
            f"    watcher: {latency.changes_seen:,} of {latency.changes_logged:,} changes, p50 "
            f"{latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max {latency.max_ms:.1f} ms; its "
            f"CPU {latency.watcher_cpu_s * 1e6 / max(latency.changes_total, 1):.0f} µs per change",
            file=sys.stderr,
        )

    async def measure_watched(
        self, gen: LoadGenerator, target: str, counters: db.Counters, conn: Any
    ) -> tuple[Cell, watch.Latency]:
        """The mixed cell with a watcher (a process of its own) on the namespace it writes."""
        watcher = watch.Watcher(target, PARENT)
        CHILDREN.append(watcher.process)
        try:
            await watcher.started(lambda: self.c_record_activity(gen.channel, 0))
            cell = await self.measure(gen, counters, WATCH_GROUP, WATCH_MIXED, self.c_mixed, 32)
            start, end = self.window_us
            logged = await watch.logged_changes(conn, db.NAMESPACE, start, end)
            return cell, await watcher.finish(start, end, logged)
        finally:
            stop(watcher.process)

    async def measure_change_recording(self, gen: LoadGenerator, counters: db.Counters, conn: Any) -> None:
        """Each write (and GetSession, the control) with the change-recording triggers on and
        off, in the order on, off, off, on: a drift in time weighs on both alike."""
        calls = {
            "GetSession": self.c_get_session,
            "RecordActivity": self.c_record_activity,
            "CreateSession": self.c_create_session,
            "AppendEvent": self.c_append_event,
        }
        if not await watch.may_alter(conn):
            print(
                f"  {WATCH_GROUP:12} writes {RECORDED} or not: skipped (not the tables' owner)",
                file=sys.stderr,
            )
            return
        for name in WATCH_WRITES:
            runs: dict[bool, list[Cell]] = {True: [], False: []}
            try:
                for recorded in (True, False, False, True):
                    await watch.set_triggers(conn, enabled=recorded)
                    label = f"{name}, {RECORDED if recorded else NOT_RECORDED}"
                    runs[recorded].append(
                        await self.measure(gen, counters, WATCH_GROUP, label, calls[name], 32)
                    )
            finally:
                await watch.set_triggers(conn, enabled=True)
            on, off = means(runs[True]), means(runs[False])
            for cell in runs[True]:
                cell.baseline = f"mean ops/s, {NOT_RECORDED}"
                cell.ratio = round(on["ops_per_s"] / off["ops_per_s"], 2) if off["ops_per_s"] else None
                cell.extra["means"] = {RECORDED: on, NOT_RECORDED: off}

    async def measure_idle_watchers(
        self, gen: LoadGenerator, target: str, counters: db.Counters | None, where: str
    ) -> None:
        """IDLE_WATCHERS streams of a namespace of their own, which nothing writes to."""
        namespace = f"idle-{self.run_id}"
        await self.client(gen.channel).create_namespace(namespace_id=namespace)
        backends = [] if counters is None else await counters.backends()
        idle = await watch.idle_watchers(
            target, f"namespaces/{namespace}", gen.server_pid, backends, poll_round=not self.s.quick
        )
        check_alive(gen.server_pid, f"the server of the {WATCH_GROUP} {WATCH_IDLE!r} cell")
        figures = {
            **asdict(idle),
            "mib_per_1000": round(idle.mib_per_1000, 2),
            "server_cpu_percent": idle.server_cpu_percent,
            "postgres_cpu_percent": idle.postgres_cpu_percent,
            "round_server_cpu_percent": idle.round_server_cpu_percent,
            "round_postgres_cpu_percent": idle.round_postgres_cpu_percent,
        }
        self.cells.append(idle_cell(f"{WATCH_IDLE} ({where})", self.sessions, figures))
        print(
            f"  {WATCH_GROUP:12} {WATCH_IDLE} ({where}): {idle.mib_per_1000:.1f} MiB per 1,000, server CPU "
            f"{fmt(idle.server_cpu_percent, '.1f')} % idle (opened in {idle.open_seconds:.1f}s)",
            file=sys.stderr,
        )

    async def wait_listening(self, process: subprocess.Popen[bytes], target: str, workers: int) -> None:
        """Until every tether process listens on `target`'s port (connections made earlier
        would all land on the first worker and stay there)."""
        port = int(target.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while cpu.listeners(port) < workers:
            if process.poll() is not None:
                raise RuntimeError(f"tether serve {how_it_ended(process)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tether serve: not {workers} listeners on {target} after 60s")
            await asyncio.sleep(0.05)

    async def spread(
        self,
        gen: LoadGenerator,
        target: str,
        reopen: Callable[[], Awaitable[None]],
        others: dict[int, int],
        what: str,
        attempts: int = 50,
    ) -> dict[int, int]:
        """With several workers: reopen (`reopen`) a set of `--channels` connections until each
        worker holds as many of them as any other, give or take one. `others`: connections
        per worker already there (another set's), not counted. Returns the set's per worker."""
        if self.s.workers == 1:
            return {}
        port = int(target.rsplit(":", 1)[1])
        for attempt in range(1, attempts + 1):
            workers = cpu.tree(gen.server_pid)[1:]
            deadline = time.monotonic() + 10
            while True:
                held = {pid: n - others.get(pid, 0) for pid, n in cpu.connections(workers, port).items()}
                if sum(held.values()) == self.s.channels:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"expected {self.s.channels} {what} connections to {target}, saw {held}"
                    )
                await asyncio.sleep(0.01)
            spread = sorted(held.values(), reverse=True)
            if spread[0] - spread[-1] <= 1:
                break
            if attempt < attempts:
                await reopen()
        print(f"{what} connections per tether worker: {spread} (opened {attempt} time(s))", file=sys.stderr)
        return held

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
            (c.group, c.name, c.in_flight): c
            for c in self.cells
            if c.group in SCALE_GROUPS and c.sessions == self.s.sizes[0]
        }
        listed = sorted((c for c in self.cells if c.group == EVENTS_GROUP), key=lambda c: c.extra["events"])

        def versus(cell: Cell, base: float, label: str, value: float | None = None) -> None:
            cell.baseline = label
            measured = cell.ops_per_s if value is None else value
            cell.ratio = round(measured / base, 2) if base else None

        for cell in self.cells:
            if cell.group in ("stub", "client") and cell.name in FLOOR_OF:
                base = floors[(FLOOR_OF[cell.name], cell.in_flight)]
                versus(cell, base.ops_per_s, f"{base.name} floor ops/s")
            elif cell.group == "floor" and cell.name != "Empty":
                versus(cell, floors[("Empty", cell.in_flight)].ops_per_s, "Empty ops/s")
            elif cell.name in GATEWAYS:
                versus(cell, floors[("INSERT", cell.in_flight)].ops_per_s, "INSERT floor ops/s")
            elif cell.group == "sqlite" and cell.name in ("CreateSession", "RecordActivity", "AppendEvent"):
                versus(cell, SQLITE_WRITES_PER_S, f"target {SQLITE_WRITES_PER_S:,.0f} ops/s")
            elif cell.group == "sqlite" and cell.name == "GetSession":
                versus(cell, SQLITE_GET_P50_MS, f"target p50 {SQLITE_GET_P50_MS} ms", cell.p50_ms)
            elif cell.group in SCALE_GROUPS and cell.sessions != self.s.sizes[0]:
                base = smallest[(cell.group, cell.name, cell.in_flight)]
                versus(cell, base.p50_ms, f"p50 at {base.sessions:,} sessions", cell.p50_ms)
            elif cell.group == EVENTS_GROUP and cell is not listed[0]:
                versus(cell, listed[0].p50_ms, f"p50 at {listed[0].extra['events']:,} events", cell.p50_ms)


def means(cells: Sequence[Cell]) -> dict[str, Any]:
    """Mean ops/s and CPU µs per op of the runs of one cell (CPU: None unless every run has it)."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(sum(known) / len(known), 1) if known and len(known) == len(values) else None

    return {
        "ops_per_s": mean([c.ops_per_s for c in cells]) or 0.0,
        "server_cpu_us_per_op": mean([c.server_cpu_us_per_op for c in cells]),
        "postgres_cpu_us_per_op": mean([c.postgres_cpu_us_per_op for c in cells]),
    }


def idle_cell(name: str, sessions: int, figures: dict[str, Any]) -> Cell:
    """A cell without calls: its figures (memory, idle CPU) are all in `extra`."""
    return Cell(
        group=WATCH_GROUP,
        name=name,
        in_flight=figures["watchers"],
        sessions=sessions,
        ops_per_s=0.0,
        p50_ms=0.0,
        p99_ms=0.0,
        ops=0,
        errors=0,
        first_error="",
        statements_per_op=None,
        server_cpu_us_per_op=None,
        postgres_cpu_us_per_op=None,
        client_cpu_us_per_op=None,
        extra=figures,
    )


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
            f"| {fmt(c.statements_per_op, '.2f')} | {fmt(c.server_cpu_us_per_op, '.0f')} "
            f"| {fmt(c.postgres_cpu_us_per_op, '.0f')} | {fmt(c.client_cpu_us_per_op, '.0f')} |"
        )
    return "\n".join(lines)


def find(cells: Sequence[Cell], group: str, name: str, in_flight: int) -> Cell | None:
    return next((c for c in cells if (c.group, c.name, c.in_flight) == (group, name, in_flight)), None)


def targets(cells: Sequence[Cell]) -> str:
    """Issue 10's and issue 11's targets against this run's cells (reported, not enforced)."""
    rows: list[tuple[str, int, str, str]] = []

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "no")

    for name, need in (
        ("GetSession", 0.75),
        ("RecordActivity", 0.65),
        ("CreateSession", 0.5),
        ("FindOrCreateSession hit", 0.65),
    ):
        with_id = ", with request id" if "Create" in name else ""
        for in_flight in (1, 32):
            client, stub = find(cells, "client", name, in_flight), find(cells, "stub", name, in_flight)
            floor = find(cells, "floor", FLOOR_OF[name], in_flight)
            if client is None or client.ratio is None or floor is None:
                continue
            measured = f"{client.ratio:.2f} ({client.ops_per_s:,.0f} vs {floor.ops_per_s:,.0f} ops/s)"
            if stub is not None and stub.ratio is not None:
                measured += f"; stub {stub.ratio:.2f}"
            rows.append(
                (
                    f"{name} (client{with_id}) >= {need:g} x {floor.name} floor",
                    in_flight,
                    measured,
                    met(client.ratio >= need),
                )
            )
    client, stub = find(cells, "client", "AppendEvent", 32), find(cells, "stub", "AppendEvent", 32)
    floor = find(cells, "floor", "INSERT", 32)
    if client is not None and client.ratio is not None and floor is not None:
        measured = f"{client.ratio:.2f} ({client.ops_per_s:,.0f} vs {floor.ops_per_s:,.0f} ops/s)"
        if stub is not None and stub.ratio is not None:
            measured += f"; stub {stub.ratio:.2f}"
        rows.append(
            (
                f"AppendEvent by name (client, with request id) >= {APPEND_EVENT_RATIO:g} x INSERT floor",
                32,
                measured,
                met(client.ratio >= APPEND_EVENT_RATIO and not client.errors),
            )
        )
    for group, name in (("gateway", GATEWAY_PG), ("sqlite", GATEWAY_SQLITE)):
        for in_flight in (1, 32):
            cell = find(cells, group, name, in_flight)
            if cell is None or cell.ratio is None:
                continue
            measured = (
                f"{cell.ratio:.2f} ({cell.ops_per_s:,.0f} messages/s, p50 {cell.p50_ms:.2f} ms, "
                f"p99 {cell.p99_ms:.2f} ms, {cell.errors} errors)"
            )
            rows.append(
                (
                    f"{name}, one AppendEvent per message: messages/s >= {GATEWAY_RATIO:g} x INSERT floor",
                    in_flight,
                    measured,
                    met(cell.ratio >= GATEWAY_RATIO and not cell.errors),
                )
            )
    listed = sorted((c for c in cells if c.group == EVENTS_GROUP), key=lambda c: c.extra["events"])
    small, large = (listed[0], listed[-1]) if len(listed) > 1 else (None, None)
    if small is not None and large is not None and large.ratio is not None:
        rows.append(
            (
                f"{LIST_EVENTS} p50 at {large.extra['events']:,} events <= {LIST_EVENTS_GROWTH:g} x p50 at "
                f"{small.extra['events']:,} (client)",
                1,
                f"{large.ratio:.2f} ({large.p50_ms:.2f} vs {small.p50_ms:.2f} ms)",
                met(large.ratio <= LIST_EVENTS_GROWTH and not large.errors),
            )
        )
    for name in ("CreateSession", "RecordActivity", "AppendEvent"):
        cell = find(cells, "sqlite", name, 32)
        if cell is not None:
            ok = cell.ops_per_s >= SQLITE_WRITES_PER_S and cell.p99_ms <= SQLITE_P99_MS and not cell.errors
            measured = f"{cell.ops_per_s:,.0f}/s, p99 {cell.p99_ms:.1f} ms, {cell.errors} errors"
            rows.append((f"SQLite {name} >= 1,000/s with p99 <= 100 ms (client)", 32, measured, met(ok)))
    cell = find(cells, "sqlite", SQLITE_WRITERS, 64)
    if cell is not None:
        measured = f"{cell.errors} errors in {cell.ops + cell.errors:,} calls" + (
            f" (first: {cell.first_error})" if cell.errors else ""
        )
        rows.append(
            ("SQLite: no errors under 64 concurrent writers (client)", 64, measured, met(not cell.errors))
        )
    cell = find(cells, "sqlite", "GetSession", 1)
    if cell is not None:
        ok = cell.p50_ms <= SQLITE_GET_P50_MS
        rows.append(("SQLite GetSession p50 <= 1.0 ms (client)", 1, f"{cell.p50_ms:.2f} ms", met(ok)))
    for name in (
        "GetSession",
        "RecordActivity",
        "CreateSession",
        "FindOrCreateSession hit",
        "AppendEvent",
        "AppendEvent by key",
    ):
        scale = [c for c in cells if c.group == "scale client" and c.name == name]
        if not scale:
            continue
        counted = [c.statements_per_op for c in scale if c.statements_per_op is not None]
        measured = ", ".join(f"{c.sessions:,}: {fmt(c.statements_per_op, '.2f')}" for c in scale)
        same = None if len(counted) < len(scale) else all(abs(n - 1) < 0.05 for n in counted)
        rows.append((f"{name} statements per call = 1 at every size (client)", 1, measured, met(same)))
    rows += watch_targets(cells, met)
    lines = ["| target (issues 10, 11; watch) | in flight | measured | met |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {target} | {in_flight} | {measured} | {verdict} |"
        for target, in_flight, measured, verdict in rows
    ]
    return "\n".join(lines)


def watch_targets(
    cells: Sequence[Cell], met: Callable[[bool | None], str]
) -> list[tuple[str, int, str, str]]:
    """The watch cells' bars (commit-to-delivery p99, writes with changes recorded) and the
    idle watchers' figures, which have none."""
    rows: list[tuple[str, int, str, str]] = []
    cell = find(cells, WATCH_GROUP, WATCH_MIXED, 32)
    if cell is not None:
        w = cell.extra["watch"]
        measured = (
            f"p99 {w['p99_ms']:.1f} ms (p50 {w['p50_ms']:.1f}, max {w['max_ms']:.1f}; "
            f"{w['changes_seen']:,} of {w['changes_logged']:,} changes); mixed {cell.ops_per_s:,.0f} ops/s "
            f"vs {cell.extra['ops_per_s_without']:,.0f} without a watcher ({fmt(cell.ratio, '.2f')})"
        )
        ok = w["p99_ms"] <= watch.LATENCY_P99_MS and w["complete"]
        rows.append(
            (f"WatchSessions commit-to-delivery p99 <= {watch.LATENCY_P99_MS:g} ms", 32, measured, met(ok))
        )
    for name in WATCH_WRITES:
        cell = find(cells, WATCH_GROUP, f"{name}, {RECORDED}", 32)
        if cell is None or cell.ratio is None:
            continue
        on, off = cell.extra["means"][RECORDED], cell.extra["means"][NOT_RECORDED]
        # CPU per call beside the ratio: on a shared box it moves less than ops/s do.
        measured = (
            f"{cell.ratio:.2f} ({on['ops_per_s']:,.0f} vs {off['ops_per_s']:,.0f} ops/s; CPU µs/op server "
            f"{fmt(on['server_cpu_us_per_op'], '.0f')} vs {fmt(off['server_cpu_us_per_op'], '.0f')}, "
            f"PostgreSQL {fmt(on['postgres_cpu_us_per_op'], '.0f')} vs "
            f"{fmt(off['postgres_cpu_us_per_op'], '.0f')})"
        )
        if name == "GetSession":  # no trigger on its path: how far the ratio moves by noise
            rows.append(("GetSession (control) with changes recorded vs without", 32, measured, "n/a"))
            continue
        rows.append(
            (
                f"{name} with changes recorded >= {watch.WRITE_RATIO:g} x without (client)",
                32,
                measured,
                met(cell.ratio >= watch.WRITE_RATIO),
            )
        )
    for cell in cells:
        if cell.group == WATCH_GROUP and cell.name.startswith(WATCH_IDLE):
            x = cell.extra
            postgres = x["postgres_cpu_percent"]
            measured = (
                f"{x['mib_per_1000']:.1f} MiB per 1,000 watchers; server CPU "
                f"{fmt(x['server_cpu_percent'], '.1f')} %"
                + ("" if postgres is None else f", PostgreSQL {postgres:.1f} %")
                + f" over {x['idle_seconds']:g} s idle"
            )
            if x["round_seconds"] is not None:
                measured += (
                    f"; over {x['round_seconds']:g} s: server {fmt(x['round_server_cpu_percent'], '.1f')} %"
                    + (
                        ""
                        if postgres is None
                        else f", PostgreSQL {fmt(x['round_postgres_cpu_percent'], '.1f')} %"
                    )
                )
            rows.append((f"{cell.name}: server memory and CPU (no bar)", cell.in_flight, measured, "n/a"))
    return rows


def statements_report(cells: Sequence[Cell]) -> str:
    """What the client path runs per call, statement by statement (pg_stat_statements'
    normalized text), at each size of the scale group, and per gateway message."""
    lines: list[str] = []
    for c in cells:
        if not c.extra.get("statements") or not (
            c.group == "scale client" or (c.group == "gateway" and c.in_flight == 1)
        ):
            continue
        unit = f"message ({c.extra.get('rpcs_per_op', '?')} calls)" if c.group == "gateway" else "call"
        lines.append(
            f"{c.group} | {c.name} | {c.sessions:,} sessions | {c.in_flight} in flight: "
            f"{fmt(c.statements_per_op, '.2f')} statements per {unit} "
            f"(+ {c.extra.get('nested_statements_per_op', 0):.2f} nested, not counted)"
        )
        lines += [f"  {n:6.3f}  {textwrap.shorten(query, 160)}" for query, n in c.extra["statements"]]
    return "\n".join(lines)


LEGEND = (
    "stub: raw generated stub, no request_id | client: tether.client.AsyncSessionsClient as a caller "
    "uses it (its defaults; request ids on creating calls) | events: ListEvents, newest first, page of "
    "20, through the client, in a namespace of its own | gateway: one op = one message through the "
    "client, one AppendEvent by conversation key and author key (3-4 calls: find-or-create sender, "
    "find-or-create session, RecordActivity, AddMember in channels) | sqlite: through the client, one "
    "tether serve on an SQLite file | watch: WatchSessions; the mixed workload through the client "
    "with one watcher (the client, a process of its own; its latency: receive time - change_time) and "
    "without, the writes with the change-recording triggers on and off (on, off, off, on; ratio of the "
    "means), idle watchers (figures in the targets) | ratio: to 'ratio to'"
)


def environment(url: str, workers: int, postgresql: str) -> dict[str, str]:
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
        "postgresql server": postgresql,
        "sqlite": sqlite3.sqlite_version,
        "grpcio": grpc.__version__,
        "tether workers": str(workers),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


class OtherLoad:
    """CPU the rest of the machine used during the run: the whole machine's busy time less
    this process's, its servers' (waited for, so in its children's times) and the throwaway
    cluster's. Another job on the box shows here (numbers of such a run are suspect); so
    does the PostgreSQL server of --server-url or --database-url, which the bench did not start."""

    def __init__(self) -> None:
        self.cluster_pid: int | None = None
        self._start: tuple[float | None, float, float, float] = (None, 0.0, 0.0, 0.0)

    def _cluster(self) -> float:
        return 0.0 if self.cluster_pid is None else cpu.tree_seconds(self.cluster_pid)

    def start(self) -> None:
        self._start = (cpu.machine_seconds(), cpu.own_seconds(), self._cluster(), time.monotonic())

    def stop(self) -> str:
        machine0, own0, cluster0, wall0 = self._start
        machine1 = cpu.machine_seconds()
        if machine0 is None or machine1 is None:
            return "n/a"
        wall = time.monotonic() - wall0
        other = max(0.0, (machine1 - machine0) - (cpu.own_seconds() - own0) - (self._cluster() - cluster0))
        share = 100 * other / (wall * (os.cpu_count() or 1)) if wall else 0.0
        return f"{other:.1f} CPU s by other processes in {wall:.0f} s ({share:.0f} % of the machine)"


def stop_children() -> None:
    for process in CHILDREN:
        stop(process)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the clean-up below runs


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    load = OtherLoad()
    with contextlib.ExitStack() as cleanup:  # run in reverse: servers, database, cluster, files
        scratch = Path(tempfile.mkdtemp(prefix="tether-bench-"))
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        url = settings.database_url
        postgresql = f"existing database {url}"
        if url is None:
            server_url = settings.server_url
            cluster: Cluster | None = None
            if server_url is not None:
                postgresql = f"existing server {server_url}"
            elif (bindir := find_bindir()) is not None:
                cluster = Cluster(bindir)
                cleanup.callback(cluster.stop)
                cluster.start()
                server_url = cluster.url
                postgresql = cluster.describe()
                load.cluster_pid = cluster.pid
            else:
                server_url = db.DEFAULT_SERVER
                postgresql = f"existing server {server_url} (no PostgreSQL binaries found)"
                print(
                    "note: no PostgreSQL binaries (pg_config --bindir, /usr/lib/postgresql/*/bin, initdb on "
                    f"PATH), so no throwaway cluster: using {server_url}, where statements per operation "
                    "are n/a unless pg_stat_statements is preloaded",
                    file=sys.stderr,
                )
            fresh = asyncio.run(db.create_fresh(server_url))
            url = fresh
            if cluster is None:  # a throwaway cluster goes as a whole
                cleanup.callback(lambda: asyncio.run(db.drop(fresh, server_url)))
        load.start()
        print(f"postgresql: {postgresql}", file=sys.stderr)
        print(f"database {url}", file=sys.stderr)
        cleanup.callback(stop_children)
        db.migrate(url)
        sqlite_path = None
        if settings.sqlite:
            sqlite_path = scratch / "bench.db"
            sqlite.prepare(sqlite_path, settings.sizes[0])
            print(f"sqlite {sqlite_path}: seeded {settings.sizes[0]} sessions", file=sys.stderr)
        bench = Bench(settings, url, sqlite_path)
        print(f"gateway: {bench.gateway.describe()}", file=sys.stderr)
        uvloop.run(bench.run())
        env = environment(url, settings.workers, postgresql)
        env["other load"] = load.stop()
    rendered = table(bench.cells)
    goals = targets(bench.cells)
    statements = statements_report(bench.cells)
    print()
    print(rendered)
    print()
    print(LEGEND)
    print()
    print(goals)
    if statements:
        print()
        print("statements per call (pg_stat_statements, normalized):")
        print(statements)
    mixed = next((c for c in bench.cells if c.group == "mixed" and "rss_start_kib" in c.extra), None)
    print()
    whose = "server" if settings.workers == 1 else f"server (supervisor + {settings.workers} workers)"
    if mixed is not None:
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
            "client_connections_per_worker": bench.client_connections_per_worker,
            "gateway": bench.gateway.describe(),
            "cells": [asdict(c) for c in bench.cells],
            "table": rendered,
            "targets": goals,
            "statements": statements,
        }
        settings.json_path.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
