"""The bench database: create (and drop) a fresh one, migrate it, seed it with bulk SQL,
and count statements (pg_stat_statements, when available)."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tether.server.db.migrate import migrate_sync
from tether.server.query import page_request
from tether.server.query.ordering import SESSION_ORDER_FIELDS, parse_order_by
from tether.server.query.pagination import next_page

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
NAMESPACE = "bench"
# ListEvents' namespace: its own agents, users and event sessions, so that it holds just
# the events seeded into it (the cells that append do so in NAMESPACE).
EVENTS_NAMESPACE = "bench-events"
AGENTS = 100
USERS = 1000
# Sessions e-0 .. e-<n-1> for the event cells: DIRECT, with their agent and user as
# members (as CreateSession makes them), so either may author an event. NAMESPACE has
# EVENT_SESSIONS of them (what AppendEvent appends to), EVENTS_NAMESPACE as many as its
# events take.
EVENT_SESSIONS = 1000
# Events seeded per session of EVENTS_NAMESPACE: a "last 20" page is always full.
EVENTS_PER_SESSION = 100
OWNER, MEMBER = 1, 2  # Member.Role


def plain_dsn(url: str) -> str:
    """`postgresql+asyncpg://...` or `postgres://...` -> `postgresql://...` (what asyncpg takes)."""
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql://{rest}"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_fresh(server_url: str = DEFAULT_SERVER) -> str:
    """Create `tether_bench_<hex>` on the server and return its URL."""
    name = f"tether_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop(url: str, server_url: str = DEFAULT_SERVER) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(url: str) -> None:
    migrate_sync(url)


async def seed_base(conn: Any, namespace: str = NAMESPACE) -> None:
    """The namespace, AGENTS agents and USERS users (each with its id as its external id,
    for the AppendEvent cells' `author_key`)."""
    await conn.execute(
        "INSERT INTO namespaces (namespace, uid, display_name, labels, create_time, update_time)"
        " VALUES ($1::varchar, gen_random_uuid()::text, $1::varchar, '{}'::jsonb, now(), now())",
        namespace,
    )
    for prefix, kind, count in (("agent", 2, AGENTS), ("user", 1, USERS)):
        await conn.execute(
            "INSERT INTO participants"
            " (namespace, participant, uid, kind, external_id, labels, create_time, update_time)"
            " SELECT $1, $2 || '-' || i, gen_random_uuid()::text, $3, $2 || '-' || i, '{}'::jsonb,"
            " now(), now() FROM generate_series(0, $4 - 1) AS i",
            namespace,
            prefix,
            kind,
            count,
        )


async def seed_sessions(conn: Any, start: int, stop: int) -> None:
    """Sessions s-<start>..s-<stop - 1>: DIRECT, conversation c-<i> of agent-<i % AGENTS> on
    `web`, last activity spread over 30 days; then ANALYZE."""
    await conn.execute(
        'INSERT INTO sessions (namespace, session, uid, kind, agent, "user", channel,'
        " external_conversation_id, labels, create_time, update_time, last_activity_time)"
        " SELECT $1, 's-' || i, gen_random_uuid()::text, 1, 'agent-' || (i % $4), 'user-' || (i % $5),"
        " 'web', 'c-' || i, '{}'::jsonb, t, t, t"
        " FROM (SELECT i, now() - random() * interval '30 days' AS t"
        "       FROM generate_series($2::int, $3::int - 1) AS i) AS g",
        NAMESPACE,
        start,
        stop,
        AGENTS,
        USERS,
    )
    await conn.execute("ANALYZE")


async def seed_event_sessions(conn: Any, namespace: str, start: int, stop: int) -> None:
    """Sessions e-<start>..e-<stop - 1> of `namespace`: DIRECT, conversation e-<i> of agent-<i % AGENTS> on
    `web` with user-<i % USERS>, both members (the agent OWNER, the user MEMBER)."""
    async with conn.transaction():
        await conn.execute(
            'INSERT INTO sessions (namespace, session, uid, kind, agent, "user", channel,'
            " external_conversation_id, labels, create_time, update_time, last_activity_time, member_count)"
            " SELECT $1, 'e-' || i, gen_random_uuid()::text, 1, 'agent-' || (i % $4), 'user-' || (i % $5),"
            " 'web', 'e-' || i, '{}'::jsonb, now(), now(), now(), 2"
            " FROM generate_series($2::int, $3::int - 1) AS i",
            namespace,
            start,
            stop,
            AGENTS,
            USERS,
        )
        await conn.execute(
            "INSERT INTO members (namespace, session, participant, role, join_time, update_time)"
            " SELECT $1, 'e-' || i, m.participant, m.role, now(), now()"
            " FROM generate_series($2::int, $3::int - 1) AS i CROSS JOIN LATERAL"
            " (VALUES ('agent-' || (i % $4), $6::smallint), ('user-' || (i % $5), $7::smallint))"
            " AS m (participant, role)",
            namespace,
            start,
            stop,
            AGENTS,
            USERS,
            OWNER,
            MEMBER,
        )


async def seed_events(
    conn: Any, namespace: str, start: int, stop: int, per_session: int = EVENTS_PER_SESSION
) -> None:
    """`per_session` events in each of e-<start>..e-<stop - 1> of `namespace`, after the ones it has (its
    sequences go on from its last_sequence), written into `events` with one INSERT ...
    SELECT; then the sessions' last_sequence, event_count and last_activity_time as an
    append would have left them, and `settle`. Small chat messages, the user's and the
    agent's in turn; rows of the sessions interleaved (the n-th event of every session,
    then the next), as a live service writes them, so that one session's events lie on
    many pages, not on one.

    The rows are consistent by construction (the sessions and authors exist), so where the
    role may (a superuser: the throwaway cluster's `postgres`) the foreign-key triggers are
    skipped for this transaction (`session_replication_role = replica`): the two checks
    per row made the seeding several times slower."""
    async with conn.transaction():
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():  # a savepoint: a refused SET leaves the rest alone
                await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "INSERT INTO events (namespace, session, sequence, event, uid, author, invocation_id, branch,"
            " labels, content, state_delta, event_time, create_time)"
            " SELECT s.namespace, s.session, s.last_sequence + g.n, gen_random_uuid()::text,"
            " gen_random_uuid()::text, CASE WHEN g.n % 2 = 1 THEN s.\"user\" ELSE s.agent END, '', '',"
            " '{}'::jsonb, jsonb_build_object('role', CASE WHEN g.n % 2 = 1 THEN 'user' ELSE 'model' END,"
            " 'parts', jsonb_build_array(jsonb_build_object('text',"
            " 'message ' || g.n || ' of the conversation in session ' || s.session))), NULL, g.t, g.t"
            " FROM (SELECT n, i, now() - ($4::int - n) * interval '1 second' AS t"
            "       FROM generate_series(1, $4::int) AS n"
            "       CROSS JOIN generate_series($2::int, $3::int - 1) AS i ORDER BY n, i) AS g"
            " JOIN sessions s ON s.namespace = $1 AND s.session = 'e-' || g.i",
            namespace,
            start,
            stop,
            per_session,
        )
        await conn.execute(
            "UPDATE sessions SET last_sequence = last_sequence + $4, event_count = event_count + $4,"
            " last_activity_time = greatest(last_activity_time, now())"
            " WHERE namespace = $1"
            " AND session IN (SELECT 'e-' || i FROM generate_series($2::int, $3::int - 1) AS i)",
            namespace,
            start,
            stop,
            per_session,
        )
    await settle(conn, "events", "sessions")


async def settle(conn: Any, *tables: str) -> None:
    """VACUUM (ANALYZE) `tables`, then a CHECKPOINT where the role may: the next cells then
    read the tables as a live service has them (hint bits set, visibility map, statistics,
    dirty pages written) instead of competing with the autovacuum, the hint-bit writes and
    the checkpoint that a bulk load of a million rows sets off."""
    for table in tables:
        await conn.execute(f"VACUUM (ANALYZE) {table}")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


async def count_events(conn: Any, namespace: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events WHERE namespace = $1", namespace))


async def deep_page_token(conn: Any, fraction: float) -> str:
    """A ListSessions page token (default order, no filter) whose page starts `fraction` deep.

    Tokens carry the last row's ordering key plus a fingerprint of the query, so the token
    is built with the server's own pagination code from the row at that offset."""
    total = await conn.fetchval(
        "SELECT count(*) FROM sessions WHERE namespace = $1 AND delete_time IS NULL", NAMESPACE
    )
    row = await conn.fetchrow(
        "SELECT last_activity_time, uid FROM sessions WHERE namespace = $1 AND delete_time IS NULL"
        " ORDER BY last_activity_time DESC, uid DESC OFFSET $2 LIMIT 1",
        NAMESPACE,
        int(total * fraction),
    )
    ordering = parse_order_by("", SESSION_ORDER_FIELDS)
    page = page_request(
        page_size=1, page_token="", ordering=ordering, binding=(f"namespaces/{NAMESPACE}", "", "False")
    )
    cursor = {"last_activity_time": row["last_activity_time"].astimezone(UTC), "uid": row["uid"]}
    _, token = next_page([cursor, cursor], page)
    return token


# What the harness itself runs on its own connection (the counting, the CPU look-ups):
# never counted as a statement of the server under test.
OWN_STATEMENTS = ("pg_stat_statements", "pg_stat_activity")


NESTED = "(nested) "


@dataclass(frozen=True, slots=True)
class Statements:
    """Statements run in the bench database between two snapshots, by normalized text.

    `total` counts the top-level statements: those a client (the server under test) sent.
    With `pg_stat_statements.track=all` the statements that those run inside PostgreSQL
    are listed too, marked "(nested) " and counted apart in `nested`: mostly the foreign
    key checks (`SELECT 1 FROM ONLY ... FOR KEY SHARE`) that every INSERT into a table
    with foreign keys runs, the floor's INSERT as well."""

    total: int
    nested: int
    by_query: dict[str, int]

    def per_op(self, ops: int, at_least: float = 0.005) -> list[tuple[str, float]]:
        """(query, calls per op), most frequent first, leaving out the rare ones."""
        ops = max(ops, 1)
        rows = [(query, calls / ops) for query, calls in self.by_query.items() if calls / ops >= at_least]
        return sorted(rows, key=lambda row: (-row[1], row[0]))


class Counters:
    """Statements of the bench database from pg_stat_statements, when its library is
    preloaded (shared_preload_libraries; the harness never restarts a server to add it:
    the throwaway cluster it starts by default has it)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements_available = False
        self.why_not = ""
        self.settings = ""

    async def setup(self) -> None:
        try:
            await self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await self._conn.fetchval("SELECT count(*) FROM pg_stat_statements")
            self.statements_available = True
        except asyncpg.PostgresError as exc:
            self.why_not = str(exc).splitlines()[0]
            return
        track = await self._conn.fetchval("SHOW pg_stat_statements.track")
        utility = await self._conn.fetchval("SHOW pg_stat_statements.track_utility")
        self.settings = f"pg_stat_statements.track={track}, track_utility={utility}"

    async def backends(self) -> list[int]:
        """The other backends of the bench database (the servers' pooled connections)."""
        pids = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [int(row["pid"]) for row in pids]

    async def snapshot(self) -> dict[str, int] | None:
        """Calls so far of each statement of the bench database, by normalized text (nested
        ones marked), without the harness's own (None without pg_stat_statements).

        pg_stat_statements counts a statement when it ends, so this query is never in its
        own snapshot but would be in the next one: it and the others of OWN_STATEMENTS are
        left out by their text, so a difference of two snapshots is the servers' alone."""
        if not self.statements_available:
            return None
        try:
            rows = await self._conn.fetch(
                "SELECT query, toplevel, sum(calls) AS calls FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " GROUP BY query, toplevel"
            )
        except asyncpg.UndefinedColumnError:  # before PostgreSQL 14: no `toplevel`
            rows = await self._conn.fetch(
                "SELECT query, true AS toplevel, sum(calls) AS calls FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " GROUP BY query"
            )
        counts: dict[str, int] = {}
        for row in rows:
            query = " ".join(str(row["query"]).split())
            if any(own in query for own in OWN_STATEMENTS):
                continue
            key = query if row["toplevel"] else f"{NESTED}{query}"
            counts[key] = counts.get(key, 0) + int(row["calls"])
        return counts

    @staticmethod
    def between(before: dict[str, int] | None, after: dict[str, int] | None) -> Statements | None:
        if before is None or after is None:
            return None
        by_query = {q: n - before.get(q, 0) for q, n in after.items() if n - before.get(q, 0) > 0}
        nested = sum(n for q, n in by_query.items() if q.startswith(NESTED))
        return Statements(total=sum(by_query.values()) - nested, nested=nested, by_query=by_query)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
