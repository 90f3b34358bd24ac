"""Apply Alembic migrations programmatically (no alembic.ini), and check for drift.

    await migrate(url)            # inside an event loop (what `tether serve` does)
    migrate_sync(url)             # anywhere else (what `tether migrate` does)
    assert schema_drift(url) == []

Safe when several servers start at once: on PostgreSQL the upgrade runs in one
transaction that first takes a transaction-scoped advisory lock, so the others
wait, then find the database at head and do nothing. On SQLite the
transaction starts with BEGIN IMMEDIATE (see `engine`), which serializes the
same way. A failed upgrade rolls back as a whole on both (transactional DDL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.db import schema
from tether.server.db.engine import create_engine
from tether.server.log import get_logger

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: b"tether\x00\x01" as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"tether\x00\x01", "big", signed=True)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations; `url` for the `alembic` CLI path of env.py."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, revision: str) -> str | None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def migrate(url: str, revision: str = "head", *, engine: AsyncEngine | None = None) -> None:
    """Upgrade the database at `url` to `revision` (default: the newest), through `engine` if
    given (an in-memory SQLite database exists only in its engine), else a short-lived one."""
    own = engine is None
    engine = create_engine(url, pool_size=1) if engine is None else engine
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            current = await conn.run_sync(_upgrade, revision)
            await conn.commit()
    finally:
        if own:
            await engine.dispose()
    get_logger().info("database_migrated", revision=current)


def migrate_sync(url: str, revision: str = "head") -> None:
    """`migrate` for callers outside an event loop."""
    asyncio.run(migrate(url, revision))


def _compare(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    # Column-level changes come grouped in lists; flatten them.
    diffs: list[Any] = []
    for item in compare_metadata(context, schema.metadata):
        diffs.extend(item if isinstance(item, list) else [item])
    return diffs


async def schema_drift_async(url: str) -> list[Any]:
    """Differences between the database at `url` and `schema.metadata`; empty when they match."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_compare)
    finally:
        await engine.dispose()


def schema_drift(url: str) -> list[Any]:
    """`schema_drift_async` for callers outside an event loop."""
    return asyncio.run(schema_drift_async(url))
