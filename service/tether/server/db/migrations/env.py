"""Alembic environment: runs migrations on a connection handed over in
`config.attributes["connection"]` (what `tether.server.db.migrate` does, holding
its lock), or else on a fresh async engine for `sqlalchemy.url` (the plain
`alembic` command line, for development). Online mode only.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tether.server.db.engine import create_engine
from tether.server.db.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    # Both databases have transactional DDL (SQLite too, as the engine emits BEGIN itself).
    context.configure(
        connection=connection, target_metadata=metadata, compare_type=True, transactional_ddl=True
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_new_engine(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    asyncio.run(_run_on_new_engine(url))


_main()
