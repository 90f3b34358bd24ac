"""Member statements. A session's `member_count` moves in the same
transaction as its member rows, and the session row update comes first so
concurrent membership changes of one session serialize on it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server import errors, etags, names
from tether.server.db import sessions as session_db
from tether.server.db.base import Database, Row, utcnow
from tether.server.db.schema import members, participants, sessions
from tether.server.errors import Reason
from tether.server.etags import Etag

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
        raise errors.not_found(names.member_name(namespace, session, participant), "member")
    result: Row = row
    return result


async def _bump_session(conn: AsyncConnection, namespace: str, session: str, delta: int) -> bool:
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
        .returning(sessions.c.uid)
    )
    return (await conn.execute(stmt)).first() is not None


async def add(db: Database, namespace: str, session: str, participant: str, role: int) -> Row:
    now = utcnow()
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
        if not await _bump_session(conn, namespace, session, +1):
            await session_db.live_session(conn, namespace, session)
        await session_db.check_participants(conn, namespace, [ref])
        inserted = await conn.execute(
            db.insert(members).values(values).on_conflict_do_nothing().returning(members.c.participant)
        )
        if inserted.first() is None:
            raise errors.already_exists(names.member_name(namespace, session, participant), "member")
        return await _get(conn, namespace, session, participant)


async def update_role(
    db: Database, namespace: str, session: str, participant: str, role: int, expected: Etag | None = None
) -> Row:
    conditions = [_pk(namespace, session, participant)]
    participant_uid = (
        select(participants.c.uid)
        .where(participants.c.namespace == namespace, participants.c.participant == participant)
        .scalar_subquery()
    )
    etag_condition = etags.condition(participant_uid, members.c.version, expected)
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
        if (await conn.execute(stmt)).first() is None:
            await session_db.get_in(conn, namespace, session)
            current = await _get(conn, namespace, session, participant)
            etags.check(name, {"uid": current["participant_uid"], "version": current["version"]}, expected)
        return await _get(conn, namespace, session, participant)


async def remove(db: Database, namespace: str, session: str, participant: str) -> None:
    name = names.member_name(namespace, session, participant)
    async with db.transaction() as conn:
        current = await session_db.get_in(conn, namespace, session)
        if participant in (current["agent"], current["user"], current["peer_agent"]):
            raise errors.failed_precondition(
                Reason.AUTOMATIC_MEMBER,
                f"{name!r} is the session's agent, user or peer_agent and cannot be removed",
                resource_name=name,
            )
        if current["delete_time"] is not None:
            raise errors.failed_precondition(
                Reason.SESSION_DELETED, f"session {names.session_name(namespace, session)!r} is deleted"
            )
        deleted = await conn.execute(
            delete(members).where(_pk(namespace, session, participant)).returning(members.c.participant)
        )
        if deleted.first() is None:
            raise errors.not_found(name, "member")
        await conn.execute(
            update(sessions)
            .where(sessions.c.namespace == namespace, sessions.c.session == session)
            .values(
                member_count=sessions.c.member_count - 1, update_time=utcnow(), version=sessions.c.version + 1
            )
        )
