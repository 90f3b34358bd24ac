"""Participant statements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server import errors, names
from tether.server.db import idempotency as idempotency_db
from tether.server.db.base import Database, Row, constraint_kind, insert_for, utcnow
from tether.server.db.schema import idempotency, participants
from tether.server.db.write_condition import WriteCondition
from tether.server.errors import Reason, Resource

# The predicate of the partial unique index on external_id (ON CONFLICT must name it).
_KEY_WHERE = and_(participants.c.delete_time.is_(None), participants.c.external_id.is_not(None))


def _pk(namespace: str, participant: str) -> Any:
    return and_(participants.c.namespace == namespace, participants.c.participant == participant)


def _external_id_taken(external_id: str) -> errors.ApiError:
    return errors.ApiError(
        Reason.EXTERNAL_ID_ALREADY_EXISTS,
        f"a live participant of this kind already has external_id {external_id!r}",
        metadata={"external_id": external_id},
    )


_COLUMNS = [c.name for c in participants.columns]
_GET_SQL = "SELECT {} FROM participants WHERE namespace = $1 AND participant = $2".format(
    ", ".join(f'"{name}"' for name in _COLUMNS)
)


async def get(db: Database, namespace: str, participant: str) -> Row:
    row: Row | None
    if db.hot is not None:
        row = await db.hot.fetchrow(_GET_SQL, namespace, participant)
    else:
        row = await db.query(_get_row, namespace, participant)
    if row is None:
        raise errors.not_found(Resource.PARTICIPANT, names.participant_name(namespace, participant))
    return row


def _get_row(conn: Connection, namespace: str, participant: str) -> Row | None:
    row: Row | None = conn.execute(select(participants).where(_pk(namespace, participant))).mappings().first()
    return row


# The inserts of CreateParticipant and of a FindOrCreateParticipant that creates, on
# PostgreSQL: one statement each, the participant and the request id's claim (a claim
# collision fails the whole statement). No row back: refused by a conflict.
_NEW_COLUMNS = [c for c in participants.columns if c.name not in ("delete_time", "purge_time", "version")]


def _insert_sql(on_conflict: str) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    casts = ", ".join(f"${i}::{c.type.compile(dialect=dialect)}" for i, c in enumerate(_NEW_COLUMNS, 1))
    columns = ", ".join(f'"{c.name}"' for c in _NEW_COLUMNS)
    return (
        f"WITH ins AS (INSERT INTO participants ({columns}) VALUES ({casts}) {on_conflict} RETURNING *), "
        f"{idempotency_db.claim_cte('ins', len(_NEW_COLUMNS) + 1)} "
        "SELECT {} FROM ins".format(", ".join(f'"{name}"' for name in _COLUMNS))
    )


_CREATE_SQL = _insert_sql("ON CONFLICT DO NOTHING")
_CREATE_FOR_KEY_SQL = _insert_sql(
    "ON CONFLICT (namespace, kind, external_id) WHERE delete_time IS NULL AND external_id IS NOT NULL "
    "DO NOTHING"
)


async def _insert_hot(
    db: Database, sql: str, values: dict[str, Any], claim: idempotency_db.Claim | None
) -> Row | None:
    """Run one of the inserts above: the new participant, or None when a conflict refused it."""
    args = [values.get(c.name) for c in _NEW_COLUMNS] + idempotency_db.claim_args(claim, _name(values))
    try:
        return await idempotency_db.fetch_claiming(db, claim, sql, *args)
    except asyncpg.IntegrityConstraintViolationError as exc:
        if constraint_kind(exc) == "foreign_key":
            raise errors.not_found(Resource.NAMESPACE, names.namespace_name(values["namespace"])) from None
        raise


async def create(db: Database, values: dict[str, Any], claim: idempotency_db.Claim | None) -> Row:
    """Insert a participant, claiming the request id (if any) with it; PK and live
    external_id collisions are ALREADY_EXISTS."""
    if db.hot is not None:
        created = await _insert_hot(db, _CREATE_SQL, values, claim)
        if created is not None:
            return created
        async with db.read() as conn:
            await _raise_create_conflict(conn, values)
    stmt = db.insert(participants).values(values).on_conflict_do_nothing().returning(participants)
    try:
        async with db.transaction() as conn:
            row: Row | None = (await conn.execute(stmt)).mappings().first()
            if row is None:
                await _raise_create_conflict(conn, values)
            await conn.run_sync(idempotency_db.record, claim, _name(values))
    except IntegrityError as exc:
        if constraint_kind(exc) == "foreign_key":
            raise errors.not_found(Resource.NAMESPACE, names.namespace_name(values["namespace"])) from None
        raise
    assert row is not None
    return row


def _name(values: Mapping[str, Any]) -> str:
    return names.participant_name(values["namespace"], values["participant"])


async def _raise_create_conflict(conn: AsyncConnection, values: dict[str, Any]) -> None:
    pk = _pk(values["namespace"], values["participant"])
    if (await conn.execute(select(participants.c.uid).where(pk))).first() is not None:
        raise errors.already_exists(Resource.PARTICIPANT, _name(values))
    raise _external_id_taken(values["external_id"])


# The lookup of FindOrCreateParticipant, joined with the call's claim (one statement),
# and its hot SQL twin.
_LOOKUP = (
    select(participants, *idempotency_db.CLAIM_COLUMNS)
    .select_from(participants.outerjoin(idempotency, idempotency_db.CLAIM_JOIN_ON))
    .where(
        participants.c.namespace == bindparam("p_namespace"),
        participants.c.kind == bindparam("p_kind"),
        participants.c.external_id == bindparam("p_external_id"),
        participants.c.delete_time.is_(None),
    )
)
_LOOKUP_SQL = (
    "SELECT {}, {} FROM participants p {} "
    "WHERE p.namespace = $1 AND p.kind = $2 AND p.external_id = $3 AND p.delete_time IS NULL"
).format(
    ", ".join(f'p."{name}"' for name in _COLUMNS),
    idempotency_db.CLAIM_SELECT_SQL,
    idempotency_db.claim_join_sql("$4", "$5"),
)


def lookup_in(conn: Connection, values: dict[str, Any], claim: idempotency_db.Claim | None) -> Row | None:
    """The live participant with the key of `values`, with the call's claim joined."""
    params = {
        "p_namespace": values["namespace"],
        "p_kind": values["kind"],
        "p_external_id": values["external_id"],
        **idempotency_db.claim_params(values["namespace"], claim),
    }
    row: Row | None = conn.execute(_LOOKUP, params).mappings().first()
    return row


async def _lookup_hot(db: Database, values: dict[str, Any], claim: idempotency_db.Claim | None) -> Row | None:
    """`lookup_in` as its hot SQL twin (PostgreSQL)."""
    assert db.hot is not None
    joined = idempotency_db.claim_params(values["namespace"], claim)
    key = (values["namespace"], values["kind"], values["external_id"])
    return await db.hot.fetchrow(_LOOKUP_SQL, *key, joined["c_request_id"], joined["c_now"])


def _found(row: Row, claim: idempotency_db.Claim | None) -> tuple[Row, bool]:
    """A live participant found: not created, unless this call's request id created it."""
    claimed = idempotency_db.claimed_by(claim, row)
    if claimed is None:
        return row, False
    if claimed != _name(row):
        raise idempotency_db.Replayed(claimed)
    return row, True


async def find_or_create(
    db: Database, values: dict[str, Any], claim: idempotency_db.Claim | None
) -> tuple[Row, bool]:
    """The live participant with this namespace + kind + external_id, or a new one.

    Atomic: the insert is guarded by the partial unique index, so concurrent
    callers with one key all end with the same row. Finding writes nothing;
    creating claims the request id (if any) in the same transaction.
    """
    found = await _lookup_hot(db, values, claim) if db.hot else await db.query(lookup_in, values, claim)
    if found is not None:
        return _found(found, claim)
    if db.hot is not None:
        created = await _insert_hot(db, _CREATE_FOR_KEY_SQL, values, claim)
        if created is not None:
            return created, True
        # Another caller inserted it between our read and insert: read again.
        found = await _lookup_hot(db, values, claim)
        if found is None:
            raise errors.ApiError(Reason.CONCURRENT_CHANGE, "participant changed concurrently; retry")
        return _found(found, claim)
    try:
        return await db.write(create_or_find_in, values, claim)
    except IntegrityError as exc:
        if constraint_kind(exc) == "foreign_key":
            raise errors.not_found(Resource.NAMESPACE, names.namespace_name(values["namespace"])) from None
        raise


def create_or_find_in(
    conn: Connection, values: dict[str, Any], claim: idempotency_db.Claim | None
) -> tuple[Row, bool]:
    insert = (
        insert_for(conn, participants)
        .values(values)
        .on_conflict_do_nothing(
            index_elements=[participants.c.namespace, participants.c.kind, participants.c.external_id],
            index_where=_KEY_WHERE,
        )
        .returning(participants)
    )
    created = conn.execute(insert).mappings().first()
    if created is not None:
        idempotency_db.record(conn, claim, _name(values))
        return created, True
    # Another caller inserted it between our read and insert: read again.
    found = lookup_in(conn, values, claim)
    if found is None:
        raise errors.ApiError(Reason.CONCURRENT_CHANGE, "participant changed concurrently; retry")
    return _found(found, claim)


async def update_participant(
    db: Database,
    namespace: str,
    participant: str,
    values: dict[str, Any],
    kind: int | None,
    condition: WriteCondition,
) -> Row:
    """Write `values` in one conditional statement: `kind`, if given, must equal
    the stored (immutable) kind, and the etag must match."""
    name = names.participant_name(namespace, participant)
    if not values:
        current = await get(db, namespace, participant)
        condition.check(name, current)
        _check_kind(current, kind)
        return current
    conditions = [
        _pk(namespace, participant),
        participants.c.delete_time.is_(None),
        *condition.clauses(participants),
    ]
    if kind is not None:
        conditions.append(participants.c.kind == kind)
    stmt = (
        update(participants)
        .where(*conditions)
        .values(**values, update_time=utcnow(), version=participants.c.version + 1)
        .returning(participants)
    )
    try:
        async with db.statement() as conn:
            row: Row | None = (await conn.execute(stmt)).mappings().first()
            if row is None:
                current = await _current(conn, namespace, participant)
                condition.check(name, current)
                if current["delete_time"] is not None:
                    raise _deleted(namespace, participant)
                _check_kind(current, kind)
    except IntegrityError as exc:
        if constraint_kind(exc) == "unique":
            raise _external_id_taken(values.get("external_id") or "") from None
        raise
    assert row is not None
    return row


def _check_kind(current: Row, kind: int | None) -> None:
    if kind is not None and current["kind"] != kind:
        raise errors.bad_field("participant.kind", "is immutable", reason=Reason.IMMUTABLE_FIELD)


async def soft_delete(db: Database, namespace: str, participant: str, condition: WriteCondition) -> Row:
    now = utcnow()
    stmt = (
        update(participants)
        .where(
            _pk(namespace, participant),
            participants.c.delete_time.is_(None),
            *condition.clauses(participants),
        )
        .values(
            delete_time=now,
            purge_time=now + db.retention,
            update_time=now,
            version=participants.c.version + 1,
        )
        .returning(participants)
    )
    async with db.statement() as conn:
        row: Row | None = (await conn.execute(stmt)).mappings().first()
        if row is None:
            current = await _current(conn, namespace, participant)
            condition.check(names.participant_name(namespace, participant), current)
            raise _deleted(namespace, participant)
    return row


async def undelete(db: Database, namespace: str, participant: str, condition: WriteCondition) -> Row:
    stmt = (
        update(participants)
        .where(
            _pk(namespace, participant),
            participants.c.delete_time.is_not(None),
            *condition.clauses(participants),
        )
        .values(delete_time=None, purge_time=None, update_time=utcnow(), version=participants.c.version + 1)
        .returning(participants)
    )
    try:
        async with db.statement() as conn:
            row: Row | None = (await conn.execute(stmt)).mappings().first()
            if row is None:
                current = await _current(conn, namespace, participant)
                condition.check(names.participant_name(namespace, participant), current)
                raise errors.already_exists(
                    Resource.PARTICIPANT,
                    names.participant_name(namespace, participant),
                    message="participant is not deleted",
                )
    except IntegrityError as exc:
        if constraint_kind(exc) == "unique":
            raise _external_id_taken("") from None
        raise
    return row


async def _current(conn: AsyncConnection, namespace: str, participant: str) -> Row:
    row: Row | None = (
        (await conn.execute(select(participants).where(_pk(namespace, participant)))).mappings().first()
    )
    if row is None:
        raise errors.not_found(Resource.PARTICIPANT, names.participant_name(namespace, participant))
    result: Row = row
    return result


def _deleted(namespace: str, participant: str) -> errors.ApiError:
    name = names.participant_name(namespace, participant)
    return errors.ApiError(
        Reason.PARTICIPANT_DELETED, f"participant {name!r} is deleted", metadata={"resource_name": name}
    )
