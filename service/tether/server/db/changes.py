"""The change log that WatchSessions reads; migration 0005's triggers write it.

A watcher reads pages of one namespace's changes after its position, in revision
order, and only below the *frontier*: the revision under which the log is final.

- PostgreSQL: `pg_snapshot_xmin(pg_current_snapshot()) << 20`. A revision is its
  transaction's id `<< 20` plus a counter, and every transaction with an id below the
  oldest one still running has finished (committed and visible, or rolled back), while
  a new one can only get a larger id: no change can ever appear below the frontier.
- SQLite: one past the largest revision (writers take turns and number their changes in
  commit order, so everything a reader sees is final).

Each page is read in one snapshot (one statement on PostgreSQL, one read transaction
on SQLite) together with the namespace's `compacted_revision`, so a resume point that
compaction overtook is reported (`OutOfRangeError`) rather than silently skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    bindparam,
    column,
    delete,
    func,
    literal_column,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.sql import visitors

from tether.server import errors
from tether.server.db.base import Database, Row, utcnow
from tether.server.db.schema import change_clock, changes, events, members, namespaces, participants, sessions

# How many changes one page reads at most (whatever a filter keeps of them).
PAGE_SIZE = 500
# Bits of a PostgreSQL revision below the transaction id (migration 0005).
XID_SHIFT = 20

PURGED = 5
HIGHEST = 2**63 - 1


@dataclass(frozen=True)
class Change:
    """One change: the session as it was (columns of `sessions`), the member row (with
    `participant_kind` and `participant_uid`) or the event row (the whole event while it
    exists; only its keys once deleted)."""

    revision: int
    type: int
    change_time: datetime
    session: Row
    member: Row | None
    event: Row | None


@dataclass(frozen=True)
class Page:
    changes: list[Change]
    # The position after this page: every change up to it was read (some left out by
    # the filter), so the next page starts after it.
    position: int
    # Whether more changes are ready right now (the page was full).
    more: bool


class OutOfRangeError(Exception):
    """The changes after `after` are no longer all held."""

    def __init__(self, after: int, compacted: int, oldest: int) -> None:
        super().__init__(after, compacted, oldest)
        self.after = after
        self.compacted = compacted
        self.oldest = oldest


def _frontier_sql(dialect: str) -> Any:
    if dialect == "postgresql":
        return literal_column(f"(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {XID_SHIFT})")
    return (select(change_clock.c.revision).scalar_subquery() + 1).self_group()


# --- the session, member and event as of a change -------------------------------------------


def _as_of(dialect: str) -> tuple[Any, dict[str, ColumnElement[Any]], dict[str, ColumnElement[Any]]]:
    """The FROM clause of a page and the session and member columns as they were at each
    change: PostgreSQL turns the JSON snapshots back into rows with jsonb_populate_record,
    SQLite extracts each column from them."""
    if dialect == "postgresql":
        snap = (
            func.jsonb_populate_record(literal_column("NULL::sessions"), changes.c.snapshot)
            .table_valued(*[column(c.name, c.type) for c in sessions.c], name="snap")
            .lateral()
        )
        mem = (
            func.jsonb_populate_record(literal_column("NULL::members"), changes.c.member)
            .table_valued(*[column(c.name, c.type) for c in members.c], name="mem")
            .lateral()
        )
        source = changes.join(snap, true()).outerjoin(mem, true())
        return (
            source,
            {c.name: snap.c[c.name] for c in sessions.c},
            {c.name: mem.c[c.name] for c in members.c},
        )

    def extract(document: Any, name: str, type_: Any) -> ColumnElement[Any]:
        return type_coerce(func.json_extract(document, f"$.{name}"), type_)

    return (
        changes,
        {c.name: extract(changes.c.snapshot, c.name, c.type) for c in sessions.c},
        {c.name: extract(changes.c.member, c.name, c.type) for c in members.c},
    )


def _retarget(where: ColumnElement[bool], columns: dict[str, ColumnElement[Any]]) -> ColumnElement[bool]:
    """A ListSessions filter (written against the `sessions` table) applied to the
    session as of each change instead."""

    def replace(element: Any, **_: Any) -> Any:
        if getattr(element, "table", None) is sessions and element.name in columns:
            return columns[element.name]
        return None

    result: ColumnElement[bool] = visitors.replacement_traverse(where, {}, replace)
    return result


def _page_select(
    dialect: str,
    namespace: str,
    after: int | ColumnElement[Any],
    through: int | ColumnElement[Any],
    where: ColumnElement[bool] | None,
    with_state: bool,
) -> Any:
    source, session_columns, member_columns = _as_of(dialect)
    picked = [(name, col) for name, col in session_columns.items() if with_state or name != "session_state"]
    event_columns = [c.name for c in events.c if c.name not in ("namespace", "session", "sequence", "event")]
    author = and_(
        participants.c.namespace == changes.c.namespace, participants.c.participant == changes.c.participant
    )
    event = and_(
        events.c.namespace == changes.c.namespace,
        events.c.session == changes.c.session,
        events.c.sequence == changes.c.sequence,
        events.c.event == changes.c.event,  # either unique index is a whole-key match
    )
    if dialect == "postgresql":
        # LATERAL: one primary-key probe per change. A plain outer join let the planner hash
        # every event of the namespace for each page (22 ms a page with 50,000 events,
        # against 0.5 ms), which is what held the stream back under load.
        # (LIMIT 1 keeps the planner from flattening them back into that join.)
        who: Any = select(participants.c.kind, participants.c.uid).where(author).limit(1).lateral("who")
        what: Any = select(*[events.c[name] for name in event_columns]).where(event).limit(1).lateral("what")
        joined = source.outerjoin(who, true()).outerjoin(what, true())
    else:
        who, what = participants, events
        joined = source.outerjoin(participants, author).outerjoin(events, event)
    stmt = (
        select(
            changes.c.revision,
            changes.c.type,
            changes.c.change_time,
            changes.c.event.label("c_event"),
            changes.c.sequence.label("c_sequence"),
            changes.c.participant.label("c_participant"),
            *[col.label(f"s_{name}") for name, col in picked],
            *[col.label(f"m_{name}") for name, col in member_columns.items()],
            who.c.kind.label("m_participant_kind"),
            who.c.uid.label("m_participant_uid"),
            what.c.uid.label("e_present"),
            *[what.c[name].label(f"e_{name}") for name in event_columns],
        )
        .select_from(joined)
        .where(changes.c.namespace == namespace, changes.c.revision > after, changes.c.revision <= through)
        .order_by(changes.c.revision)
    )
    if where is not None:
        stmt = stmt.where(_retarget(where, session_columns))
    return stmt


@functools.lru_cache(maxsize=64)
def _split(keys: tuple[str, ...], prefix: str) -> tuple[tuple[str, str], ...]:
    """(column label, column name) of the labels that start with `prefix` (a page's rows
    all have the same labels: worked out once)."""
    return tuple((key, key[len(prefix) :]) for key in keys if key.startswith(prefix))


def _prefixed(row: Row, prefix: str) -> dict[str, Any]:
    return {name: row[key] for key, name in _split(tuple(row.keys()), prefix)}


def _change(row: Row, namespace: str, with_state: bool) -> Change:
    session = _prefixed(row, "s_")
    if not with_state:
        session["session_state"] = None
    member = None
    if row["c_participant"] is not None:
        member = _prefixed(row, "m_")
        member["participant"] = row["c_participant"]
        member["participant_kind"] = member["participant_kind"] or 0
        member["participant_uid"] = member["participant_uid"] or ""
    event = None
    if row["c_event"] is not None:
        keys = {
            "namespace": namespace,
            "session": session["session"],
            "event": row["c_event"],
            "sequence": row["c_sequence"],
        }
        event = {**_prefixed(row, "e_"), **keys} if row["e_present"] is not None else keys
    return Change(row["revision"], row["type"], row["change_time"], session, member, event)


# --- reading ----------------------------------------------------------------------------------


def _check_held(conn: Connection, namespace: str, after: int) -> int:
    """The frontier, once the changes after `after` are known to be all held."""
    dialect = conn.dialect.name
    meta = conn.execute(
        select(namespaces.c.compacted_revision, _frontier_sql(dialect).label("frontier")).where(
            namespaces.c.namespace == namespace
        )
    ).one_or_none()
    if meta is None:
        raise errors.not_found(errors.Resource.NAMESPACE, f"namespaces/{namespace}")
    if after < meta.compacted_revision:
        oldest = conn.execute(
            select(func.min(changes.c.revision)).where(changes.c.namespace == namespace)
        ).scalar_one_or_none()
        raise OutOfRangeError(after, meta.compacted_revision, oldest or meta.compacted_revision)
    frontier: int = meta.frontier
    return frontier


def _read_in(
    conn: Connection,
    namespace: str,
    after: int,
    where: ColumnElement[bool] | None,
    with_state: bool,
    limit: int,
) -> Page:
    frontier = _check_held(conn, namespace, after)
    window = (
        select(changes.c.revision)
        .where(changes.c.namespace == namespace, changes.c.revision > after, changes.c.revision < frontier)
        .order_by(changes.c.revision)
        .limit(limit)
        .subquery()
    )
    last, count = conn.execute(select(func.max(window.c.revision), func.count())).one()
    if not count:
        return Page([], max(after, frontier - 1), more=False)
    rows = conn.execute(_page_select(conn.dialect.name, namespace, after, last, where, with_state)).mappings()
    found = [_change(row, namespace, with_state) for row in rows]
    full = count >= limit
    return Page(found, last if full else max(last, frontier - 1), more=full)


def _page_in_one_statement(
    namespace: str, where: ColumnElement[bool] | None, with_state: bool, limit: int
) -> Any:
    """PostgreSQL: the frontier, the compaction mark, the window after the bound parameter
    `after` and the page in one statement (one snapshot, one round trip): at least one
    row, the page's columns NULL when the window is empty."""
    after = bindparam("after", type_=BigInteger)
    f = select(
        _frontier_sql("postgresql").label("frontier"),
        select(namespaces.c.compacted_revision)
        .where(namespaces.c.namespace == namespace)
        .scalar_subquery()
        .label("compacted"),
    ).cte("f")
    window = (
        select(changes.c.revision)
        .where(
            changes.c.namespace == namespace,
            changes.c.revision > after,
            changes.c.revision < select(f.c.frontier).scalar_subquery(),
        )
        .order_by(changes.c.revision)
        .limit(limit)
        .cte("w")
    )
    bounds = select(func.max(window.c.revision).label("last"), func.count().label("n")).cte("b")
    last = select(bounds.c.last).scalar_subquery()
    page = _page_select("postgresql", namespace, after, last, where, with_state).subquery("page")
    return select(f.c.frontier, f.c.compacted, bounds.c.last, bounds.c.n, page).select_from(
        f.join(bounds, true()).outerjoin(page, true())
    )


class Reader:
    """One watch's pages of one namespace's changes matching a ListSessions filter.

    On PostgreSQL the page statement is built and compiled once, then run on the hot pool
    (plain asyncpg) for every page: a watch reads a page per wake-up, often of a few
    changes, and SQLAlchemy's per-statement work would cost more than the changes."""

    def __init__(
        self,
        db: Database,
        namespace: str,
        where: ColumnElement[bool] | None = None,
        *,
        with_state: bool = False,
        limit: int = PAGE_SIZE,
    ) -> None:
        self._db, self._namespace, self._where = db, namespace, where
        self._with_state, self._limit = with_state, limit
        self._sql = ""
        self._params: list[Any] = []
        self._after_at = -1
        if db.hot is not None:
            self._compile()

    def _compile(self) -> None:
        compiled: Any = _page_in_one_statement(
            self._namespace, self._where, self._with_state, self._limit
        ).compile(dialect=self._db.engine.dialect)
        processors = getattr(compiled, "_bind_processors", {})
        values = compiled.construct_params({"after": 0})
        names_in_order = compiled.positiontup
        self._sql = compiled.string
        self._params = [
            processors[name](values[name]) if name in processors else values[name] for name in names_in_order
        ]
        self._after_at = names_in_order.index("after")

    async def read(self, after: int) -> Page:
        """The next page after revision `after`; OutOfRangeError when some of the changes
        after it were compacted away, NOT_FOUND when the namespace is gone."""
        if self._db.hot is None:
            # SQLite: the frontier, the compaction mark and the page in one read transaction.
            return await self._db.query(
                _read_in, self._namespace, after, self._where, self._with_state, self._limit
            )
        params = list(self._params)
        params[self._after_at] = after
        rows = await self._db.hot.fetch(self._sql, *params)
        head = rows[0]
        if head["compacted"] is None:
            raise errors.not_found(errors.Resource.NAMESPACE, f"namespaces/{self._namespace}")
        if after < head["compacted"]:
            oldest = await self._db.hot.fetchrow(
                "SELECT min(revision) AS oldest FROM changes WHERE namespace = $1", self._namespace
            )
            held = oldest["oldest"] if oldest else None
            raise OutOfRangeError(after, head["compacted"], held or head["compacted"])
        frontier, last, count = head["frontier"], head["last"], head["n"]
        if not count:
            return Page([], max(after, frontier - 1), more=False)
        found = [
            _change(row, self._namespace, self._with_state) for row in rows if row["revision"] is not None
        ]
        full = count >= self._limit
        return Page(found, last if full else max(last, frontier - 1), more=full)


def _head_in(conn: Connection, namespace: str) -> int:
    return _check_held(conn, namespace, HIGHEST) - 1


async def head(db: Database, namespace: str) -> int:
    """ "Now" for a new watch: every change after it is yet to come. No resume point
    a server handed out is beyond it (the frontier never moves back)."""
    return await db.query(_head_in, namespace)


# The hub's scan on PostgreSQL, one statement on the hot pool: for each namespace of $1,
# its newest final revision after $2 (NULL: none) and whether changes wait past the
# frontier; each a probe of the primary key.
_READY_SQL = (
    f"WITH f AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {XID_SHIFT} AS frontier) "
    "SELECT f.frontier, n.ns AS namespace, "
    "(SELECT max(c.revision) FROM changes c WHERE c.namespace = n.ns AND c.revision > $2::bigint "
    "AND c.revision < f.frontier) AS ready, "
    "EXISTS (SELECT 1 FROM changes c WHERE c.namespace = n.ns AND c.revision >= f.frontier) AS waiting "
    "FROM f LEFT JOIN unnest($1::text[]) AS n(ns) ON true"
)


async def ready(
    db: Database, namespaces_: Sequence[str], after: int | None
) -> tuple[int, dict[str, int], bool]:
    """For a process's wake-ups: the new position (frontier - 1), which of `namespaces_`
    have changes final since position `after` (None: none yet, just the position) with
    their newest, and whether changes past the frontier wait for older transactions."""
    if db.hot is None:
        return await db.query(_ready_in, list(namespaces_), after)
    rows = await db.hot.fetch(_READY_SQL, list(namespaces_), HIGHEST if after is None else after)
    frontier = int(rows[0]["frontier"])
    if after is None:
        return frontier - 1, {}, False
    news = {row["namespace"]: int(row["ready"]) for row in rows if row["ready"] is not None}
    waiting = any(row["waiting"] for row in rows)
    return max(after, frontier - 1), news, waiting


def _ready_in(
    conn: Connection, namespaces_: list[str], after: int | None
) -> tuple[int, dict[str, int], bool]:
    frontier: int = conn.execute(select(_frontier_sql(conn.dialect.name))).scalar_one()
    if after is None or not namespaces_:
        return frontier - 1, {}, False
    rows = conn.execute(
        select(changes.c.namespace, func.max(changes.c.revision))
        .where(
            changes.c.namespace.in_(namespaces_), changes.c.revision > after, changes.c.revision < frontier
        )
        .group_by(changes.c.namespace)
    ).all()
    return max(after, frontier - 1), {ns: int(rev) for ns, rev in rows}, False


# --- compaction --------------------------------------------------------------------------------


async def compact(
    db: Database, max_age: timedelta, max_changes: int, now: datetime | None = None, batch_size: int = 5000
) -> int:
    """Drop changes older than `max_age` and beyond the newest `max_changes` of each
    namespace, oldest first, in batches; each batch raises its namespace's
    `compacted_revision` in the same transaction. Returns how many were dropped."""
    cutoff = (now or utcnow()) - max_age
    async with db.read() as conn:
        all_namespaces = list((await conn.execute(select(namespaces.c.namespace))).scalars())
    dropped = 0
    for namespace in all_namespaces:
        while True:
            done = await db.write(_compact_batch_in, namespace, cutoff, max_changes, batch_size)
            dropped += done
            if done < batch_size:
                break
    return dropped


def _compact_batch_in(
    conn: Connection, namespace: str, cutoff: datetime, max_changes: int, batch_size: int
) -> int:
    """Drop up to `batch_size` of `namespace`'s oldest changes that are due."""
    oldest = conn.execute(
        select(changes.c.revision, changes.c.change_time)
        .where(changes.c.namespace == namespace)
        .order_by(changes.c.revision)
        .limit(batch_size)
    ).all()
    if not oldest:
        return 0
    # By count: everything up to the newest max_changes.
    beyond = conn.execute(
        select(changes.c.revision)
        .where(changes.c.namespace == namespace)
        .order_by(changes.c.revision.desc())
        .offset(max_changes)
        .limit(1)
    ).scalar_one_or_none()
    # By age: the oldest changes up to the first that is not old (a prefix: the log keeps
    # everything after a compacted revision).
    aged = None
    for revision, change_time in oldest:
        if change_time >= cutoff:
            break
        aged = revision
    cuts = [cut for cut in (beyond, aged) if cut is not None]
    if not cuts:
        return 0
    last = min(max(cuts), oldest[-1].revision)
    result = conn.execute(delete(changes).where(changes.c.namespace == namespace, changes.c.revision <= last))
    conn.execute(
        update(namespaces)
        .where(namespaces.c.namespace == namespace, namespaces.c.compacted_revision < last)
        .values(compacted_revision=last)
    )
    return int(result.rowcount)
