"""The `tether` command as an operator meets it: database URLs and plain paths, configuration
errors (exit 2, one line naming the flag and the variable, before start-up), `--version`,
`tether token` output that can go straight into an auth file, and health probe messages."""

from __future__ import annotations

import importlib.metadata
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.support.databases import table_names
from tests.support.server import ServerProcess, server_env, start_server
from tests.support.tools import describe, run_tool
from tether.client import NotFoundError, Participant, SessionsClient
from tether.server.auth import parse_auth_file

SERVING = health_pb2.HealthCheckResponse.SERVING
AGENT = Participant(kind=Participant.KIND_AGENT)
URL_FORMS = "use a file path (SQLite), sqlite:///FILE, sqlite:// (in memory) or postgresql://"


# --- database URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["tether.db", "data/tether.db", "ABSOLUTE/tether.db"])
def test_migrate_takes_a_plain_path_as_an_sqlite_file(tmp_path: Path, database: str) -> None:
    (tmp_path / "data").mkdir()
    database = database.replace("ABSOLUTE", str(tmp_path / "data"))
    env = server_env("unused", {"TETHER_DATABASE_URL": None})
    result = run_tool("tether", ["migrate", "--database-url", database], env=env, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    file = tmp_path / database if not Path(database).is_absolute() else Path(database)
    assert "alembic_version" in table_names(f"sqlite:///{file}")


def test_serve_takes_a_plain_path_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with start_server("data/tether.db", workdir=tmp_path) as server:
        assert server.health() == SERVING
        with SessionsClient(server.target) as client:
            assert client.get_namespace(name="namespaces/default").name == "namespaces/default"
        assert server.stop() == 0, server.log_text()
    assert "alembic_version" in table_names(f"sqlite:///{tmp_path / 'data' / 'tether.db'}")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", ":memory:"])
def test_in_memory_sqlite_serves(tmp_path: Path, url: str) -> None:
    with start_server(url, workdir=tmp_path) as server:
        with SessionsClient(server.target) as client, ThreadPoolExecutor(8) as pool:
            # Migrated in the connection that serves, and concurrent writes queue for it.
            create = partial(client.create_participant, parent="namespaces/default")
            ids = [f"p{i}" for i in range(16)]
            list(pool.map(lambda pid: create(participant_id=pid, participant=AGENT), ids))
            names = {p.name for p in client.list_participants(parent="namespaces/default")}
            assert names == {f"namespaces/default/participants/{pid}" for pid in ids}
            with pytest.raises(NotFoundError):
                client.get_namespace(name="namespaces/missing")
        assert server.stop() == 0, server.log_text()
    assert list(tmp_path.iterdir()) == []  # no file was made


BAD_URLS = [
    ("mysql://tether@db/tether", "unsupported database 'mysql'; " + URL_FORMS),
    ("foo://", "unsupported database 'foo'; " + URL_FORMS),
    (
        "postgresql+psycopg2://tether@db/tether",
        "unsupported driver 'postgresql+psycopg2': use postgresql:// or postgresql+asyncpg://",
    ),
    ("sqlite:tether.db", "not a valid URL (no // after the scheme)"),
    ("postgresql://tether:s3cret@db:port/tether", "not a valid URL"),
    ("missing/tether.db", "the directory of the SQLite database"),
    (".", "is a directory, not an SQLite database file"),
]


def _refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2 with one line naming the flag and the variable, after the header."""
    assert result.returncode == 2, describe(result)
    header, line, *more = result.stderr.splitlines()
    assert header == "tether: invalid configuration:", describe(result)
    assert line.startswith("  --database-url / TETHER_DATABASE_URL: "), describe(result)
    assert message in line, describe(result)
    assert more == [], describe(result)


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=[url for url, _ in BAD_URLS])
def test_an_unusable_database_url_is_a_configuration_error(
    tmp_path: Path, command: str, url: str, message: str
) -> None:
    env = server_env("unused", {"TETHER_DATABASE_URL": None})
    result = run_tool("tether", [command, "--database-url", url], env=env, cwd=tmp_path, timeout=30)
    _refused(result, message)
    assert "s3cret" not in result.stderr  # a password is never echoed
    assert list(tmp_path.iterdir()) == []  # refused before touching any database


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unusable_database_variable_is_a_configuration_error(tmp_path: Path, command: str) -> None:
    result = run_tool("tether", [command], env=server_env("mysql://db/tether"), cwd=tmp_path, timeout=30)
    _refused(result, "unsupported database 'mysql'")


# --- small things -------------------------------------------------------------------------------


def test_version_is_the_installed_package_version() -> None:
    result = run_tool("tether", ["--version"])
    assert result.returncode == 0, describe(result)
    assert result.stdout == f"tether {importlib.metadata.version('tether')}\n"


def test_serve_help_shows_every_default() -> None:
    result = run_tool("tether", ["serve", "--help"])
    assert result.returncode == 0, describe(result)
    text = " ".join(result.stdout.split())
    for shown in ("(default: 127.0.0.1:50051) [TETHER_LISTEN]", "(default: 30d) [TETHER_RETENTION]"):
        assert shown in text, result.stdout
    assert text.count("(default: ") == text.count("[TETHER_"), result.stdout


def test_token_stdout_is_only_the_auth_file_lines(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.toml"
    auth_file.write_text('[[principal]]\nid = "old"\nrole = "reader"\nnamespaces = ["default"]\n')
    auth_file.write_text(auth_file.read_text() + f'token_sha256 = "{"0" * 64}"')  # no final newline
    result = run_tool("tether", ["token", "--id", "ci-bot", "--role", "writer"])
    assert result.returncode == 0, describe(result)
    token = result.stderr.splitlines()[0].removeprefix("token: ")
    assert len(token) >= 43
    assert token not in result.stdout
    with auth_file.open("a") as file:  # what `tether token ... >> auth.toml` does
        file.write(result.stdout)
    table = parse_auth_file(auth_file.read_text())
    assert table.lookup(token) is not None
    assert table.lookup(token).id == "ci-bot"  # type: ignore[union-attr]


def test_token_file_is_new_and_private(tmp_path: Path) -> None:
    token_file = tmp_path / "bot.token"
    result = run_tool("tether", ["token", "--id", "bot", "--token-file", str(token_file)])
    assert result.returncode == 0, describe(result)
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in result.stdout + result.stderr
    assert parse_auth_file(result.stdout).lookup(token) is not None
    again = run_tool("tether", ["token", "--id", "bot", "--token-file", str(token_file)])
    assert again.returncode == 2, describe(again)
    assert "File exists" in again.stderr
    assert again.stdout == ""  # no principal lines for a token nobody got
    assert token_file.read_text().strip() == token


def test_health_of_an_unknown_service_says_what_is_served(server: ServerProcess) -> None:
    result = run_tool("tether", ["health", "--target", server.target, "--service", "nope"])
    assert result.returncode == 1, describe(result)
    assert result.stderr == (
        f"tether health: {server.target}: NOT_FOUND: service 'nope' is not served "
        '(a Tether server reports "" for the whole server and tether.v1.SessionService)\n'
    )
