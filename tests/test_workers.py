"""`tether serve --workers N`: one supervisor, N server processes on one port (SO_REUSEPORT).

Each test starts the real command as a subprocess on an ephemeral port. Processes are
found through /proc (the supervisor's children: their `ppid`); every wait polls a
condition with a deadline. Clients open one TCP connection per channel
(`grpc.use_local_subchannel_pool`), so the kernel spreads them over the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from tests.support.databases import libpq_url
from tests.support.security import Credential, write_auth_file
from tests.support.server import ServerFactory, ServerProcess, server_env
from tests.support.tools import DEADLINE_SECONDS, describe, run_tool, wait_until
from tether.client import (
    AsyncSessionsClient,
    ExternalConversation,
    FindOrCreateSessionResponse,
    Participant,
    Session,
    SessionsClient,
)
from tether.server.config import Settings
from tether.server.workers import worker_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
CHANNELS = 16  # all on one of two workers: probability 2 ** -15
CALLS = 64
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


# --- processes ----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process; None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)"
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    stats = {int(e.name): _stat(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    return sorted(child for child, stat in stats.items() if stat and stat[1] == pid and stat[0] not in "ZX")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _exit_code(server: ServerProcess) -> int:
    """The supervisor's exit code, waiting for it (it must exit on its own)."""
    try:
        return server.process.wait(DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the supervisor did not exit:\n{server.log_tail()}") from None


def _start(server_factory: ServerFactory, workers: int = 2, **env: str) -> tuple[ServerProcess, list[int]]:
    """`tether serve --workers N`, once the supervisor says all N serve; and its worker pids."""
    server = server_factory(env={"TETHER_WORKERS": str(workers), **env})
    serving = server.wait_for_event("serving", workers=workers)
    assert serving is not None, server.log_tail()
    assert serving["address"] == server.target
    workers_pids = _children(server.process.pid)
    assert workers_pids == sorted(serving["pids"]), server.log_tail()
    return server, workers_pids


def _rpc_workers(server: ServerProcess, method: str, calls: int) -> set[int]:
    """Which workers logged the `rpc` lines of `calls` calls of `method` (waits for them all)."""

    def lines() -> list[dict[str, object]]:
        return [e for e in server.events() if e.get("event") == "rpc" and e.get("method") == method]

    wait_until(lambda: len(lines()) >= calls, f"{calls} rpc lines of {method}")
    return {int(str(e["worker"])) for e in lines()}


# --- serving ------------------------------------------------------------------------------------


async def test_two_workers_share_one_port(server_factory: ServerFactory) -> None:
    server, pids = _start(server_factory)
    assert len(pids) == 2
    for pid in pids:
        assert "tether.server serve" in _cmdline(pid)
    # Each worker logged its own `serving` line, with the supervisor's address.
    for index in (0, 1):
        event = server.wait_for_event("serving", worker=index)
        assert event is not None
        assert event["address"] == server.target
    assert server.health() == SERVING

    clients = [
        AsyncSessionsClient(server.target, retry=False, options=OWN_CONNECTION) for _ in range(CHANNELS)
    ]
    try:
        agent = (
            await clients[0].find_or_create_participant(
                parent="namespaces/default", kind=Participant.KIND_AGENT, external_id="agent:workers"
            )
        ).participant.name
        key = ExternalConversation(agent=agent, channel="slack", conversation_id="C-workers")
        calls = [
            clients[i % CHANNELS].find_or_create_session(
                parent="namespaces/default",
                external_conversation=key,
                session=Session(kind=Session.KIND_GROUP),
            )
            for i in range(CALLS)
        ]
        answers: list[FindOrCreateSessionResponse] = list(await asyncio.gather(*calls))
    finally:
        for client in clients:
            await client.close()
    assert sum(answer.created for answer in answers) == 1
    assert len({answer.session.SerializeToString(deterministic=True) for answer in answers}) == 1
    # The kernel spread the connections: both workers answered some of the calls.
    assert _rpc_workers(server, "/tether.v1.SessionService/FindOrCreateSession", CALLS) == {0, 1}
    assert server.stop() == 0, server.log_tail()


def test_sighup_reloads_the_auth_file_in_every_worker(server_factory: ServerFactory, tmp_path: Path) -> None:
    first = Credential.new("first", "writer", ["default"])
    later = Credential.new("later", "reader", ["default"])
    auth_file = write_auth_file(tmp_path / "auth.toml", [first])
    server, _ = _start(server_factory, TETHER_AUTH_FILE=str(auth_file))
    write_auth_file(auth_file, [first, later])
    os.kill(server.process.pid, signal.SIGHUP)
    for index in (0, 1):
        reloaded = server.wait_for_event("auth_reloaded", 30, principals=2, worker=index)
        assert reloaded is not None, server.log_tail()
    # Whichever worker a connection lands on knows the new principal.
    clients = [
        SessionsClient(server.target, token=later.token, retry=False, options=OWN_CONNECTION)
        for _ in range(CHANNELS)
    ]
    try:
        pages = [c.list_sessions_page(parent="namespaces/default") for c in clients]
    finally:
        for client in clients:
            client.close()
    assert len(pages) == CHANNELS
    assert _rpc_workers(server, "/tether.v1.SessionService/ListSessions", CHANNELS) == {0, 1}
    assert server.is_running()


# --- stopping -----------------------------------------------------------------------------------


def test_sigterm_stops_every_worker(server_factory: ServerFactory) -> None:
    server, pids = _start(server_factory)
    assert server.stop() == 0, server.log_tail()
    assert not [pid for pid in pids if _alive(pid)]
    for index in (0, 1):
        assert server.wait_for_event("stopped", 10, worker=index) is not None, server.log_tail()


@pytest.mark.pg_only
def test_sigterm_lets_in_flight_calls_finish_in_the_workers(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    server, pids = _start(server_factory, TETHER_DATABASE_URL=url)
    client = SessionsClient(server.target, retry=False)
    agent = client.create_participant(
        parent="namespaces/default", participant=Participant(kind=Participant.KIND_AGENT)
    ).name
    session = client.create_session(
        parent="namespaces/default", session=Session(kind=Session.KIND_TRIGGER, agent=agent)
    )
    session_id = session.name.rsplit("/", 1)[1]
    with psycopg.connect(libpq_url(url)) as blocker:
        # Hold the session's row lock so RecordActivity stays in flight in whichever worker has it.
        blocker.execute("SELECT 1 FROM sessions WHERE session = %s FOR UPDATE", (session_id,))
        with (
            psycopg.connect(libpq_url(url), autocommit=True) as observer,
            ThreadPoolExecutor(1) as pool,
        ):
            in_flight = pool.submit(client.record_activity, name=session.name)
            wait_until(
                lambda: (
                    observer.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'"
                    ).fetchone()
                    == (1,)
                ),
                "RecordActivity to wait on the row lock",
            )
            server.process.send_signal(signal.SIGTERM)
            for index in (0, 1):
                assert server.wait_for_event("stopping", worker=index) is not None, server.log_tail()
            blocker.rollback()  # release the lock: the call may now finish
            finished = in_flight.result(timeout=DEADLINE_SECONDS)
    assert finished.last_activity_time.ToDatetime() > session.last_activity_time.ToDatetime()
    assert _exit_code(server) == 0, server.log_tail()
    assert not [pid for pid in pids if _alive(pid)]
    client.close()


def test_a_worker_that_dies_stops_the_server(server_factory: ServerFactory) -> None:
    server, pids = _start(server_factory)
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    assert _exit_code(server) == 1, server.log_tail()
    exited = server.wait_for_event("worker_exited", 10, pid=victim)
    assert exited is not None, server.log_tail()
    assert exited["exit_code"] == -signal.SIGKILL
    assert not _alive(survivor)


def test_workers_stop_when_the_supervisor_is_killed(server_factory: ServerFactory) -> None:
    server, pids = _start(server_factory)
    server.process.kill()
    server.process.wait(DEADLINE_SECONDS)
    # Orphans now: they see their stdin (a pipe from the supervisor) end and drain.
    wait_until(lambda: not any(_alive(pid) for pid in pids), "the orphaned workers to exit")
    for index in (0, 1):
        assert server.wait_for_event("stopped", 10, worker=index) is not None, server.log_tail()


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_refused(server_factory: ServerFactory, workers: int) -> None:
    first, _ = _start(server_factory)
    second = server_factory(env={"TETHER_WORKERS": str(workers), "TETHER_LISTEN": first.target}, wait=False)
    assert _exit_code(second) == 1, second.log_tail()
    failed = second.wait_for_event("startup_failed", 10)
    assert failed is not None, second.log_tail()
    assert "in use" in str(failed["error"]).lower() or "bind" in str(failed["error"]).lower()
    assert second.wait_for_event("serving", 0) is None
    assert first.health() == SERVING


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "0"], {}, "--workers / TETHER_WORKERS: Input should be greater than or equal to 1"),
        ([], {"TETHER_WORKERS": "two"}, "--workers / TETHER_WORKERS: Input should be a valid integer"),
        (
            ["--workers", "2", "--database-url", "sqlite:///:memory:"],
            {},
            "an SQLite in-memory database belongs to one process",
        ),
    ],
)
def test_bad_worker_settings_are_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    full_env = server_env(f"sqlite:///{tmp_path / 'tether.db'}", env)
    result = run_tool("tether", ["serve", *args], env=full_env, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, describe(result)
    assert message in result.stderr, describe(result)
    assert not (tmp_path / "tether.db").exists()  # refused before touching the database


def test_worker_settings() -> None:
    settings = Settings(listen="127.0.0.1:0", workers=3, sweep_interval=5, database_url="sqlite:///x.db")
    first, second = (worker_settings(settings, index, "127.0.0.1:4242") for index in (0, 1))
    assert (first.listen, first.migrate_on_start, first.sweep_interval) == ("127.0.0.1:4242", False, 5)
    assert (second.listen, second.migrate_on_start, second.sweep_interval) == ("127.0.0.1:4242", False, 0)
    assert first.workers == second.workers == 3
