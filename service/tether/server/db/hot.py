"""PostgreSQL: the hot statements as plain SQL on an asyncpg pool.

GetSession, RecordActivity, FindOrCreate's lookup and CreateSession run on
every chat message. Through SQLAlchemy each costs more CPU in the server than
the statement costs PostgreSQL (engine connection, execution context, result
processing: about 70 µs more per call than `pool.acquire()` + `fetchrow()`,
measured on this machine), so these few run here, on asyncpg's public API:
prepared and cached per connection by asyncpg, JSON decoded by the codecs set
on each new connection. Everything else stays on SQLAlchemy.

Each SQL text lives beside its SQLAlchemy twin in the repository module that
uses it; `tests/test_hot_statements.py` checks that both return the same row.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from tether.server import errors

T = TypeVar("T")

# asyncpg's own connect timeout (seconds): a blackholed host fails instead of hanging.
CONNECT_TIMEOUT = 10
# What asyncpg raises when the connection itself failed or was closed under the
# statement (a statement that fails raises a PostgresError with its SQLSTATE, which
# the call guard maps).
_CONNECTION_FAILURES = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError)


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy `postgresql+asyncpg://` URL as the libpq-style DSN asyncpg takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _set_codecs(connection: asyncpg.Connection[Any]) -> None:
    """JSON in and out as Python values, as SQLAlchemy's JSON type gives them."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _no_reset(connection: asyncpg.Connection[Any]) -> None:
    """Nothing to reset on release: these statements leave no session state behind
    (no transaction, LISTEN, advisory lock or SET). asyncpg's default reset is a round
    trip per release."""


class HotPool:
    """A small asyncpg pool that runs one autocommit statement per checkout."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, size: int) -> HotPool:
        """Connections open on first use, so a server can start while the database is down."""
        pool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=0,
            max_size=size,
            init=_set_codecs,
            reset=_no_reset,
            timeout=CONNECT_TIMEOUT,
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def expire_connections(self) -> None:
        """Replace every connection on its next use (after an outage they are likely dead)."""
        await self._pool.expire_connections()

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Every row of `sql` run with `args` (failures as `fetchrow`'s)."""
        records = await self._run(lambda connection: connection.fetch(sql, *args))
        return [dict(record.items()) for record in records]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        """The first row of `sql` run with `args`, or None. A connection that failed is
        UNAVAILABLE (asyncpg's pool replaces it); a failed statement raises as it is.

        A cancelled call (deadline, client gone) needs nothing more: asyncpg sends
        PostgreSQL a cancel request and the connection's next statement waits for it
        (tests/test_lifecycle.py checks this)."""
        record = await self._run(lambda connection: connection.fetchrow(sql, *args))
        return None if record is None else dict(record.items())

    async def _run(self, statement: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
        """`statement` on a pooled connection, its connection failures as UNAVAILABLE."""
        try:
            connection = await self._pool.acquire()
        except Exception as exc:  # no connection to be had, whatever the server says why
            raise errors.unavailable() from exc
        try:
            return await statement(connection)
        except _CONNECTION_FAILURES as exc:
            raise errors.unavailable() from exc
        finally:
            await self._pool.release(connection)
