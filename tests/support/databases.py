"""Where the suite's databases come from.

SQLite: a fresh file in a temporary directory for every database.

PostgreSQL: a throwaway database (``tether_test_<hex>``) on a server found in this order:

1. ``TETHER_TEST_DATABASE_URL``: an admin URL of a server where the suite may create databases;
2. a server on 127.0.0.1:5432 that accepts user ``postgres`` or ``root`` (and lets it create databases);
3. a server started just for this run with pytest-postgresql's executor and the local binaries
   (``pg_ctl`` from ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``).

When none works, :class:`PostgresUnavailableError` says why for each source. The conftest turns that into
failures, never skips. Every database made here is dropped at the end (its backends terminated first).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

POSTGRES_URL_ENV = "TETHER_TEST_DATABASE_URL"
REQUIRE_POSTGRES_ENV = "TETHER_TEST_REQUIRE_POSTGRES"
LOCAL_ADMIN_URLS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)
CONNECT_TIMEOUT_SECONDS = 5


class PostgresUnavailableError(Exception):
    """No PostgreSQL server could be found or started; the message says what was tried."""


def libpq_url(url: str) -> str:
    """``url`` with a plain ``postgresql://`` scheme (what psycopg understands)."""
    parts = urlsplit(url)
    if not parts.scheme.startswith(("postgresql", "postgres")):
        raise ValueError(f"not a PostgreSQL URL: {redact(url)}")
    return urlunsplit(parts._replace(scheme="postgresql"))


def server_url(admin_url: str, dbname: str) -> str:
    """The URL the Tether server gets for database ``dbname`` on the admin URL's server."""
    parts = urlsplit(libpq_url(admin_url))
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{dbname}"))


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def probe(admin_url: str) -> str | None:
    """None if ``admin_url`` connects and may create databases, else why not."""
    try:
        with psycopg.connect(admin_url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as error:
        return f"{redact(admin_url)}: {str(error).strip() or type(error).__name__}"
    if row is None or not row[0]:
        return f"{redact(admin_url)}: connected, but the user may not create databases"
    return None


def find_pg_ctl() -> str | None:
    """Path of a local ``pg_ctl``, or None."""
    candidates: list[str] = []
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        candidates.append(os.path.join(bindir, "pg_ctl"))
    except (OSError, subprocess.SubprocessError):
        pass

    def version(path: str) -> int:
        digits = Path(path).parent.parent.name
        return int(digits) if digits.isdigit() else 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version, reverse=True)
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(which)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL server started for this test run (trust auth, user ``postgres``)."""

    directory: Path
    pg_ctl: str
    port: int = field(default_factory=free_port)

    def start(self) -> str:
        """Start the server; return its admin URL."""
        # Imported here: only this fallback needs pytest-postgresql's executor.
        from pytest_postgresql.executors import PostgreSQLExecutor

        self._executor = PostgreSQLExecutor(
            executable=self.pg_ctl,
            host="127.0.0.1",
            port=self.port,
            datadir=str(self.directory / "data"),
            unixsocketdir=str(self.directory),
            logfile=str(self.directory / "postgresql.log"),
            startparams="-w",
            dbname="postgres",
            user="postgres",
            timeout=120,
        )
        self._executor.start()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._executor.stop()


@dataclass
class LocatedPostgres:
    """An admin URL, and how the server behind it was found."""

    admin_url: str
    source: str
    throwaway: ThrowawayPostgres | None = None

    def close(self) -> None:
        if self.throwaway is not None:
            self.throwaway.stop()


def locate_postgres(scratch: Path) -> LocatedPostgres:
    """Find (or start) a PostgreSQL server where the suite may create databases."""
    tried: list[str] = []
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        url = libpq_url(configured)
        problem = probe(url)
        if problem is None:
            return LocatedPostgres(url, f"${POSTGRES_URL_ENV}")
        # An explicit setting that does not work is an error, not a reason to look elsewhere.
        raise PostgresUnavailableError(f"${POSTGRES_URL_ENV} is set but unusable: {problem}")
    tried.append(f"${POSTGRES_URL_ENV}: not set")

    for url in LOCAL_ADMIN_URLS:
        problem = probe(url)
        if problem is None:
            return LocatedPostgres(url, "local server on 127.0.0.1:5432")
        tried.append(problem)

    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        tried.append(
            "throwaway server: no pg_ctl (looked at pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)"
        )
    elif hasattr(os, "geteuid") and os.geteuid() == 0:
        tried.append(f"throwaway server: {pg_ctl} found, but initdb refuses to run as root")
    else:
        throwaway = ThrowawayPostgres(scratch, pg_ctl)
        try:
            url = throwaway.start()
        except Exception as error:  # mirakuru and pg_ctl raise a variety of errors
            log = scratch / "postgresql.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            tried.append(f"throwaway server with {pg_ctl}: {error!r}\n{tail}")
        else:
            return LocatedPostgres(url, f"throwaway server ({pg_ctl}, port {throwaway.port})", throwaway)

    raise PostgresUnavailableError(
        "PostgreSQL is not available, so the PostgreSQL half of the suite cannot run. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nSet {POSTGRES_URL_ENV}=postgresql://USER@HOST:PORT/postgres "
        "(a user that may create databases), run a server on 127.0.0.1:5432, "
        "or install the PostgreSQL server binaries (pg_ctl) and run the tests as a non-root user."
    )


class DatabaseBackend:
    """Makes fresh, empty databases of one kind; ``close`` removes them."""

    name: str

    def new_database(self) -> str:
        """The server URL (``TETHER_DATABASE_URL``) of a new, empty database."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove every database made by :meth:`new_database`."""


class SqliteBackend(DatabaseBackend):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def new_database(self) -> str:
        path = (self.directory / f"tether-{uuid.uuid4().hex[:12]}.db").resolve()
        return f"sqlite+aiosqlite:///{path}"

    # The files live in pytest's temporary directory, which pytest prunes.


class PostgresBackend(DatabaseBackend):
    name = "postgresql"

    def __init__(self, admin_url: str, source: str = "") -> None:
        self.admin_url = admin_url
        self.source = source
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True)

    def new_database(self) -> str:
        dbname = f"tether_test_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        self.created.append(dbname)
        return server_url(self.admin_url, dbname)

    def drop_database(self, dbname: str) -> None:
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

    def close(self) -> None:
        errors: list[str] = []
        while self.created:
            dbname = self.created.pop()
            try:
                self.drop_database(dbname)
            except psycopg.Error as error:
                errors.append(f"{dbname}: {error}")
        if errors:
            raise RuntimeError("could not drop test databases: " + "; ".join(errors))


def table_names(database_url: str) -> set[str]:
    """The tables in the database behind a server URL (SQLite file or PostgreSQL ``public`` schema)."""
    parts = urlsplit(database_url)
    if parts.scheme.startswith("sqlite"):
        path = parts.path[1:]  # sqlite:///relative.db, sqlite:////absolute.db
        if not os.path.exists(path):
            return set()
        with closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(row[0]) for row in rows}
    with psycopg.connect(libpq_url(database_url), connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        found = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {str(row[0]) for row in found}
