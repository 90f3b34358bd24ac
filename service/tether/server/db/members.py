"""Member statements. A session's `member_count` moves in the same
transaction as its member rows, and the session row update comes first so
concurrent membership changes of one session serialize on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server import errors, etags, names
from tether.server.db import idempotency as idempotency_db
from tether.server.db import sessions as session_db
from tether.server.db.base import Database, Row, utcnow
from tether.server.db.schema import idempotency, members, participants, sessions
from tether.server.db.write_condition import WriteCondition, managed_refused
from tether.server.errors import Reason, Resource

# A member row joined with what the Member message shows of its participant.
_MEMBER_COLUMNS = [
    *members.c,
    participants.c.kind.label("participant_kind"),
    participants.c.uid.label("participant_uid"),
]
_JOIN = members.join(
    participants,
    and_(
        participants.c.namespace == members.c.namespace, participants.c.participant == members.c.participant
    ),
)


def _pk(namespace: str, session: str, participant: str) -> ColumnElement[bool]:
    return and_(
        members.c.namespace == namespace, members.c.session == session, members.c.participant == participant
    )


def member_select() -> Any:
    return select(*_MEMBER_COLUMNS).select_from(_JOIN)


async def _get(conn: AsyncConnection, namespace: str, session: str, participant: str) -> Row:
    stmt = member_select().where(_pk(namespace, session, participant))
    row: Row | None = (await conn.execute(stmt)).mappings().first()
    if row is None:
        raise errors.not_found(Resource.MEMBER, names.member_name(namespace, session, participant))
    result: Row = row
    return result


async def _bump_session(conn: AsyncConnection, namespace: str, session: str, delta: int) -> Row | None:
    """Move a live, enabled session's member_count (and etag). The UPDATE also
    locks the session row, so the checks that follow cannot be overtaken."""
    stmt = (
        update(sessions)
        .where(
            sessions.c.namespace == namespace,
            sessions.c.session == session,
            sessions.c.delete_time.is_(None),
            sessions.c.enabled.is_(True),
        )
        .values(
            member_count=sessions.c.member_count + delta,
            update_time=utcnow(),
            version=sessions.c.version + 1,
        )
        .returning(sessions.c.managed, sessions.c.agent, sessions.c.user, sessions.c.peer_agent)
    )
    row: Row | None = (await conn.execute(stmt)).mappings().first()
    return row


async def _participant_managed(conn: AsyncConnection, namespace: str, participant: str) -> bool:
    stmt = (
        select(participants.c.managed)
        .where(participants.c.namespace == namespace, participants.c.participant == participant)
        .with_for_update(read=True)
    )
    return bool((await conn.execute(stmt)).scalar())


async def _check_manageable(
    conn: AsyncConnection,
    namespace: str,
    session: str,
    participant: str,
    session_managed: bool,
    condition: WriteCondition,
) -> None:
    """A caller below the system role may not change the membership of a managed
    session, nor of a managed participant."""
    if condition.may_manage:
        return
    if session_managed:
        raise managed_refused(names.session_name(namespace, session))
    if await _participant_managed(conn, namespace, participant):
        raise managed_refused(names.participant_name(namespace, participant))


async def get(db: Database, namespace: str, session: str, participant: str) -> Row:
    async with db.read() as conn:
        return await _get(conn, namespace, session, participant)


async def add(
    db: Database,
    namespace: str,
    session: str,
    participant: str,
    role: int,
    condition: WriteCondition,
    claim: idempotency_db.Claim | None,
) -> Row:
    """Add a member (and move the session's member_count), claiming the request id
    (if any) in the same transaction.

    A participant that already is a member of a live session (the common case of a
    chat gateway that adds every sender) costs one read: ALREADY_EXISTS, or, for a
    retry of the call that added it, that member. Nothing else is decided by the read:
    the insert below is guarded by the primary key."""
    name = names.member_name(namespace, session, participant)
    existing = await _existing(db, namespace, session, participant, claim)
    if existing is not None and (
        condition.may_manage or not (existing["session_managed"] or existing["participant_managed"])
    ):
        claimed = idempotency_db.claimed_by(claim, existing)
        if claimed is None:
            raise idempotency_db.Unclaimed(errors.already_exists(Resource.MEMBER, name))
        if claimed != name:
            raise idempotency_db.Replayed(claimed)
        return existing
    now = utcnow()
    if db.hot is not None:
        added = await _add_in_one_statement(db, namespace, session, participant, role, now, condition, claim)
        if added is not None:
            return added
        # Refused: the transaction below says why (or adds it, if the way cleared meanwhile).
    values = {
        "namespace": namespace,
        "session": session,
        "participant": participant,
        "role": role,
        "join_time": now,
        "update_time": now,
    }
    ref = session_db.ParticipantRef("member.participant", participant, kind=0)
    async with db.transaction() as conn:
        bumped = await _bump_session(conn, namespace, session, +1)
        if bumped is None:
            await session_db.live_session(conn, namespace, session)
            # It was not live a moment ago and is now: let the caller retry.
            raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")
        await session_db.check_participants(conn, namespace, [ref])
        await _check_manageable(conn, namespace, session, participant, bumped["managed"], condition)
        inserted = await conn.execute(
            db.insert(members).values(values).on_conflict_do_nothing().returning(members.c.participant)
        )
        if inserted.first() is None:
            raise errors.already_exists(Resource.MEMBER, name)
        await conn.run_sync(idempotency_db.record, claim, name)
        return await _get(conn, namespace, session, participant)


# AddMember on PostgreSQL: one statement. The member is inserted only if the session is
# live and enabled (its row locked, as `_bump_session` locks it), the participant is live
# and enabled, and neither is managed unless the caller may manage; the session's
# member_count and etag move and the request id is claimed in the same statement. No row
# back: the transaction path of `add` explains why (a claim collision fails the statement).
_ADD_SQL = (
    "WITH s AS (SELECT managed FROM sessions WHERE namespace = $1::varchar AND session = $2::varchar "
    "AND delete_time IS NULL AND enabled FOR UPDATE), "
    "p AS (SELECT kind, uid, managed FROM participants WHERE namespace = $1 AND participant = $3 "
    "AND delete_time IS NULL AND enabled FOR SHARE), "
    "ins AS (INSERT INTO members (namespace, session, participant, role, join_time, update_time) "
    "SELECT $1, $2, $3, $4::smallint, $5::timestamptz, $5 FROM s, p "
    "WHERE $6::boolean OR NOT (s.managed OR p.managed) "
    "ON CONFLICT DO NOTHING RETURNING *), "
    "bump AS (UPDATE sessions SET member_count = member_count + 1, update_time = $5, version = version + 1 "
    "WHERE namespace = $1 AND session = $2 AND EXISTS (SELECT 1 FROM ins)), "
    f"{idempotency_db.claim_cte('ins', 7)} "
    "SELECT {}, p.kind AS participant_kind, p.uid AS participant_uid FROM ins, p"
).format(", ".join(f'ins."{c.name}"' for c in members.columns))


async def _add_in_one_statement(
    db: Database,
    namespace: str,
    session: str,
    participant: str,
    role: int,
    now: datetime,
    condition: WriteCondition,
    claim: idempotency_db.Claim | None,
) -> Row | None:
    """Run `_ADD_SQL`: the new member, or None when it was refused."""
    name = names.member_name(namespace, session, participant)
    args = [namespace, session, participant, role, now, condition.may_manage]
    args += idempotency_db.claim_args(claim, name)
    return await idempotency_db.fetch_claiming(db, claim, _ADD_SQL, *args)


# A member of a live, enabled session, with what `add` must know, and the call's claim.
_OF_SESSION = and_(sessions.c.namespace == members.c.namespace, sessions.c.session == members.c.session)
_EXISTING = (
    select(
        *_MEMBER_COLUMNS,
        sessions.c.managed.label("session_managed"),
        participants.c.managed.label("participant_managed"),
        *idempotency_db.CLAIM_COLUMNS,
    )
    .select_from(_JOIN.join(sessions, _OF_SESSION).outerjoin(idempotency, idempotency_db.CLAIM_JOIN_ON))
    .where(
        members.c.namespace == bindparam("p_namespace"),
        members.c.session == bindparam("p_session"),
        members.c.participant == bindparam("p_participant"),
        sessions.c.delete_time.is_(None),
        sessions.c.enabled.is_(True),
    )
)
_EXISTING_SQL = (
    "SELECT {}, p.kind AS participant_kind, p.uid AS participant_uid, s.managed AS session_managed, "
    "p.managed AS participant_managed, {} FROM members m "
    "JOIN participants p ON p.namespace = m.namespace AND p.participant = m.participant "
    "JOIN sessions s ON s.namespace = m.namespace AND s.session = m.session {} "
    "WHERE m.namespace = $1 AND m.session = $2 AND m.participant = $3 "
    "AND s.delete_time IS NULL AND s.enabled"
).format(
    ", ".join(f'm."{c.name}"' for c in members.columns),
    idempotency_db.CLAIM_SELECT_SQL,
    idempotency_db.claim_join_sql("$4", "$5"),
)


async def _existing(
    db: Database, namespace: str, session: str, participant: str, claim: idempotency_db.Claim | None
) -> Row | None:
    joined = idempotency_db.claim_params(namespace, claim)
    if db.hot is not None:
        return await db.hot.fetchrow(
            _EXISTING_SQL, namespace, session, participant, joined["c_request_id"], joined["c_now"]
        )
    params = {"p_namespace": namespace, "p_session": session, "p_participant": participant, **joined}
    return await db.query(_existing_in, params)


def _existing_in(conn: Connection, params: dict[str, Any]) -> Row | None:
    row: Row | None = conn.execute(_EXISTING, params).mappings().first()
    return row


async def update_role(
    db: Database, namespace: str, session: str, participant: str, role: int, condition: WriteCondition
) -> Row:
    conditions = [_pk(namespace, session, participant)]
    participant_uid = (
        select(participants.c.uid)
        .where(participants.c.namespace == namespace, participants.c.participant == participant)
        .scalar_subquery()
    )
    etag_condition = etags.condition(participant_uid, members.c.version, condition.expected)
    if etag_condition is not None:
        conditions.append(etag_condition)
    stmt = (
        update(members)
        .where(*conditions)
        .values(role=role, update_time=utcnow(), version=members.c.version + 1)
        .returning(members.c.participant)
    )
    name = names.member_name(namespace, session, participant)
    async with db.transaction() as conn:
        current_session = await session_db.get_in(conn, namespace, session, lock=True)
        await _check_manageable(conn, namespace, session, participant, current_session["managed"], condition)
        # A write to the session row that changes nothing: on PostgreSQL its trigger orders
        # this transaction's MEMBER_UPDATED among the session's changes (migration 0005).
        await conn.execute(
            update(sessions)
            .where(sessions.c.namespace == namespace, sessions.c.session == session)
            .values(revision=sessions.c.revision)
        )
        if (await conn.execute(stmt)).first() is None:
            current = await _get(conn, namespace, session, participant)
            etags.check(
                name, {"uid": current["participant_uid"], "version": current["version"]}, condition.expected
            )
        return await _get(conn, namespace, session, participant)


async def remove(
    db: Database, namespace: str, session: str, participant: str, condition: WriteCondition
) -> None:
    name = names.member_name(namespace, session, participant)
    async with db.transaction() as conn:
        current = await session_db.get_in(conn, namespace, session, lock=True)
        if participant in (current["agent"], current["user"], current["peer_agent"]):
            raise errors.ApiError(
                Reason.AUTOMATIC_MEMBER,
                f"{name!r} is the session's agent, user or peer_agent and cannot be removed",
                metadata={"resource_name": name},
            )
        if current["delete_time"] is not None:
            raise errors.ApiError(
                Reason.SESSION_DELETED, f"session {names.session_name(namespace, session)!r} is deleted"
            )
        await _check_manageable(conn, namespace, session, participant, current["managed"], condition)
        # The count first, so that the member's change (migration 0005) shows the session after it.
        await conn.execute(
            update(sessions)
            .where(sessions.c.namespace == namespace, sessions.c.session == session)
            .values(
                member_count=sessions.c.member_count - 1, update_time=utcnow(), version=sessions.c.version + 1
            )
        )
        deleted = await conn.execute(
            delete(members).where(_pk(namespace, session, participant)).returning(members.c.participant)
        )
        if deleted.first() is None:
            raise errors.not_found(Resource.MEMBER, name)  # rolls the count back
