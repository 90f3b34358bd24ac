"""What every repository module shares: the engine, dialect-aware inserts,
transactions and the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Insert, Select, Table, Update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from tether.server import errors
from tether.server.db.engine import READ_ONLY

Row = Mapping[Any, Any]

# The connection of the transaction this asyncio task is in, if any.
_ambient: ContextVar[AsyncConnection | None] = ContextVar("tether_transaction", default=None)


def utcnow() -> datetime:
    return datetime.now(UTC)


# What asyncpg raises when the connection itself failed (besides any error once
# the connection is closed).
_CONNECTION_FAILURES = (asyncpg.PostgresConnectionError, ConnectionError, OSError, TimeoutError)


class Prepared:
    """A Core statement compiled once, for the hot paths (GetSession,
    RecordActivity, FindOrCreateSession's lookup, CreateSession).

    On PostgreSQL `Database.first` runs its SQL on the pool's raw asyncpg
    connection (asyncpg prepares and caches it per connection): SQLAlchemy's
    per-execution work (connection wrapper, execution context, result
    processing) costs more CPU than the statement itself (about 310 against
    110 µs per GetSession; README, "Performance"). Parameters pass through the
    same bind processors SQLAlchemy would apply (JSON, UTC datetimes); rows come
    back with JSON decoded by the codecs SQLAlchemy's dialect installs on each
    connection. On SQLite, and inside a transaction, the statement runs through
    SQLAlchemy as any other.
    """

    def __init__(self, statement: Select[Any] | Update | Insert) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
        self.sql = str(compiled)
        # (name, literal value, processor) per $n: named parameters come from the
        # call, literal ones (`version + 1`) keep their compiled value.
        self._order: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or []:
            process = compiled._bind_processors.get(name)
            if process is not None and not callable(process):
                raise TypeError(f"{name}: tuple parameters are not supported")
            self._order.append((name, compiled.binds[name].value, process))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        args = []
        for name, literal, process in self._order:
            value = params.get(name, literal)
            args.append(value if process is None else process(value))
        return args


class Database:
    """The data layer's handle: one engine, SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine, retention: timedelta) -> None:
        self.engine = engine
        self.retention = retention
        self.is_postgresql = engine.dialect.name == "postgresql"
        # What the pool raises, unwrapped, when it cannot connect (SQLAlchemy's
        # driver adapter error; `engine.connect()` would wrap it in DBAPIError).
        self._connect_errors: tuple[type[BaseException], ...] = (
            DBAPIError,
            OSError,
            engine.dialect.loaded_dbapi.Error,
        )

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ON CONFLICT on this dialect."""
        return postgresql.insert(table) if self.is_postgresql else sqlite.insert(table)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on any error.

        Inside another transaction of this task it becomes a SAVEPOINT of that
        one, so a handler can wrap a data-layer call (which opens its own) in a
        larger atomic unit, as request ids do.
        """
        outer = _ambient.get()
        if outer is not None:
            async with outer.begin_nested():
                yield outer
            return
        async with self._connection() as conn:
            token = _ambient.set(conn)
            try:
                yield conn
            finally:
                _ambient.reset(token)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """For reads that need no snapshot across statements. PostgreSQL: autocommit
        (no BEGIN/COMMIT round trips); SQLite: a deferred transaction that runs
        beside writers instead of queueing for the write lock. It must not write.
        Inside a transaction of this task, it reads in that transaction."""
        outer = _ambient.get()
        if outer is not None:
            yield outer
            return
        async with self._connection(autocommit=True, sqlite_read_only=True) as conn:
            yield conn

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """For a write that is one statement (atomic by itself): on PostgreSQL it
        runs in autocommit mode, saving the BEGIN and COMMIT round trips. Inside
        a transaction of this task, it is a SAVEPOINT of that one."""
        if _ambient.get() is not None:
            async with self.transaction() as conn:
                yield conn
            return
        async with self._connection(autocommit=True) as conn:
            yield conn

    async def first(
        self, prepared: Prepared, params: Mapping[str, Any], *, write: bool = False
    ) -> Row | None:
        """The first row of a one-statement read (or, with `write`, a write that is
        atomic by itself), in autocommit mode; None when there is none."""
        if self.is_postgresql and _ambient.get() is None:
            return await self._first_on_driver(prepared.sql, prepared.args(params))
        async with self.statement() if write else self.read() as conn:
            row: Row | None = (await conn.execute(prepared.statement, params)).mappings().first()
        return row

    async def _first_on_driver(self, sql: str, args: list[Any]) -> Row | None:
        """Run `sql` on a pooled connection's asyncpg connection (no transaction:
        autocommit). A broken connection is discarded, not reused."""
        try:
            fairy: PoolProxiedConnection = await self.engine.raw_connection()
        except self._connect_errors as exc:
            raise errors.unavailable() from exc
        driver: asyncpg.Connection[Any] = fairy.driver_connection
        try:
            record: Row | None = await driver.fetchrow(sql, *args)
        except Exception as exc:
            if not (isinstance(exc, _CONNECTION_FAILURES) or driver.is_closed()):
                raise  # the statement failed (or was called wrongly); the connection is fine
            await greenlet_spawn(fairy.invalidate)
            raise errors.unavailable() from exc
        finally:
            # A cancelled call (deadline, client gone) needs nothing more: asyncpg
            # sends PostgreSQL a cancel request and the connection's next statement
            # waits for it (tests/test_lifecycle.py checks this). Check-in awaits
            # nothing (no transaction to roll back), so it cannot be interrupted.
            await greenlet_spawn(fairy.close)
        return record

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
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
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
