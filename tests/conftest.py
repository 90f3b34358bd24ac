"""Fixtures: the behavioural suite runs against the real server over a real channel, once on SQLite
and once on PostgreSQL.

Every test that (indirectly) uses ``database_backend`` is parametrized with the ids ``sqlite`` and
``postgresql`` (``-k postgresql`` selects that half; ``@pytest.mark.pg_only`` keeps only it).

- ``database_backend`` (session): a :class:`DatabaseBackend`; ``.name``; ``.new_database()`` gives the
  URL of a fresh, empty database (a temp SQLite file, or a throwaway ``tether_test_<hex>`` PostgreSQL
  database dropped at the end). How PostgreSQL is found: see ``tests/support/databases.py``.
- ``server`` (session, one per backend): a :class:`ServerProcess` shared by the tests
  (``.target``, ``.database_url``, ``.log_text()``, ``.stop()``, ``.process``, ...).
- ``client`` / ``aclient`` (session): ``SessionsClient`` / ``AsyncSessionsClient`` connected to ``server``.
- ``namespace`` / ``parent``: a fresh namespace for each test: its id (``t-<8 hex>``) / its name;
  ``other_parent``: the name of a second one.
- ``server_factory``: starts extra servers for one test (own database by default, or a given
  ``database_url``; extra ``env``); all are stopped after the test.

A test that uses ``server`` fails if the server is no longer running after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.support.databases import (
    REQUIRE_POSTGRES_ENV,
    DatabaseBackend,
    LocatedPostgres,
    PostgresBackend,
    PostgresUnavailableError,
    SqliteBackend,
    locate_postgres,
    redact,
)
from tests.support.server import ServerFactory, ServerProcess

if TYPE_CHECKING:
    # Imported for real inside the fixtures, so the server-level tests (smoke, grpcurl) still
    # run when the typed client is broken.
    from tether.client import AsyncSessionsClient, SessionsClient

BACKENDS = ("sqlite", "postgresql")
_postgres_source: list[str] = []  # for the terminal summary


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_backend" not in metafunc.fixturenames:
        return
    backends = ["postgresql"] if metafunc.definition.get_closest_marker("pg_only") else list(BACKENDS)
    metafunc.parametrize("database_backend", backends, indirect=True, scope="session", ids=backends)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _postgres_source:
        terminalreporter.write_line(line)


# --- databases --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocatedPostgres]:
    """A PostgreSQL server where the suite may create databases (found or started; never skipped)."""
    try:
        located = locate_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailableError as error:
        problem = str(error)
    else:
        problem = ""
    if problem:
        if _truthy(os.environ.get(REQUIRE_POSTGRES_ENV)):
            # CI: stop the whole run at once; a run without its PostgreSQL half is a failed run.
            pytest.exit(
                f"{REQUIRE_POSTGRES_ENV} is set and {problem}", returncode=pytest.ExitCode.TESTS_FAILED
            )
        pytest.fail(problem, pytrace=False)
    _postgres_source.append(f"PostgreSQL for tests: {located.source} ({redact(located.admin_url)})")
    yield located
    located.close()


@pytest.fixture(scope="session")
def database_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseBackend]:
    """The database kind under test (parametrized: ``sqlite``, ``postgresql``)."""
    name = getattr(request, "param", None)
    backend: DatabaseBackend
    if name == "sqlite":
        backend = SqliteBackend(tmp_path_factory.mktemp("sqlite"))
    elif name == "postgresql":
        located: LocatedPostgres = request.getfixturevalue("postgres_server")
        backend = PostgresBackend(located.admin_url, located.source)
    else:
        raise pytest.UsageError(f"database_backend must be one of {BACKENDS}, not {name!r}")
    yield backend
    backend.close()


# --- servers ----------------------------------------------------------------------------------


@pytest.fixture
def server_factory(
    database_backend: DatabaseBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Extra servers for one test: ``server_factory()``, ``server_factory(url, env={...})``."""
    factory = ServerFactory(database_backend, tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def server(
    database_backend: DatabaseBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The shared server of this backend (one per backend per test session)."""
    factory = ServerFactory(database_backend, tmp_path_factory)
    try:
        yield factory()
    finally:
        factory.close()


@pytest.fixture(autouse=True)
def _server_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that uses the shared server fails if the server is dead after it."""
    if "server" not in request.fixturenames:
        yield
        return
    shared: ServerProcess = request.getfixturevalue("server")
    shared.ensure_running()
    yield
    shared.ensure_running()


# --- clients ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[SessionsClient]:
    """A blocking ``SessionsClient`` connected to the shared server."""
    from tether.client import SessionsClient

    with SessionsClient(server.target) as sessions:
        yield sessions


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def aclient(server: ServerProcess) -> AsyncIterator[AsyncSessionsClient]:
    """An asyncio ``AsyncSessionsClient`` connected to the shared server."""
    from tether.client import AsyncSessionsClient

    async with AsyncSessionsClient(server.target) as sessions:
        yield sessions


def _new_namespace(client: SessionsClient) -> str:
    namespace_id = f"t-{uuid.uuid4().hex[:8]}"
    client.create_namespace(namespace_id=namespace_id)
    return namespace_id


@pytest.fixture
def namespace(client: SessionsClient) -> str:
    """The id of a namespace created for this test alone (``t-<8 hex>``)."""
    return _new_namespace(client)


@pytest.fixture
def parent(namespace: str) -> str:
    """The name of this test's own namespace: ``namespaces/t-<8 hex>``."""
    return f"namespaces/{namespace}"


@pytest.fixture
def other_parent(client: SessionsClient) -> str:
    """The name of a second namespace of this test's own, for cross-tenant checks."""
    return f"namespaces/{_new_namespace(client)}"
