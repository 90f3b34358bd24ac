"""The server's life around its database: health follows the database, SIGTERM
lets in-flight calls finish, and migrations create exactly the declared schema."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from tests.support.databases import DatabaseBackend, PostgresBackend, libpq_url
from tests.support.errors import expect_error
from tests.support.server import ServerFactory
from tests.support.sessions import new_trigger_session
from tests.support.tools import DEADLINE_SECONDS, describe, run_tool, wait_until
from tether.client import (
    Reason,
    SessionsClient,
)
from tether.server.db.migrate import schema_drift

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _admin(backend: DatabaseBackend) -> psycopg.Connection[tuple[object, ...]]:
    assert isinstance(backend, PostgresBackend)
    return psycopg.connect(backend.admin_url, autocommit=True)


def _dbname(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


@contextmanager
def _health_watch(target: str) -> Iterator[Iterator[health_pb2.HealthCheckResponse]]:
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_SECONDS
        )
        yield stream
        stream.cancel()


def _next_status(stream: Iterator[health_pb2.HealthCheckResponse], wanted: int) -> None:
    for update in stream:
        if update.status == wanted:
            return
    raise AssertionError("health stream ended")


@pytest.mark.pg_only
def test_health_follows_the_database(
    server_factory: ServerFactory, database_backend: DatabaseBackend
) -> None:
    url = server_factory.new_database()
    server = server_factory(url, env={"TETHER_HEALTH_INTERVAL": "0.2"})
    dbname = sql.Identifier(_dbname(url))
    client = SessionsClient(server.target, retry=False)
    session = new_trigger_session(client)
    with _health_watch(server.target) as health, _admin(database_backend) as admin:
        _next_status(health, SERVING)
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(dbname))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (_dbname(url),)
        )
        _next_status(health, NOT_SERVING)
        # Through SQLAlchemy, and the hot paths that run on the raw asyncpg connection.
        calls: list[Callable[[], object]] = [
            lambda: client.get_namespace(name="namespaces/default"),
            lambda: client.get_session(name=session.name),
            lambda: client.record_activity(name=session.name),
        ]
        for call in calls:
            with expect_error(grpc.StatusCode.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE):
                call()
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(dbname))
        _next_status(health, SERVING)
    assert client.get_namespace(name="namespaces/default").name == "namespaces/default"
    assert client.get_session(name=session.name) == session
    assert client.record_activity(name=session.name).name == session.name
    client.close()
    assert server.stop() == 0


def _lock_waiters(url: str) -> int:
    with psycopg.connect(libpq_url(url), autocommit=True) as observer:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.pg_only
def test_a_cancelled_call_does_not_pass_on_a_busy_connection(server_factory: ServerFactory) -> None:
    """RecordActivity runs on the raw asyncpg connection: when its caller gives up while
    the statement waits on a lock, that connection must not serve the next call."""
    url = server_factory.new_database()
    server = server_factory(url, env={"TETHER_DB_POOL_SIZE": "1"})  # the next call gets that slot
    client = SessionsClient(server.target, retry=False)
    session = new_trigger_session(client)
    with psycopg.connect(libpq_url(url)) as blocker:
        blocker.execute(
            "SELECT 1 FROM sessions WHERE session = %s FOR UPDATE", (session.name.rsplit("/", 1)[1],)
        )
        with expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, ""):
            client.record_activity(name=session.name, timeout=1.0)
        # The lock is still held: the abandoned statement must not be left waiting on it.
        wait_until(lambda: _lock_waiters(url) == 0, "the abandoned statement to go away")
        assert client.get_session(name=session.name) == session
        blocker.rollback()
    assert client.record_activity(name=session.name).name == session.name
    client.close()
    assert server.stop() == 0, server.log_text()


@pytest.mark.pg_only
def test_sigterm_lets_in_flight_calls_finish(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    server = server_factory(url)
    client = SessionsClient(server.target, retry=False)
    session = new_trigger_session(client)
    session_id = session.name.rsplit("/", 1)[1]
    with psycopg.connect(libpq_url(url)) as blocker, ThreadPoolExecutor(1) as pool:
        # Hold the session's row lock so RecordActivity stays in flight.
        blocker.execute("SELECT 1 FROM sessions WHERE session = %s FOR UPDATE", (session_id,))
        in_flight = pool.submit(client.record_activity, name=session.name)
        wait_until(lambda: _lock_waiters(url) == 1, "RecordActivity to wait on the row lock")
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_for_event("stopping") is not None
        blocker.rollback()  # release the lock: the call may now finish
        finished = in_flight.result(timeout=DEADLINE_SECONDS)
    assert finished.last_activity_time.ToDatetime() > session.last_activity_time.ToDatetime()
    # Wait for the exit: another SIGTERM (`server.stop()`) would mean "stop now" (exit 143).
    assert server.process.wait(DEADLINE_SECONDS) == 0, server.log_text()
    client.close()


def test_migrations_create_the_declared_schema(database_backend: DatabaseBackend) -> None:
    url = database_backend.new_database()
    result = run_tool("tether", ["migrate", "--database-url", url])
    assert result.returncode == 0, describe(result)
    assert schema_drift(url) == []
    # Migrating again is a no-op.
    again = run_tool("tether", ["migrate", "--database-url", url])
    assert again.returncode == 0, describe(again)


def test_one_log_line_per_rpc(server_factory: ServerFactory) -> None:
    server = server_factory()
    with SessionsClient(server.target) as client:
        client.get_namespace(name="namespaces/default")
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
            client.get_namespace(name="namespaces/missing")
    method = "/tether.v1.SessionService/GetNamespace"
    ok = server.wait_for_event("rpc", method=method, code="OK")
    missing = server.wait_for_event("rpc", method=method, code="NOT_FOUND")
    assert ok is not None
    assert missing is not None, server.log_text()
    assert isinstance(ok["duration_ms"], float)
    assert len([e for e in server.events() if e.get("event") == "rpc" and e.get("method") == method]) == 2
