"""What every repository module shares: the engine, dialect-aware inserts,
transactions and the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server import errors
from tether.server.db.engine import READ_ONLY

Row = Mapping[Any, Any]

# The connection of the transaction this asyncio task is in, if any.
_ambient: ContextVar[AsyncConnection | None] = ContextVar("tether_transaction", default=None)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """The data layer's handle: one engine, SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine, retention: timedelta) -> None:
        self.engine = engine
        self.retention = retention
        self.is_postgresql = engine.dialect.name == "postgresql"

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

    @asynccontextmanager
    async def _connection(
        self, *, autocommit: bool = False, sqlite_read_only: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        async with AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(self.engine.connect())
            except (DBAPIError, OSError) as exc:
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
