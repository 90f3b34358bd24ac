"""The server as a process: it starts on both databases, answers health checks, exits 0 on SIGTERM,
and ``tether migrate`` / ``tether health`` behave as the README says."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.support.databases import DatabaseBackend, free_port, table_names
from tests.support.server import ServerFactory, ServerProcess, health_status, server_env
from tests.support.tools import describe, run_tool

SERVING = health_pb2.HealthCheckResponse.SERVING
URL_PREFIX = {"sqlite": "sqlite+aiosqlite:///", "postgresql": "postgresql+asyncpg://"}


def test_server_serves_on_each_backend(server: ServerProcess, database_backend: DatabaseBackend) -> None:
    assert server.database_url.startswith(URL_PREFIX[database_backend.name])
    serving = [event for event in server.events() if event.get("event") == "serving"]
    assert len(serving) == 1, server.log_text()
    assert serving[0]["address"] == server.target
    assert server.target.startswith("127.0.0.1:")
    assert not server.target.endswith(":0")
    assert server.health() == SERVING


def test_every_log_line_is_json(server: ServerProcess) -> None:
    lines = [line for line in server.log_lines() if line.strip()]
    assert lines
    not_json = [line for line in lines if not line.lstrip().startswith("{")]
    assert not_json == [], "TETHER_LOG_FORMAT=json, yet the server printed non-JSON lines"


def test_tether_health_command_says_serving(server: ServerProcess) -> None:
    result = run_tool("tether", ["health", "--target", server.target])
    assert result.returncode == 0, describe(result)


def test_tether_health_command_fails_without_a_server() -> None:
    result = run_tool("tether", ["health", "--target", f"127.0.0.1:{free_port()}"])
    assert result.returncode != 0, describe(result)


def test_sigterm_drains_and_exits_zero(server_factory: ServerFactory) -> None:
    own = server_factory()
    assert own.health() == SERVING
    assert own.stop() == 0, own.log_text()
    assert not own.is_running()
    with pytest.raises(grpc.RpcError) as info:
        health_status(own.target, timeout=2)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_two_servers_share_one_database(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    first, second = server_factory(url), server_factory(url)
    assert first.target != second.target
    assert first.health() == SERVING
    assert second.health() == SERVING


def test_migrate_on_a_fresh_database(database_backend: DatabaseBackend, tmp_path: Path) -> None:
    url = database_backend.new_database()
    assert "alembic_version" not in table_names(url)
    env = server_env(url)
    first = run_tool("tether", ["migrate"], env=env, cwd=tmp_path)
    assert first.returncode == 0, describe(first)
    tables = table_names(url)
    assert "alembic_version" in tables
    assert len(tables) > 1, tables
    again = run_tool("tether", ["migrate"], env=env, cwd=tmp_path)
    assert again.returncode == 0, describe(again)
    assert table_names(url) == tables


def test_server_starts_on_a_migrated_database(
    database_backend: DatabaseBackend, server_factory: ServerFactory
) -> None:
    url = database_backend.new_database()
    migrated = run_tool("tether", ["migrate"], env=server_env(url))
    assert migrated.returncode == 0, describe(migrated)
    assert server_factory(url).health() == SERVING
