"""PurgeSessions (AIP-165): hard-delete the sessions of a namespace that match a filter.

    where = compile_filter(req.filter, SESSION_FILTER_FIELDS, namespace=ns)
    count, sample = await purge_sessions(db, ns, where, force=req.force)

Soft-deleted sessions match too (a purge is how they go before their
purge_time). Without `force` nothing is deleted: the answer is how many
sessions would go and a sample of their names. With `force` the matches are
deleted in bounded batches, each its own short transaction (their members go by
ON DELETE CASCADE), so a large purge never holds one huge transaction; on
PostgreSQL each batch picks its rows with `FOR UPDATE SKIP LOCKED`, so it never
waits on a row a request is writing and two concurrent purges never delete (or
count) a session twice.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, func, select, true, tuple_

from tether.server.db.base import Database
from tether.server.db.schema import sessions
from tether.server.names import session_name

DEFAULT_SAMPLE_SIZE = 100
DEFAULT_BATCH_SIZE = 500


async def purge_sessions(
    db: Database,
    namespace: str,
    where: ColumnElement[bool] | None,
    *,
    force: bool,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[int, list[str]]:
    """(number of matches, up to `sample_size` of their names); with `force`,
    (number deleted, names among the deleted). `where` None matches every
    session of the namespace."""
    if sample_size < 1 or batch_size < 1:
        raise ValueError("sample_size and batch_size must be at least 1")
    match = and_(sessions.c.namespace == namespace, true() if where is None else where)
    if not force:
        return await _count(db, namespace, match, sample_size)
    return await _delete(db, namespace, match, sample_size, batch_size)


async def _count(
    db: Database, namespace: str, match: ColumnElement[bool], sample_size: int
) -> tuple[int, list[str]]:
    """Count and sample in one statement (one snapshot: they agree): the window
    count is taken over every match before LIMIT applies."""
    stmt = (
        select(sessions.c.session, func.count().over().label("total"))
        .where(match)
        .order_by(sessions.c.session)
        .limit(sample_size)
    )
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    total = rows[0].total if rows else 0
    return int(total), [session_name(namespace, row.session) for row in rows]


async def _delete(
    db: Database, namespace: str, match: ColumnElement[bool], sample_size: int, batch_size: int
) -> tuple[int, list[str]]:
    """Delete the matches batch by batch until a batch comes back short."""
    picked = select(sessions.c.namespace, sessions.c.session).where(match).limit(batch_size)
    if db.is_postgresql:
        picked = picked.with_for_update(skip_locked=True)
    # `match` in the outer WHERE too: a row that stopped matching after it was
    # picked (PostgreSQL re-reads a locked row) stays.
    stmt = (
        delete(sessions)
        .where(tuple_(sessions.c.namespace, sessions.c.session).in_(picked), match)
        .returning(sessions.c.session)
    )
    deleted, sample = 0, list[str]()
    while True:
        async with db.transaction() as conn:
            ids = list((await conn.execute(stmt)).scalars())
        deleted += len(ids)
        sample += [session_name(namespace, i) for i in ids[: sample_size - len(sample)]]
        if len(ids) < batch_size:
            return deleted, sample
