"""Session statements: the hot paths (get, record activity, create,
find-or-create) are one statement each plus the transaction around them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server import errors, names
from tether.server.db import idempotency as idempotency_db
from tether.server.db.base import Database, Row, constraint_kind, insert_for, utcnow
from tether.server.db.schema import UTCDateTime, idempotency, members, namespaces, participants, sessions
from tether.server.db.write_condition import WriteCondition
from tether.server.errors import Reason, Resource
from tether.v1 import participant_pb2, session_pb2

_KIND_NAMES: dict[int, str] = {
    participant_pb2.Participant.KIND_USER: "USER",
    participant_pb2.Participant.KIND_AGENT: "AGENT",
}

# Predicates of the partial unique indexes (ON CONFLICT must name them).
CONVERSATION_INDEX_WHERE = and_(
    sessions.c.delete_time.is_(None), sessions.c.external_conversation_id.is_not(None)
)
AGENT_PAIR_INDEX_WHERE = and_(sessions.c.delete_time.is_(None), sessions.c.agent_pair.is_not(None))


@dataclass(frozen=True)
class ParticipantRef:
    """A participant a write names, the field that names it, and the kind it
    must have (0: any kind)."""

    field: str
    participant: str
    kind: int


# The session columns, in table order, for hand-written SQL ("user" is a keyword).
_COLUMNS = [c.name for c in sessions.columns]


def _columns(prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{name}"' for name in _COLUMNS)


@dataclass(frozen=True)
class ConflictTarget:
    """A live-session unique key: its lookup (a Core statement and its hot SQL twin,
    both joined with the call's claim, built once), the lookup's parameters, and the
    key's columns and values (`key`, for rows deleted ones too). Nothing here is
    built per call beyond the dicts."""

    key: dict[str, str]
    index_elements: Sequence[Any]
    index_where: ColumnElement[bool]
    lookup: Select[Any]
    lookup_sql: str
    params: dict[str, str]

    def where(self) -> ColumnElement[bool]:
        """The key as a condition, matching deleted rows too."""
        return and_(*(sessions.c[column] == value for column, value in self.key.items()))

    def hot_args(self, claim: idempotency_db.Claim | None) -> list[Any]:
        """`lookup_sql`'s arguments: the key's values, then the claim's request id and clock."""
        joined = idempotency_db.claim_params(self.key["namespace"], claim)
        return [*self.params.values(), joined["c_request_id"], joined["c_now"]]


_LIVE = sessions.c.delete_time.is_(None)
_NAMESPACE_PARAM = sessions.c.namespace == bindparam("p_namespace")
_WITH_CLAIM = select(sessions, *idempotency_db.CLAIM_COLUMNS).select_from(
    sessions.outerjoin(idempotency, idempotency_db.CLAIM_JOIN_ON)
)
_CONVERSATION_LOOKUP = _WITH_CLAIM.where(
    _NAMESPACE_PARAM,
    sessions.c.agent == bindparam("p_agent"),
    sessions.c.channel == bindparam("p_channel"),
    sessions.c.external_conversation_id == bindparam("p_conversation"),
    _LIVE,
)
_CONVERSATION_LOOKUP_SQL = (
    f"SELECT {_columns('s.')}, {idempotency_db.CLAIM_SELECT_SQL} FROM sessions s "
    f"{idempotency_db.claim_join_sql('$5', '$6')} "
    "WHERE s.namespace = $1 AND s.agent = $2 AND s.channel = $3 AND s.external_conversation_id = $4 "
    "AND s.delete_time IS NULL"
)
_AGENT_PAIR_LOOKUP = _WITH_CLAIM.where(_NAMESPACE_PARAM, sessions.c.agent_pair == bindparam("p_pair"), _LIVE)
_AGENT_PAIR_LOOKUP_SQL = (
    f"SELECT {_columns('s.')}, {idempotency_db.CLAIM_SELECT_SQL} FROM sessions s "
    f"{idempotency_db.claim_join_sql('$3', '$4')} "
    "WHERE s.namespace = $1 AND s.agent_pair = $2 AND s.delete_time IS NULL"
)


def agent_pair_key(agent: str, peer_agent: str) -> str:
    """The unordered pair as one value: (a, b) and (b, a) give the same key."""
    low, high = sorted((agent, peer_agent))
    return f"{low}/{high}"


_CONVERSATION_ELEMENTS = [
    sessions.c.namespace,
    sessions.c.agent,
    sessions.c.channel,
    sessions.c.external_conversation_id,
]
_AGENT_PAIR_ELEMENTS = [sessions.c.namespace, sessions.c.agent_pair]


def conversation_target(namespace: str, agent: str, channel: str, conversation_id: str) -> ConflictTarget:
    return ConflictTarget(
        key={
            "namespace": namespace,
            "agent": agent,
            "channel": channel,
            "external_conversation_id": conversation_id,
        },
        index_elements=_CONVERSATION_ELEMENTS,
        index_where=CONVERSATION_INDEX_WHERE,
        lookup=_CONVERSATION_LOOKUP,
        lookup_sql=_CONVERSATION_LOOKUP_SQL,
        params={
            "p_namespace": namespace,
            "p_agent": agent,
            "p_channel": channel,
            "p_conversation": conversation_id,
        },
    )


def agent_pair_target(namespace: str, pair: str) -> ConflictTarget:
    return ConflictTarget(
        key={"namespace": namespace, "agent_pair": pair},
        index_elements=_AGENT_PAIR_ELEMENTS,
        index_where=AGENT_PAIR_INDEX_WHERE,
        lookup=_AGENT_PAIR_LOOKUP,
        lookup_sql=_AGENT_PAIR_LOOKUP_SQL,
        params={"p_namespace": namespace, "p_pair": pair},
    )


def _pk(namespace: str, session: str) -> ColumnElement[bool]:
    return and_(sessions.c.namespace == namespace, sessions.c.session == session)


def _name(namespace: str, session: str) -> str:
    return names.session_name(namespace, session)


def member_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The automatic members of a new session: agent (OWNER), user and peer_agent."""
    people = [(values["agent"], session_pb2.Member.ROLE_OWNER)]
    people += [(values[k], session_pb2.Member.ROLE_MEMBER) for k in ("user", "peer_agent") if values.get(k)]
    return [
        {
            "namespace": values["namespace"],
            "session": values["session"],
            "participant": participant,
            "role": role,
            "join_time": values["create_time"],
            "update_time": values["create_time"],
        }
        for participant, role in people
    ]


# Hot-path statements are built once: building and hashing a statement per call
# costs more than running it (see the README's Performance section).
KEY = and_(sessions.c.namespace == bindparam("p_namespace"), sessions.c.session == bindparam("p_session"))
_SELECT_BY_KEY = select(sessions).where(KEY)
_GET_SQL = f"SELECT {_columns()} FROM sessions WHERE namespace = $1 AND session = $2"
_GET_FOR_UPDATE = _SELECT_BY_KEY.with_for_update()
_WHEN = bindparam("p_when", type_=UTCDateTime())
_RECORD_ACTIVITY = (
    update(sessions)
    .where(KEY, sessions.c.delete_time.is_(None), sessions.c.enabled.is_(True))
    .values(
        # No version bump: activity alone never changes the etag (an etag-guarded update of a
        # live conversation must not be refused because a message arrived).
        last_activity_time=case(
            (sessions.c.last_activity_time < _WHEN, _WHEN), else_=sessions.c.last_activity_time
        ),
    )
    .returning(sessions)
)
_RECORD_ACTIVITY_SQL = (
    "UPDATE sessions SET last_activity_time = GREATEST(last_activity_time, $3) "
    f"WHERE namespace = $1 AND session = $2 AND delete_time IS NULL AND enabled RETURNING {_columns()}"
)


def _key(namespace: str, session: str) -> dict[str, str]:
    """The parameters of `KEY`."""
    return {"p_namespace": namespace, "p_session": session}


async def get(db: Database, namespace: str, session: str) -> Row:
    row: Row | None
    if db.hot is not None:
        row = await db.hot.fetchrow(_GET_SQL, namespace, session)
    else:
        row = await db.query(row_in, namespace, session)
    if row is None:
        raise errors.not_found(Resource.SESSION, _name(namespace, session))
    return row


def row_in(conn: Connection, namespace: str, session: str, *, lock: bool = False) -> Row | None:
    """The session row in `conn`'s transaction, or None; with `lock`, locked until it ends
    (PostgreSQL; SQLite's one writer needs no row locks)."""
    stmt = _GET_FOR_UPDATE if lock else _SELECT_BY_KEY
    row: Row | None = conn.execute(stmt, _key(namespace, session)).mappings().first()
    return row


async def batch_get(db: Database, namespace: str, ids: Sequence[str]) -> list[Row]:
    """All or nothing, in request order (duplicates allowed)."""
    stmt = select(sessions).where(sessions.c.namespace == namespace, sessions.c.session.in_(set(ids)))
    async with db.read() as conn:
        rows = {row["session"]: row for row in (await conn.execute(stmt)).mappings()}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise errors.ApiError(
            Reason.SESSION_NOT_FOUND,
            f"{len(missing)} session(s) not found: " + ", ".join(_name(namespace, m) for m in missing[:10]),
            metadata={"resource_name": _name(namespace, missing[0])},
        )
    return [rows[i] for i in ids]


# CreateSession on PostgreSQL: one autocommit statement. The INSERT happens only if
# every referenced participant exists in the namespace, is live and enabled and has
# the right kind; ON CONFLICT covers the id and the live keys; a second data-modifying
# CTE adds the automatic members, a third claims the request id (if any). A request
# id claimed already fails the whole statement on the claim's primary key (a
# concurrent duplicate waits there for the first to commit). No row back:
# `check_participants` and `_raise_create_conflict` say why.
# Left to their defaults on insert.
_DEFAULTED = ("delete_time", "purge_time", "version", "event_count", "last_sequence", "revision")
_NEW_COLUMNS = [c for c in sessions.columns if c.name not in _DEFAULTED]


def _create_sql() -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    casts = {c.name: f"${i}::{c.type.compile(dialect=dialect)}" for i, c in enumerate(_NEW_COLUMNS, 1)}
    agent_kind, user_kind = participant_pb2.Participant.KIND_AGENT, participant_pb2.Participant.KIND_USER
    owner, member = session_pb2.Member.ROLE_OWNER, session_pb2.Member.ROLE_MEMBER

    def usable(field: str, kind: int) -> str:
        return (
            f"EXISTS (SELECT 1 FROM participants p WHERE p.namespace = {casts['namespace']} "
            f"AND p.participant = {casts[field]} AND p.kind = {kind} AND p.delete_time IS NULL AND p.enabled)"
        )

    columns = ", ".join(f'"{c.name}"' for c in _NEW_COLUMNS)
    return (
        f"WITH inserted AS (INSERT INTO sessions ({columns}) SELECT {', '.join(casts.values())} "
        f"WHERE {usable('agent', agent_kind)} "
        f"AND ({casts['user']} IS NULL OR {usable('user', user_kind)}) "
        f"AND ({casts['peer_agent']} IS NULL OR {usable('peer_agent', agent_kind)}) "
        f"ON CONFLICT DO NOTHING RETURNING *), "
        "added_members AS (INSERT INTO members "
        "(namespace, session, participant, role, join_time, update_time) "
        "SELECT i.namespace, i.session, m.participant, m.role, i.create_time, i.create_time FROM inserted i "
        f"CROSS JOIN (VALUES ({casts['agent']}, {owner}), ({casts['user']}, {member}), "
        f"({casts['peer_agent']}, {member})) AS m (participant, role) WHERE m.participant IS NOT NULL), "
        f"{idempotency_db.claim_cte('inserted', len(_NEW_COLUMNS) + 1)} "
        f"SELECT {_columns()} FROM inserted"
    )


_CREATE_SQL = _create_sql()


def _create_args(values: dict[str, Any], claim: idempotency_db.Claim | None) -> list[Any]:
    args = [values.get(c.name) for c in _NEW_COLUMNS]
    return [*args, *idempotency_db.claim_args(claim, _name(values["namespace"], values["session"]))]


async def create(
    db: Database,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
    *,
    validate_only: bool = False,
) -> Row:
    """Insert a session and its automatic members, atomically, claiming the request id
    (if any) with them; Replayed when the request id was claimed before."""
    if validate_only:
        await db.query(check_participants_in, values["namespace"], refs)
        return values
    if db.hot is not None:
        return await _create_in_one_statement(db, values, refs, claim)
    return await db.write(_create_in, values, refs, claim)


# CreateSession on SQLite (and wherever the hot pool is not used): the same guarded
# INSERT as `_CREATE_SQL` as a Core statement built once per dialect; the members and the
# claim follow in the same transaction.
_NEW = {c.name: bindparam(f"n_{c.name}", type_=c.type) for c in _NEW_COLUMNS}


def _usable(field: str, kind: int) -> ColumnElement[bool]:
    """The participant the new session's `field` names is usable for it."""
    return exists().where(
        participants.c.namespace == _NEW["namespace"],
        participants.c.participant == _NEW[field],
        participants.c.kind == kind,
        participants.c.delete_time.is_(None),
        participants.c.enabled.is_(True),
    )


def _guarded_insert(dialect_insert: Any) -> Any:
    agent, user = participant_pb2.Participant.KIND_AGENT, participant_pb2.Participant.KIND_USER
    guarded = select(*_NEW.values()).where(
        _usable("agent", agent),
        or_(_NEW["user"].is_(None), _usable("user", user)),
        or_(_NEW["peer_agent"].is_(None), _usable("peer_agent", agent)),
    )
    return (
        dialect_insert(sessions).from_select(list(_NEW), guarded).on_conflict_do_nothing().returning(sessions)
    )


_GUARDED_INSERT = {"sqlite": _guarded_insert(sqlite.insert), "postgresql": _guarded_insert(postgresql.insert)}
_ADD_MEMBERS = insert(members)


def _create_in(
    conn: Connection,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
) -> Row:
    params = {f"n_{column}": value for column, value in values.items()}
    row: Row | None = conn.execute(_GUARDED_INSERT[conn.dialect.name], params).mappings().first()
    if row is None:
        _explain_refused_create(conn, values, refs, claim)
        raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")
    conn.execute(_ADD_MEMBERS, member_rows(values))
    idempotency_db.record(conn, claim, _name(values["namespace"], values["session"]))
    return row


async def _create_in_one_statement(
    db: Database, values: dict[str, Any], refs: Sequence[ParticipantRef], claim: idempotency_db.Claim | None
) -> Row:
    for _ in range(3):
        row = await _insert_new(db, values, claim)
        if row is not None:
            return row
        await db.query(_explain_refused_create, values, refs, claim)
        # Nothing in the way any more (it changed meanwhile): try again.
    raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the participants changed concurrently; retry")


def _explain_refused_create(
    conn: Connection,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
    *,
    conflicts: bool = True,
) -> None:
    """Raise why the create of `values` was refused (a retry, a participant, and with
    `conflicts` the id or a live key); returns if nothing stands in the way now."""
    idempotency_db.raise_if_taken(conn, claim)
    check_participants_in(conn, values["namespace"], refs)
    if conflicts:
        _raise_create_conflict(conn, values)


async def _insert_new(db: Database, values: dict[str, Any], claim: idempotency_db.Claim | None) -> Row | None:
    """Run `_CREATE_SQL` (PostgreSQL): the new session, or None when it was refused.
    Replayed (or REQUEST_ID_CONFLICT) when the claim collides."""
    try:
        return await idempotency_db.fetch_claiming(db, claim, _CREATE_SQL, *_create_args(values, claim))
    except asyncpg.IntegrityConstraintViolationError as exc:
        # A participant removed between the check and the insert: the caller explains it.
        if constraint_kind(exc) != "foreign_key":
            raise
        return None


async def find_or_create(
    db: Database,
    target: ConflictTarget,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
    *,
    fixed: Mapping[str, Any],
    undelete_if_deleted: bool,
) -> tuple[Row, bool]:
    """The live session for a key, else a restored or new one. Atomic: the
    insert is guarded by the key's partial unique index. A session found writes
    nothing; one created (or restored) claims the request id with it, and a retry
    of that call answers `created = true` (the lookup reads the claim).

    `fixed`: the columns fixed at creation that the caller's template sets, with
    its values. A session found (or restored) with other values is refused
    (TEMPLATE_MISMATCH), whichever caller created it: every found row is
    compared after it is read, and a restore is compared before its
    transaction commits."""
    existing: Row | None
    if db.hot is not None:
        existing = await db.hot.fetchrow(target.lookup_sql, *target.hot_args(claim))
    else:
        existing = await db.query(_lookup, target, claim)
    if existing is not None:  # the hot path: the key usually exists
        return _found(existing, claim, fixed)
    if db.hot is not None and not undelete_if_deleted:
        return await _create_or_find(db, target, values, refs, claim, fixed)
    for _ in range(3):
        try:
            return await db.write(find_or_create_in, target, values, refs, claim, fixed, undelete_if_deleted)
        except IntegrityError as exc:
            # A concurrent caller created the live session while we restored an
            # old one; the next round finds theirs.
            if constraint_kind(exc) != "unique":
                raise
        except NeitherFoundNorCreatedError:
            pass
    raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")


class NeitherFoundNorCreatedError(Exception):
    """Neither found nor created (a concurrent change in between): try again."""


def find_or_create_in(
    conn: Connection,
    target: ConflictTarget,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
    fixed: Mapping[str, Any],
    undelete_if_deleted: bool,
) -> tuple[Row, bool]:
    """One transaction of `find_or_create` after its lookup missed."""
    found = _lookup(conn, target, claim)
    if found is not None:
        return _found(found, claim, fixed)
    idempotency_db.raise_if_taken(conn, claim)  # created, and deleted since
    if undelete_if_deleted:
        restored = _undelete_latest(conn, target)
        if restored is not None:
            idempotency_db.record(conn, claim, _name(restored["namespace"], restored["session"]))
            return _matching(restored, fixed), True  # a mismatch rolls the restore back
    check_participants_in(conn, values["namespace"], refs)
    insert = (
        insert_for(conn, sessions)
        .values(values)
        .on_conflict_do_nothing(index_elements=target.index_elements, index_where=target.index_where)
        .returning(sessions)
    )
    created = conn.execute(insert).mappings().first()
    if created is not None:
        conn.execute(insert_for(conn, members), member_rows(values))
        idempotency_db.record(conn, claim, _name(values["namespace"], values["session"]))
        return created, True
    found = _lookup(conn, target, claim)
    if found is None:
        raise NeitherFoundNorCreatedError
    return _found(found, claim, fixed)


def _lookup(conn: Connection, target: ConflictTarget, claim: idempotency_db.Claim | None) -> Row | None:
    params = {**target.params, **idempotency_db.claim_params(target.key["namespace"], claim)}
    row: Row | None = conn.execute(target.lookup, params).mappings().first()
    return row


def _found(row: Row, claim: idempotency_db.Claim | None, fixed: Mapping[str, Any]) -> tuple[Row, bool]:
    """A live session found for the key: not created, unless this call's request id
    created it (a retry); Replayed when the request id created another one."""
    claimed = idempotency_db.claimed_by(claim, row)
    if claimed is None:
        return _matching(row, fixed), False
    if claimed != _name(row["namespace"], row["session"]):
        raise idempotency_db.Replayed(claimed)
    return row, True


async def _create_or_find(
    db: Database,
    target: ConflictTarget,
    values: dict[str, Any],
    refs: Sequence[ParticipantRef],
    claim: idempotency_db.Claim | None,
    fixed: Mapping[str, Any],
) -> tuple[Row, bool]:
    """PostgreSQL, after the lookup missed: the one-statement create, whose ON
    CONFLICT on the key's unique index lets a concurrent creator win; then
    that caller's session. No transaction needed: each step is atomic."""
    assert db.hot is not None
    for _ in range(3):
        created = await _insert_new(db, values, claim)
        if created is not None:
            return created, True
        found = await db.hot.fetchrow(target.lookup_sql, *target.hot_args(claim))
        if found is not None:
            return _found(found, claim, fixed)
        # Refused, and not for the key (the lookup would have found it): say why.
        await db.query(_explain_refused_create, values, refs, claim, conflicts=False)
    raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")


def _matching(row: Row, fixed: Mapping[str, Any]) -> Row:
    """`row`, unless it contradicts what the template fixes (TEMPLATE_MISMATCH)."""
    wrong = [column for column, value in fixed.items() if row[column] != value]
    if not wrong:
        return row
    name = _name(row["namespace"], row["session"])
    paths = [f"session.{column}" for column in wrong]
    shown = "; ".join(
        f"{path} is {_shown(row, column, row[column])} there, "
        f"{_shown(row, column, fixed[column])} in the template"
        for path, column in zip(paths, wrong, strict=True)
    )
    raise errors.ApiError(
        Reason.TEMPLATE_MISMATCH,
        f"the session {name!r} found for this key contradicts the template ({shown}); kind, user and "
        "peer_agent are fixed at creation: leave them out of the template to accept this session",
        metadata={"resource_name": name, "fields": ",".join(paths)},
    )


def _shown(row: Row, column: str, value: Any) -> str:
    """A session column's value as a caller knows it: a kind name, a participant name."""
    if column == "kind":
        return session_pb2.Session.Kind.Name(value).removeprefix("KIND_")
    return repr(names.participant_name(row["namespace"], value)) if value else "unset"


def _undelete_latest(conn: Connection, target: ConflictTarget) -> Row | None:
    latest = (
        select(sessions.c.namespace, sessions.c.session)
        .where(target.where(), sessions.c.delete_time.is_not(None))
        .order_by(sessions.c.delete_time.desc())
        .limit(1)
    )
    match = conn.execute(latest).first()
    if match is None:
        return None
    stmt = (
        update(sessions)
        .where(_pk(match.namespace, match.session), sessions.c.delete_time.is_not(None))
        .values(delete_time=None, purge_time=None, update_time=utcnow(), version=sessions.c.version + 1)
        .returning(sessions)
    )
    row: Row | None = conn.execute(stmt).mappings().first()
    return row


async def record_activity(db: Database, namespace: str, session: str, when: datetime) -> Row:
    """last_activity_time = max(current, when), in one statement; the etag stays."""
    row: Row | None
    if db.hot is not None:
        row = await db.hot.fetchrow(_RECORD_ACTIVITY_SQL, namespace, session, when)
    else:
        row = await db.write(_record_activity_in, namespace, session, when)
    if row is None:
        # Why not: missing, deleted or disabled (if it changed since, the caller retries).
        raise_not_live(await get(db, namespace, session))
        raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")
    return row


def _record_activity_in(conn: Connection, namespace: str, session: str, when: datetime) -> Row | None:
    params = {**_key(namespace, session), "p_when": when}
    row: Row | None = conn.execute(_RECORD_ACTIVITY, params).mappings().first()
    return row


async def update_session(
    db: Database,
    namespace: str,
    session: str,
    values: dict[str, Any],
    unchanged: dict[str, Any],
    condition: WriteCondition,
) -> Row:
    """Write `values` in one conditional statement. Every column in `unchanged`
    must still hold its value (immutable fields the caller sent back), the etag
    must match, the session must be live and enabled (unless this very update
    enables it), and only a GROUP session takes a non-empty group_name."""
    if not values:
        return await _check_unchanged(db, namespace, session, unchanged, condition)
    conditions = [_pk(namespace, session), sessions.c.delete_time.is_(None)]
    conditions += [sessions.c[column] == value for column, value in unchanged.items()]
    if values.get("enabled") is not True:
        conditions.append(sessions.c.enabled.is_(True))
    if values.get("group_name"):
        conditions.append(sessions.c.kind == session_pb2.Session.KIND_GROUP)
    conditions += condition.clauses(sessions)
    stmt = (
        update(sessions)
        .where(*conditions)
        .values(**values, update_time=utcnow(), version=sessions.c.version + 1)
        .returning(sessions)
    )
    try:
        async with db.statement() as conn:
            row: Row | None = (await conn.execute(stmt)).mappings().first()
            if row is None:
                _explain_refused_update(await get_in(conn, namespace, session), values, unchanged, condition)
    except IntegrityError as exc:
        if constraint_kind(exc) == "unique":
            raise _conversation_taken() from None
        raise
    assert row is not None
    return row


def _explain_refused_update(
    current: Row, values: dict[str, Any], unchanged: dict[str, Any], condition: WriteCondition
) -> NoReturn:
    """Why the conditional UPDATE matched no row (it exists: `current`)."""
    condition.check(_name(current["namespace"], current["session"]), current)
    if current["delete_time"] is not None:
        raise deleted_error(current)
    if not current["enabled"] and values.get("enabled") is not True:
        raise_not_live(current)
    bad = _immutable_changes(current, unchanged)
    if bad:
        raise errors.invalid_argument(bad, reason=Reason.IMMUTABLE_FIELD)
    raise errors.bad_field("session.group_name", "only GROUP sessions have a group_name")


def _immutable_changes(current: Row, unchanged: dict[str, Any]) -> list[errors.FieldViolation]:
    return [
        errors.FieldViolation(f"session.{c}", "is immutable") for c, v in unchanged.items() if current[c] != v
    ]


async def _check_unchanged(
    db: Database, namespace: str, session: str, unchanged: dict[str, Any], condition: WriteCondition
) -> Row:
    """An update that writes nothing: only check what the caller sent back."""
    async with db.read() as conn:
        current = await get_in(conn, namespace, session)
    condition.check(_name(namespace, session), current)
    bad = _immutable_changes(current, unchanged)
    if bad:
        raise errors.invalid_argument(bad, reason=Reason.IMMUTABLE_FIELD)
    return current


async def soft_delete(db: Database, namespace: str, session: str, condition: WriteCondition) -> Row:
    now = utcnow()
    stmt = (
        update(sessions)
        .where(_pk(namespace, session), sessions.c.delete_time.is_(None), *condition.clauses(sessions))
        .values(
            delete_time=now, purge_time=now + db.retention, update_time=now, version=sessions.c.version + 1
        )
        .returning(sessions)
    )
    async with db.statement() as conn:
        row: Row | None = (await conn.execute(stmt)).mappings().first()
        if row is None:
            current = await get_in(conn, namespace, session)
            condition.check(_name(namespace, session), current)
            raise deleted_error(current)
    assert row is not None
    return row


async def undelete(db: Database, namespace: str, session: str, condition: WriteCondition) -> Row:
    stmt = (
        update(sessions)
        .where(_pk(namespace, session), sessions.c.delete_time.is_not(None), *condition.clauses(sessions))
        .values(delete_time=None, purge_time=None, update_time=utcnow(), version=sessions.c.version + 1)
        .returning(sessions)
    )
    try:
        async with db.statement() as conn:
            row: Row | None = (await conn.execute(stmt)).mappings().first()
            if row is None:
                current = await get_in(conn, namespace, session)
                condition.check(_name(namespace, session), current)
                raise errors.already_exists(
                    Resource.SESSION, _name(namespace, session), message="session is not deleted"
                )
    except IntegrityError as exc:
        if constraint_kind(exc) == "unique":
            raise _conversation_taken() from None
        raise
    assert row is not None
    return row


async def check_participants(conn: AsyncConnection, namespace: str, refs: Sequence[ParticipantRef]) -> None:
    """`check_participants_in` on an async connection."""
    await conn.run_sync(check_participants_in, namespace, refs)


def check_participants_in(conn: Connection, namespace: str, refs: Sequence[ParticipantRef]) -> None:
    """Each referenced participant exists in the namespace, has the right kind,
    and is live and enabled. Fails with every bad field at once."""
    if not refs:
        return
    stmt = select(
        participants.c.participant, participants.c.kind, participants.c.enabled, participants.c.delete_time
    ).where(
        participants.c.namespace == namespace,
        participants.c.participant.in_({ref.participant for ref in refs}),
    )
    found = {row.participant: row for row in conn.execute(stmt)}
    missing = [ref for ref in refs if ref.participant not in found]
    if missing:
        if not _namespace_exists(conn, namespace):
            raise errors.not_found(Resource.NAMESPACE, names.namespace_name(namespace))
        ref = missing[0]
        raise errors.ApiError(
            Reason.PARTICIPANT_NOT_FOUND,
            f"{ref.field}: participant {names.participant_name(namespace, ref.participant)!r} not found",
            metadata={
                "field": ref.field,
                "resource_name": names.participant_name(namespace, ref.participant),
            },
        )
    wrong_kind = [
        errors.FieldViolation(
            ref.field, f"must be {errors.with_article(_KIND_NAMES.get(ref.kind, '?'))} participant"
        )
        for ref in refs
        if ref.kind and found[ref.participant].kind != ref.kind
    ]
    if wrong_kind:
        raise errors.ApiError(
            Reason.WRONG_PARTICIPANT_KIND,
            "; ".join(f"{v.field}: {v.description}" for v in wrong_kind),
            violations=wrong_kind,
        )
    for ref in refs:
        row = found[ref.participant]
        name = names.participant_name(namespace, ref.participant)
        if row.delete_time is not None:
            raise errors.ApiError(
                Reason.PARTICIPANT_DELETED,
                f"{ref.field}: participant {name!r} is deleted",
                metadata={"resource_name": name},
            )
        if not row.enabled:
            raise errors.ApiError(
                Reason.PARTICIPANT_DISABLED,
                f"{ref.field}: participant {name!r} is disabled",
                metadata={"resource_name": name},
            )


def _namespace_exists(conn: Connection, namespace: str) -> bool:
    stmt = select(namespaces.c.namespace).where(namespaces.c.namespace == namespace)
    return conn.execute(stmt).first() is not None


async def get_in(conn: AsyncConnection, namespace: str, session: str, *, lock: bool = False) -> Row:
    """The session row; with `lock`, locked against concurrent writes until commit."""
    stmt = _GET_FOR_UPDATE if lock else _SELECT_BY_KEY
    row: Row | None = (await conn.execute(stmt, _key(namespace, session))).mappings().first()
    if row is None:
        raise errors.not_found(Resource.SESSION, _name(namespace, session))
    return row


async def live_session(conn: AsyncConnection, namespace: str, session: str) -> Row:
    """The session, which must be neither deleted nor disabled."""
    row = await get_in(conn, namespace, session)
    raise_not_live(row)
    return row


def raise_not_live(row: Row) -> None:
    if row["delete_time"] is not None:
        raise deleted_error(row)
    if not row["enabled"]:
        name = _name(row["namespace"], row["session"])
        raise errors.ApiError(
            Reason.SESSION_DISABLED, f"session {name!r} is disabled", metadata={"resource_name": name}
        )


def deleted_error(row: Row) -> errors.ApiError:
    name = _name(row["namespace"], row["session"])
    return errors.ApiError(
        Reason.SESSION_DELETED, f"session {name!r} is deleted", metadata={"resource_name": name}
    )


def _conversation_taken() -> errors.ApiError:
    return errors.ApiError(
        Reason.CONVERSATION_ALREADY_EXISTS,
        "a live session already has this agent + channel + external_conversation_id (or agent pair)",
    )


def _raise_create_conflict(conn: Connection, values: dict[str, Any]) -> None:
    """Raise why the insert of `values` conflicted: the session id is taken, or a
    live session has its conversation or agent pair. Returns if neither holds."""
    namespace, session = values["namespace"], values["session"]
    if conn.execute(select(sessions.c.uid).where(_pk(namespace, session))).first() is not None:
        raise errors.already_exists(Resource.SESSION, _name(namespace, session))
    live_keys = []
    if values.get("external_conversation_id") is not None:
        live_keys.append(
            and_(
                sessions.c.agent == values["agent"],
                sessions.c.channel == values["channel"],
                sessions.c.external_conversation_id == values["external_conversation_id"],
            )
        )
    if values.get("agent_pair") is not None:
        live_keys.append(sessions.c.agent_pair == values["agent_pair"])
    if live_keys:
        taken = select(sessions.c.uid).where(
            sessions.c.namespace == namespace, sessions.c.delete_time.is_(None), or_(*live_keys)
        )
        if conn.execute(taken.limit(1)).first() is not None:
            raise _conversation_taken()
