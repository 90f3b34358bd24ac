"""Stopping: a rolling restart fails no call of the shipped client, whether a second server
takes over the port or a health-checked balancer moves calls to another; calls in flight
finish within the grace, the process always exits (a second signal at once), and nothing is
logged after `stopped`.

Taking over the port: the old server binds it exclusively, so the new one can bind only
once the old one has closed it; the shipped client's calls wait for a server within their
deadline (wait-for-ready) and retry the CANCELLED that gRPC answers for calls still queued
at a stopping server (`tether.client._common.SERVICE_CONFIG`). Behind a balancer: the
second server runs on its own port, and the client is pointed at both addresses with
round_robin and gRPC client-side health checking, as a balancer would be.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from tests.support.databases import DatabaseBackend, libpq_url
from tests.support.server import ServerFactory, ServerProcess, ServerStartError
from tests.support.sessions import new_trigger_session
from tests.support.tools import DEADLINE_SECONDS, wait_until
from tether.client import AsyncSessionsClient, Session, SessionsClient
from tether.client._common import SERVICE_CONFIG, SERVICE_NAME

CALLERS = 32
ATTEMPTS_TO_TAKE_OVER = 5
# What a balancer does: spread calls over the healthy servers, by their health service.
BALANCED = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE_NAME},
        "methodConfig": json.loads(SERVICE_CONFIG)["methodConfig"],
    }
)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _rpc_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [e for e in server.events() if e.get("event") == "rpc"]


def _exit_code(server: ServerProcess) -> int:
    """The server's exit code, waiting for it to exit on its own."""
    try:
        return server.process.wait(DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit:\n{server.log_tail()}") from None


def _last_event(server: ServerProcess) -> str | None:
    events = server.events()
    return events[-1].get("event") if events else None


async def _until(condition: Callable[[], bool], what: str) -> None:
    """`wait_until` for a test whose event loop must keep running its callers."""
    await asyncio.wait_for(asyncio.to_thread(wait_until, condition, what), DEADLINE_SECONDS + 5)


class _Load:
    """CALLERS concurrent callers of GetSession, RecordActivity and CreateSession through one
    shipped client (its own retry policy) until `stop()`; every failure is kept."""

    def __init__(self, client: AsyncSessionsClient, session: Session) -> None:
        self.failures: list[str] = []
        self._client, self._session = client, session
        self._done = asyncio.Event()
        self._callers = [asyncio.create_task(self._caller(index)) for index in range(CALLERS)]

    async def _caller(self, index: int) -> None:
        call = 0
        while not self._done.is_set():
            call += 1
            try:
                if (index + call) % 3 == 0:
                    await self._client.get_session(name=self._session.name)
                elif (index + call) % 3 == 1:
                    await self._client.record_activity(name=self._session.name)
                else:
                    await self._client.create_session(
                        parent="namespaces/default",
                        session=Session(kind=Session.KIND_TRIGGER, agent=self._session.agent),
                    )
            except Exception as exc:  # any failed call fails the test
                self.failures.append(f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        self._done.set()
        await asyncio.gather(*self._callers)
        await self._client.close()


def _take_over(server_factory: ServerFactory, url: str, target: str) -> ServerProcess:
    """A new server on `target`, once the old one has let go of it: the old one closes its
    listener as it stops, and the new one binds exclusively, as the old one did (a start
    that finds the port still taken fails, and is tried again)."""
    for _ in range(ATTEMPTS_TO_TAKE_OVER - 1):
        try:
            return server_factory(url, env={"TETHER_LISTEN": target})
        except ServerStartError:
            continue
    return server_factory(url, env={"TETHER_LISTEN": target})


async def test_a_second_server_takes_over_the_port_and_no_call_fails(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    old = server_factory(url, env={"TETHER_SHUTDOWN_GRACE": "10"})  # loopback: no drain
    with SessionsClient(old.target, retry=False) as setup:
        session = new_trigger_session(setup)
    load = _Load(AsyncSessionsClient(old.target), session)
    try:
        await _until(lambda: len(_rpc_lines(old)) >= 200, "200 calls on the old server")
        old.process.send_signal(signal.SIGTERM)
        await _until(lambda: any(e.get("event") == "closing" for e in old.events()), "the old server closing")
        new = await asyncio.to_thread(_take_over, server_factory, url, old.target)
        code = await asyncio.to_thread(_exit_code, old)
        await _until(lambda: len(_rpc_lines(new)) >= 200, "200 calls on the new server")
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:5]
    assert code == 0, old.log_tail()
    assert new.target == old.target
    assert {line["code"] for line in _rpc_lines(old)} == {"OK"}
    assert _last_event(old) == "stopped", old.log_tail()


async def test_a_rolling_restart_behind_a_health_checked_balancer_fails_no_call(
    server_factory: ServerFactory,
) -> None:
    url = server_factory.new_database()
    # A 2 s drain: the balancer (here the client's health watch) needs far less to move away.
    old = server_factory(url, env={"TETHER_SHUTDOWN_DRAIN": "2", "TETHER_SHUTDOWN_GRACE": "10"})
    new = server_factory(url)
    with SessionsClient(old.target, retry=False) as setup:
        session = new_trigger_session(setup)
    load = _Load(
        AsyncSessionsClient(f"ipv4:{old.target},{new.target}", options=[("grpc.service_config", BALANCED)]),
        session,
    )
    try:
        await _until(lambda: len(_rpc_lines(old)) >= 100 and len(_rpc_lines(new)) >= 100, "calls on both")
        old.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(_exit_code, old)
        served = len(_rpc_lines(new))
        await _until(lambda: len(_rpc_lines(new)) >= served + 200, "200 more calls on the new server")
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:5]
    assert code == 0, old.log_tail()
    assert {line["code"] for line in _rpc_lines(old)} == {"OK"}
    assert _last_event(old) == "stopped", old.log_tail()


@contextmanager
def _database_lock(server: ServerProcess, session: Session) -> Iterator[Callable[[], None]]:
    """Hold what RecordActivity on `session` needs (PostgreSQL: the row lock; SQLite: the write
    lock); yields the function that releases it."""
    url = server.database_url
    if make_url(url).get_backend_name() == "sqlite":
        blocker = sqlite3.connect(str(make_url(url).database), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield blocker.rollback
        finally:
            blocker.close()
        return
    with psycopg.connect(libpq_url(url)) as pg:
        pg.execute("SELECT 1 FROM sessions WHERE session = %s FOR UPDATE", (session.name.rsplit("/", 1)[1],))
        yield pg.rollback


def _wait_for_lock_waiter(server: ServerProcess) -> None:
    """On PostgreSQL, until a statement waits on the lock. SQLite shows no waiters: there the
    call was sent before SIGTERM and the drain answers it normally should it arrive later."""
    if make_url(server.database_url).get_backend_name() == "sqlite":
        return
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(libpq_url(server.database_url), autocommit=True) as observer:

        def waiting() -> bool:
            # One caller waits on the row lock; more callers of the same row queue behind it,
            # also as Lock waits (the tuple lock), so count at least one.
            row = observer.execute(query).fetchone()
            return row is not None and row[0] >= 1

        wait_until(waiting, "RecordActivity to wait on the lock")


def test_a_call_held_in_the_database_finishes_within_the_grace(
    server_factory: ServerFactory, database_backend: DatabaseBackend
) -> None:
    # The lock is held for less than the grace (and SQLite's 5 s busy timeout): from before
    # SIGTERM until the server has closed its port.
    server = server_factory(env={"TETHER_SHUTDOWN_DRAIN": "1", "TETHER_SHUTDOWN_GRACE": "30"})
    client = SessionsClient(server.target)
    session = new_trigger_session(client)
    with _database_lock(server, session) as release, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.record_activity, name=session.name)
        _wait_for_lock_waiter(server)
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_for_event("closing") is not None, server.log_tail()
        release()
        finished = in_flight.result(timeout=DEADLINE_SECONDS)
    assert finished.last_activity_time.ToDatetime() > session.last_activity_time.ToDatetime()
    assert _exit_code(server) == 0, server.log_tail()
    client.close()


def test_a_stop_stuck_in_the_database_still_exits(
    server_factory: ServerFactory, database_backend: DatabaseBackend
) -> None:
    """The lock outlives the grace: the calls are cancelled and the process exits (on SQLite
    it used to hang for good: aiosqlite's thread cannot be interrupted)."""
    server = server_factory(env={"TETHER_SHUTDOWN_GRACE": "1"})
    client = SessionsClient(server.target, retry=False)
    session = new_trigger_session(client)
    with _database_lock(server, session), ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(client.record_activity, name=session.name) for _ in range(3)]
        _wait_for_lock_waiter(server)
        server.process.send_signal(signal.SIGTERM)
        assert _exit_code(server) == 0, server.log_tail()
        for call in calls:
            assert call.exception(timeout=DEADLINE_SECONDS) is not None
    assert server.wait_for_event("stopped", 0) is not None, server.log_tail()
    assert _last_event(server) == "stopped", server.log_tail()
    client.close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_signal_stops_at_once(
    server_factory: ServerFactory, database_backend: DatabaseBackend, signum: int, code: int, workers: int
) -> None:
    # A grace far beyond the deadline: only the second signal can end the wait in time.
    server = server_factory(env={"TETHER_SHUTDOWN_GRACE": "600", "TETHER_WORKERS": str(workers)})
    if workers > 1:
        assert server.wait_for_event("serving", workers=workers) is not None, server.log_tail()
    client = SessionsClient(server.target, retry=False)
    session = new_trigger_session(client)
    with _database_lock(server, session), ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.record_activity, name=session.name)
        _wait_for_lock_waiter(server)
        server.process.send_signal(signum)
        closing = {"worker": 0} if workers > 1 else {}
        assert server.wait_for_event("closing", **closing) is not None, server.log_tail()
        server.process.send_signal(signum)
        assert _exit_code(server) == code, server.log_tail()
        assert held.exception(timeout=DEADLINE_SECONDS) is not None
    assert server.wait_for_event("stopped_now", 0, exit_code=code) is not None, server.log_tail()
    client.close()


def test_an_idle_server_stops_at_once_and_logs_nothing_after_stopped(server_factory: ServerFactory) -> None:
    """Also with a health Watch open (a balancer's): it ends instead of holding the grace."""
    server = server_factory(env={"TETHER_SHUTDOWN_GRACE": "600"})
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_SECONDS * 2
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _exit_code(server) == 0, server.log_tail()
    assert _last_event(server) == "stopped", server.log_tail()
    stopping = server.wait_for_event("stopping", 0)
    assert stopping is not None
    assert (stopping["drain_seconds"], stopping["signal"]) == (0.0, "SIGTERM")  # loopback: no drain
