"""Expiry and retention (AIP-214, AIP-164): the work the server does by itself.

`sweep(db)` soft-deletes sessions past their `expire_time`, then purges (hard
deletes) sessions and participants past their `purge_time`, then drops expired
idempotency records. Every kind goes in bounded batches, each batch its own
short transaction, so a large backlog never holds locks for long nor builds one
huge transaction.

Replicas. Every server runs the sweeper against the same database; two
mechanisms keep them apart on PostgreSQL:

- Each batch transaction first takes `pg_try_advisory_xact_lock(SWEEP_LOCK_KEY)`.
  When another replica holds it, this sweep stops at once (that replica is
  sweeping and carries on until nothing is left), so normally one replica does
  the work. We chose the transaction-scoped lock over a session-level one held
  for the whole sweep: it needs no extra connection (a session lock would pin a
  connection of a pool that may be as small as 1 while the batches need
  another), it can never leak through the connection pool (a session lock
  survives the connection's return to the pool unless explicitly released),
  it works behind PgBouncer in transaction pooling mode, and it is released by
  commit or rollback even when the task is cancelled mid-batch.
- Each batch picks its rows with `FOR UPDATE SKIP LOCKED` in a subquery (and
  re-checks the predicate in the outer UPDATE/DELETE), so a batch never waits
  for a row that a request is writing (it takes it next time), and even
  without the advisory lock two sweepers could neither block each other nor
  change or count a row twice. Since the lock is per batch, sweepers can take
  turns mid-sweep; a sweep that gives way reports what it did until then.

SQLite has one writer at a time (every write transaction is BEGIN IMMEDIATE),
so there the batches alone suffice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server.db.base import Database, utcnow
from tether.server.db.schema import events, idempotency, members, participants, sessions

DEFAULT_BATCH_SIZE = 500
# pg_try_advisory_xact_lock key: b"tether\x00\x02" as a signed 64-bit integer
# (migrations use ...\x01; see tether.server.db.migrate).
SWEEP_LOCK_KEY = int.from_bytes(b"tether\x00\x02", "big", signed=True)


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did. `contended`: it stopped early because another
    replica was sweeping (which then finishes the work)."""

    expired_sessions: int = 0
    purged_sessions: int = 0
    purged_participants: int = 0
    purged_idempotency: int = 0
    contended: bool = False

    @property
    def total(self) -> int:
        """Rows changed, all kinds together."""
        return (
            self.expired_sessions + self.purged_sessions + self.purged_participants + self.purged_idempotency
        )

    def counts(self) -> dict[str, int]:
        """The per-kind counts (for the `sweep` log line)."""
        return {key: value for key, value in asdict(self).items() if key != "contended"}


@dataclass(frozen=True)
class _Progress:
    """What one kind's batches did; `contended`: they stopped for another replica."""

    done: int
    contended: bool = False


Step = Callable[[Database, datetime, int], Awaitable[_Progress]]


async def sweep(
    db: Database, now: datetime | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> SweepResult:
    """Expire and purge everything due at `now` (default: the current time).

    Sessions are purged before participants, so that a participant whose last
    sessions go in this sweep can go in it too."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = utcnow() if now is None else now
    steps: tuple[tuple[str, Step], ...] = (
        ("expired_sessions", _expire_sessions),
        ("purged_sessions", _purge_sessions),
        ("purged_participants", _purge_participants),
        ("purged_idempotency", _purge_idempotency),
    )
    counts: dict[str, Any] = {}
    for field, step in steps:
        progress = await step(db, now, batch_size)
        # Counted even when the step stopped part way: its batches committed.
        counts[field] = progress.done
        if progress.contended:
            return SweepResult(**counts, contended=True)
    return SweepResult(**counts)


# --- the kinds ---------------------------------------------------------------------------------


async def _expire_sessions(db: Database, now: datetime, batch_size: int) -> _Progress:
    """Soft-delete live sessions whose expire_time has come, as DeleteSession would."""
    due = and_(sessions.c.expire_time <= now, sessions.c.delete_time.is_(None))
    values = {
        "delete_time": now,
        "purge_time": now + db.retention,
        "update_time": now,
        "version": sessions.c.version + 1,
    }

    async def batch(conn: AsyncConnection) -> int:
        stmt = update(sessions).where(_picked(db, sessions, due, batch_size), due).values(values)
        return (await conn.execute(stmt)).rowcount

    return await _in_batches(db, batch, batch_size)


async def _purge_sessions(db: Database, now: datetime, batch_size: int) -> _Progress:
    """Hard-delete sessions past purge_time (their members go by ON DELETE CASCADE)."""
    return await _purge_due(db, sessions, sessions.c.purge_time <= now, batch_size)


async def _purge_due(db: Database, table: Table, due: ColumnElement[bool], batch_size: int) -> _Progress:
    """Hard-delete the rows of `table` matching `due` (dependent rows go by ON DELETE CASCADE)."""

    async def batch(conn: AsyncConnection) -> int:
        stmt = delete(table).where(_picked(db, table, due, batch_size), due)
        return (await conn.execute(stmt)).rowcount

    return await _in_batches(db, batch, batch_size)


async def _purge_participants(db: Database, now: datetime, batch_size: int) -> _Progress:
    """Hard-delete participants past purge_time that no session (live or
    soft-deleted) references as agent, user or peer_agent.

    Those references are ON DELETE CASCADE: purging a referenced participant
    would silently take its sessions with it. Such a participant waits until
    its sessions are purged. Its plain memberships and the events it wrote go
    first, with the sessions' member_count and event_count, in the same transaction."""
    due = and_(participants.c.purge_time <= now, ~_referenced_by_a_session())

    async def batch(conn: AsyncConnection) -> int:
        keys = [tuple(row) for row in await conn.execute(_pick(db, participants, due, batch_size))]
        if not keys:
            return 0
        await _drop_events(conn, keys)
        await _drop_memberships(conn, keys, now)
        key = tuple_(participants.c.namespace, participants.c.participant)
        # `due` again: the NOT EXISTS is checked anew by this statement's own
        # snapshot, so not even a race can let the cascade take a session.
        return (await conn.execute(delete(participants).where(key.in_(keys), due))).rowcount

    return await _in_batches(db, batch, batch_size)


async def _purge_idempotency(db: Database, now: datetime, batch_size: int) -> _Progress:
    """Drop request-id records past their expire_time."""
    return await _purge_due(db, idempotency, idempotency.c.expire_time <= now, batch_size)


# --- helpers -----------------------------------------------------------------------------------


def _referenced_by_a_session() -> ColumnElement[bool]:
    ref = or_(
        sessions.c.agent == participants.c.participant,
        sessions.c.user == participants.c.participant,
        sessions.c.peer_agent == participants.c.participant,
    )
    return exists().where(sessions.c.namespace == participants.c.namespace, ref)


def _pick(db: Database, table: Table, due: ColumnElement[bool], batch_size: int) -> Select[Any]:
    """The primary keys of at most `batch_size` rows matching `due`; on
    PostgreSQL locked for this transaction, skipping rows locked by others."""
    stmt = select(*table.primary_key.columns).where(due).limit(batch_size)
    return stmt.with_for_update(skip_locked=True) if db.is_postgresql else stmt


def _picked(db: Database, table: Table, due: ColumnElement[bool], batch_size: int) -> ColumnElement[bool]:
    """`(primary key) IN (_pick(...))`: the WHERE of one batch's UPDATE or DELETE."""
    return tuple_(*table.primary_key.columns).in_(_pick(db, table, due, batch_size))


async def _drop_events(conn: AsyncConnection, keys: Sequence[tuple[Any, ...]]) -> None:
    """Delete the events these participants wrote, moving event_count first (session rows
    before event rows, the order appends use). The author's foreign key would cascade
    anyway; this keeps the counts true."""
    author = tuple_(events.c.namespace, events.c.author)
    rows = await conn.execute(select(events.c.namespace, events.c.session).where(author.in_(keys)))
    if await _count_down(conn, rows, sessions.c.event_count):
        await conn.execute(delete(events).where(author.in_(keys)))


async def _drop_memberships(conn: AsyncConnection, keys: Sequence[tuple[Any, ...]], now: datetime) -> None:
    """Delete the member rows of these participants, moving member_count first
    (session rows before member rows, the order membership writes use)."""
    key = tuple_(members.c.namespace, members.c.participant)
    rows = await conn.execute(select(members.c.namespace, members.c.session).where(key.in_(keys)))
    if await _count_down(
        conn, rows, sessions.c.member_count, update_time=now, version=sessions.c.version + 1
    ):
        await conn.execute(delete(members).where(key.in_(keys)))


async def _count_down(conn: AsyncConnection, rows: Any, counter: Any, **also: Any) -> bool:
    """Take each (namespace, session) of `rows` off the sessions' `counter` (with `also`
    set), in key order; False when there are none."""
    per_session = Counter((row.namespace, row.session) for row in rows)
    if not per_session:
        return False
    stmt = (
        update(sessions)
        .where(sessions.c.namespace == bindparam("ns"), sessions.c.session == bindparam("sid"))
        .values({counter: counter - bindparam("gone"), **also})
    )
    params = [{"ns": ns, "sid": sid, "gone": gone} for (ns, sid), gone in sorted(per_session.items())]
    await conn.execute(stmt, params)
    return True


Batch = Callable[[AsyncConnection], Awaitable[int]]


async def _in_batches(db: Database, batch: Batch, batch_size: int) -> _Progress:
    """Run `batch(conn)` in its own transaction until a batch comes back short,
    or until another replica holds the sweep lock."""
    total = 0
    while True:
        async with db.transaction() as conn:
            if not await _sweep_lock(db, conn):
                return _Progress(total, contended=True)
            count = await batch(conn)
        total += count
        if count < batch_size:
            return _Progress(total)


async def _sweep_lock(db: Database, conn: AsyncConnection) -> bool:
    """Take the sweep lock for this transaction; False when another replica holds it.
    SQLite needs none: BEGIN IMMEDIATE already makes writers take turns."""
    if not db.is_postgresql:
        return True
    locked = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK_KEY})
    return bool(locked)
