"""Reading a test server's database directly, for what the API does not show (what a
request id keeps)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import psycopg

from tests.support.databases import libpq_url


def claims(database_url: str, namespace: str) -> list[tuple[str, str, str]]:
    """(request_id, method, resource) of every request id held for `namespace`."""
    query = "SELECT request_id, method, resource FROM idempotency WHERE namespace = {} ORDER BY create_time"
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with closing(sqlite3.connect(path)) as conn:
            return [tuple(row) for row in conn.execute(query.format("?"), (namespace,))]
    with psycopg.connect(libpq_url(database_url)) as conn:
        return [tuple(row) for row in conn.execute(query.format("%s"), (namespace,))]


def columns(database_url: str, table: str) -> list[str]:
    """The column names of `table`."""
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with closing(sqlite3.connect(path)) as conn:
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    with psycopg.connect(libpq_url(database_url)) as conn:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        rows = conn.execute(query + " ORDER BY ordinal_position", (table,))
        return [str(row[0]) for row in rows]
