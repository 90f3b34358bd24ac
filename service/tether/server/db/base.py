"""What every repository module shares: the database handle, dialect-aware
inserts, transactions and the clock.

Every data-layer call says at its call site which path it runs on:

- `db.read()`: reads that need no snapshot across statements;
- `db.statement()`: a write that is one statement (atomic by itself);
- `db.transaction()`: several statements that commit together;
- `db.hot` (PostgreSQL only): the few statements every chat message runs, as
  plain SQL on an asyncpg pool (`tether.server.db.hot`);
- `db.write(work)` / `db.query(work)`: `work` is a plain function of a synchronous
  `Connection`, run in one transaction: on a SQLite file in the threads of
  `tether.server.db.sqlite_runner` (writes committed in batches), elsewhere through
  the async engine (`AsyncConnection.run_sync`). The hot calls on SQLite take this
  path.

There is no ambient transaction: a function that must run inside a caller's
transaction takes its connection as an argument. On SQLite the write paths take
turns, so a write must not start another one inside itself (`db.write` inside
`db.transaction()` would wait for itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server import errors
from tether.server.config import Settings, is_sqlite_memory
from tether.server.db.engine import READ_ONLY, create_engine
from tether.server.db.hot import HotPool
from tether.server.db.sqlite_runner import SqliteRunner

T = TypeVar("T")
P = ParamSpec("P")

# A row as the data layer hands it on (to `convert`): SQLAlchemy's RowMapping on
# the SQLAlchemy path, a dict on the hot path; same keys, same value types.
Row = Mapping[Any, Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """The data layer's handle: one engine (SQLite or PostgreSQL) and, on
    PostgreSQL, the hot statements' pool.

    On SQLite the write paths (`transaction`, `statement`) take turns on an
    in-process lock before they BEGIN IMMEDIATE: concurrent writers of this
    process queue here, first come first served, instead of polling SQLite's
    busy handler (which sleeps in growing steps and gives up with "database is
    locked"). Another process on the same file still waits on `busy_timeout`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        retention: timedelta,
        hot: HotPool | None = None,
        *,
        sqlite_threads: bool = False,
    ) -> None:
        self.engine = engine
        self.retention = retention
        self.hot = hot
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._writer = asyncio.Lock()
        self._runner = (
            SqliteRunner(engine.url.render_as_string(hide_password=False), self._writer)
            if sqlite_threads
            else None
        )
        # What the pool raises, unwrapped, when it cannot connect (SQLAlchemy's
        # driver adapter error; `engine.connect()` would wrap it in DBAPIError).
        self._connect_errors: tuple[type[BaseException], ...] = (
            DBAPIError,
            OSError,
            engine.dialect.loaded_dbapi.Error,
        )

    async def close(self) -> None:
        await self.engine.dispose()
        if self.hot is not None:
            await self.hot.close()
        if self._runner is not None:
            await asyncio.to_thread(self._runner.close)

    async def write(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`work(conn, *args, **kwargs)` in a write transaction (see the module docstring)."""
        call = _bound(work, *args, **kwargs)
        if self._runner is not None:
            return await self._runner.write(call)
        async with self.transaction() as conn:
            return await conn.run_sync(call)

    async def query(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`work(conn, *args, **kwargs)` in a read-only transaction; it must not write."""
        call = _bound(work, *args, **kwargs)
        if self._runner is not None:
            return await self._runner.read(call)
        async with self.read() as conn:
            return await conn.run_sync(call)

    async def reset_connections(self) -> None:
        """Drop every pooled connection (after an outage they are likely dead)."""
        await self.engine.dispose()
        if self.hot is not None:
            await self.hot.expire_connections()

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ON CONFLICT on this dialect."""
        return postgresql.insert(table) if self.is_postgresql else sqlite.insert(table)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on any error."""
        async with self._sqlite_write_turn(), self._connection() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """For reads that need no snapshot across statements. PostgreSQL: autocommit
        (no BEGIN/COMMIT round trips); SQLite: a deferred transaction that runs
        beside writers instead of queueing for the write lock. It must not write."""
        async with self._connection(autocommit=True, sqlite_read_only=True) as conn:
            yield conn

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """For a write that is one statement (atomic by itself): on PostgreSQL it
        runs in autocommit mode, saving the BEGIN and COMMIT round trips."""
        async with self._sqlite_write_turn(), self._connection(autocommit=True) as conn:
            yield conn

    @asynccontextmanager
    async def _sqlite_write_turn(self) -> AsyncIterator[None]:
        if self.is_postgresql:
            yield
            return
        async with self._writer:
            yield

    @asynccontextmanager
    async def _connection(
        self, *, autocommit: bool = False, sqlite_read_only: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        async with AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(self.engine.connect())
            except self._connect_errors as exc:
                # No connection to be had, whatever the driver says why: the
                # database is unreachable from here, and a retry may succeed.
                raise errors.unavailable() from exc
            if self.is_postgresql and autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            elif sqlite_read_only:
                await conn.execution_options(**{READ_ONLY: True})
            await stack.enter_async_context(conn.begin())
            yield conn


def constraint_kind(error: Exception) -> str:
    """`unique`, `foreign_key` or `other` for an IntegrityError on either database."""
    orig = getattr(error, "orig", error)
    code = errors.sqlstate(error)
    if code == "23505":
        return "unique"
    if code == "23503":
        return "foreign_key"
    name = getattr(orig, "sqlite_errorname", "") or ""
    text = str(orig)
    if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY") or "UNIQUE constraint" in text:
        return "unique"
    if name == "SQLITE_CONSTRAINT_FOREIGNKEY" or "FOREIGN KEY constraint" in text:
        return "foreign_key"
    return "other"


def _bound(
    work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
) -> Callable[[Connection], T]:
    """`work` with its arguments after the connection bound."""

    def call(conn: Connection) -> T:
        return work(conn, *args, **kwargs)

    return call


def insert_for(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT on `conn`'s dialect."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def pool_sizes(pool_size: int) -> tuple[int, int]:
    """PostgreSQL: (SQLAlchemy pool, hot pool) sizes within the configured budget: a
    third (at least one) for transactions, lists and the sweeper, the rest for the hot
    statements (at least one)."""
    general = max(1, pool_size // 3)
    return general, max(1, pool_size - general)


async def open_database(settings: Settings) -> Database:
    """The serving handle for `settings`: engine, and on PostgreSQL the hot pool."""
    url = settings.database_url
    if make_url(url).get_backend_name() != "postgresql":
        # An in-memory database lives in the async engine's one connection: no threads of its own.
        threads = not is_sqlite_memory(url)
        return Database(create_engine(settings), settings.retention, sqlite_threads=threads)
    general, hot = pool_sizes(settings.db_pool_size)
    engine = create_engine(settings, pool_size=general)
    return Database(engine, settings.retention, await HotPool.open(url, hot))
