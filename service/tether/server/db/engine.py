"""Async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQLite: every connection gets WAL, `foreign_keys=ON`, `synchronous=NORMAL` and a
busy timeout. The driver's own BEGIN handling is switched off and every
transaction starts with `BEGIN IMMEDIATE` (SQLAlchemy's documented recipe for
pysqlite/aiosqlite): a transaction takes the write lock up front, so concurrent
writers queue on `busy_timeout` instead of deadlocking on a read-to-write lock
upgrade and failing at once with "database is locked". A read-only transaction
may opt out with the `READ_ONLY` execution option (`BEGIN DEFERRED`: runs
beside writers under WAL); it must not write.

PostgreSQL: a fixed pool of `db_pool_size` connections (no overflow, so
replicas x pool size is the connection budget), no pre-ping (no round trip per
checkout; a dead connection surfaces as an error that maps to UNAVAILABLE and
invalidates the pool), asyncpg's prepared-statement cache left on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from tether.server.config import Settings, is_sqlite_memory, normalize_database_url

SQLITE_BUSY_TIMEOUT_MS = 5000
# Execution option for a read-only transaction on SQLite: BEGIN DEFERRED.
READ_ONLY = "tether_read_only"
DEFAULT_POOL_SIZE = 10
# asyncpg's own connect timeout (seconds): a blackholed host fails instead of hanging.
PG_CONNECT_TIMEOUT = 10
# A health ping slower than this counts as "database unreachable".
PING_TIMEOUT = 2.0


def create_engine(source: Settings | str, *, pool_size: int | None = None) -> AsyncEngine:
    """An engine for `source` (settings or a database URL); `pool_size` overrides the setting."""
    if isinstance(source, Settings):
        url, size = source.database_url, source.db_pool_size
    else:
        url, size = normalize_database_url(source), DEFAULT_POOL_SIZE
    size = pool_size or size
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, size)
    if backend == "postgresql":
        return create_async_engine(
            url,
            pool_size=size,
            max_overflow=0,
            pool_pre_ping=False,
            connect_args={"timeout": PG_CONNECT_TIMEOUT},
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


def _sqlite_engine(url: str, pool_size: int) -> AsyncEngine:
    database = make_url(url).database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = Path(database).parent
        if not directory.is_dir():
            raise ValueError(
                f"SQLite database directory {str(directory)!r} does not exist "
                "(sqlite:///relative/path, sqlite:////absolute/path)"
            )
    if is_sqlite_memory(url):
        # The database lives as long as its one connection: keep exactly one in the pool, and
        # calls queue for it (SQLAlchemy's StaticPool would hand it to concurrent transactions).
        pool_size = 1
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool, pool_size=pool_size, max_overflow=0)
    event.listen(engine.sync_engine, "connect", sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", sqlite_on_begin)
    return engine


def sqlite_on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # Take BEGIN away from the driver; sqlite_on_begin emits it instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that switching to WAL also waits out another process's lock.
        for pragma in (
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def sqlite_on_begin(conn: Connection) -> None:
    deferred = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE")


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers `SELECT 1` within `PING_TIMEOUT` seconds."""
    try:
        async with asyncio.timeout(PING_TIMEOUT), engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            await conn.execute(text("SELECT 1"))
    except Exception:  # whatever the failure, the database is not answering
        return False
    return True
