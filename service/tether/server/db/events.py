"""Event statements: the conversation log of a session (DESIGN.md "Event").

An append takes the session's next sequence (`last_sequence + 1`) under the session
row's lock, so appends to one session serialize on that row and sequences are gapless
at append time, while appends to different sessions never wait on each other. The
same write merges the event's `state_delta` into `session_state` (RFC 7396: SQLite's
`json_patch`, PostgreSQL's `tether_merge_patch` from migration 0004), moves
`last_activity_time`, `event_count` and, when the state or the membership changed, the
etag, and adds an author who is not a member of a GROUP or TRIGGER session.

On PostgreSQL the common case (the session and author exist) is one statement
(`_fast_sql`). Anything else (a session or author to create, or a refusal to
explain) runs `_append_in` in one transaction, as every append does on SQLite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    LargeBinary,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tether.server import errors, names
from tether.server.db import idempotency as idempotency_db
from tether.server.db import namespaces as namespace_db
from tether.server.db import participants as participant_db
from tether.server.db import sessions as session_db
from tether.server.db.base import Database, Row, constraint_kind
from tether.server.db.schema import MERGE_PATCH_FUNCTION, UTCDateTime, events, members, participants, sessions
from tether.server.db.write_condition import managed_refused
from tether.server.domain.validation import MAX_SESSION_STATE_BYTES
from tether.server.errors import Reason, Resource
from tether.v1 import participant_pb2, session_pb2

GROUP, TRIGGER = session_pb2.Session.KIND_GROUP, session_pb2.Session.KIND_TRIGGER
# Kinds whose non-member authors join (as MEMBER) instead of being refused.
JOINABLE_KINDS = (GROUP, TRIGGER)
EVENT_INDEX = "uq_events_event"
# Events a PurgeEvents transaction deletes at most (see `purge`).
PURGE_BATCH = 10_000
# Events a PurgeEvents transaction deletes at most (see `purge`).
PURGE_BATCH = 10_000
PURGE_SAMPLE = 100


@dataclass(frozen=True)
class SessionKey:
    """A session to find, or create from `values`/`refs`, by a live unique key."""

    target: session_db.ConflictTarget
    values: dict[str, Any]
    refs: Sequence[session_db.ParticipantRef]
    fixed: Mapping[str, Any]
    # A new DIRECT session's `user` is the author (as found or created by this call).
    user_from_author: bool = False

    def with_user(self, user: str) -> SessionKey:
        values = {**self.values, "user": user}
        refs = [r for r in self.refs if r.field != "session.user"]
        refs.append(session_db.ParticipantRef("session.user", user, participant_pb2.Participant.KIND_USER))
        return SessionKey(self.target, values, refs, self.fixed)


@dataclass(frozen=True)
class AuthorKey:
    """An author to find, or create from `values` (a participants row), by kind + external id."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Append:
    """One AppendEvent: where, by whom, what (`event`: the events row but its sequence)."""

    namespace: str
    session: str | None  # by name, or else `session_key`
    session_key: SessionKey | None
    author: str | None  # by participant id, or else `author_key`, or neither: a system event
    author_key: AuthorKey | None
    event: dict[str, Any]
    expected_last_sequence: int | None
    may_manage: bool
    claim: idempotency_db.Claim | None

    @property
    def delta(self) -> dict[str, Any] | None:
        delta: dict[str, Any] | None = self.event["state_delta"]
        return delta


@dataclass
class Appended:
    """What AppendEvent answers: the event and the session right after it."""

    event: Row
    session: Row
    session_created: bool = False
    author_created: bool = False

    def also_created(self) -> str:
        """The response flags that are true, as a request id's claim keeps them."""
        flags = (("session_created", self.session_created), ("author_created", self.author_created))
        return ",".join(flag for flag, made in flags if made)


def event_name(row: Row) -> str:
    return names.event_name(row["namespace"], row["session"], row["event"])


# --- PostgreSQL: the append as one statement -----------------------------------------------


class _Numbered:
    """SQL written with `:name` parameters, numbered `$1, $2 ...` for asyncpg."""

    def __init__(self, text: str) -> None:
        self.order: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.order:
                self.order.append(name)
            return f"${self.order.index(name) + 1}"

        self.text = re.sub(r"(?<![:\w]):([a-z_]+)", number, text)

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.order]


_SESSION_BY = {
    "name": "t.session = :session::varchar",
    "conversation": (
        "t.agent = :agent::varchar AND t.channel = :channel::varchar "
        "AND t.external_conversation_id = :conversation::text"
    ),
    "pair": "t.agent_pair = :pair::text",
}
# A key's session must also have what the template fixes (else the transaction explains).
_FIXED = (
    " AND (:fixed_kind::smallint IS NULL OR t.kind = :fixed_kind::smallint)"
    ' AND (:fixed_user::varchar IS NULL OR t."user" = :fixed_user::varchar)'
    " AND (:fixed_peer::varchar IS NULL OR t.peer_agent = :fixed_peer::varchar)"
)
_AUTHOR_BY = {
    "name": "participant = :author::varchar",
    "key": "kind = :author_kind::smallint AND external_id = :author_external_id::text",
}
_EVENT_COLUMNS = [c.name for c in events.columns]
_SESSION_COLUMNS = [c.name for c in sessions.columns]


@cache
def _fast_sql(session_by: str, author_by: str | None) -> _Numbered:
    """The one-statement append (PostgreSQL): lock the live, enabled session (`s`, which
    also merges the state), check the author (`a`) and every condition (`g`), add a
    joining author (`m`), move the session (`u`), insert the event (`e`), claim the
    request id. No row back: something is missing or in the way, and `_append_in` says
    what (or does it).

    The author row is read, not locked: the check and the write are one statement, so a
    concurrent disable or soft delete simply comes after the append (the events foreign
    key's own KEY SHARE lock still stops a purge). A FOR SHARE would write a lock into
    the author's row on every message, and make one author's parallel messages share
    a MultiXact."""
    where = _SESSION_BY[session_by] + (_FIXED if session_by != "name" else "")
    merged = (
        "CASE WHEN :delta::jsonb IS NULL THEN t.session_state "
        f"ELSE {MERGE_PATCH_FUNCTION}(COALESCE(t.session_state, '{{}}'::jsonb), :delta::jsonb) END"
    )
    parts = []
    if author_by is not None:
        parts.append(
            "a AS (SELECT participant, managed FROM participants WHERE namespace = :ns::varchar "
            f"AND {_AUTHOR_BY[author_by]} AND delete_time IS NULL AND enabled)"
        )
        is_member = (
            "EXISTS (SELECT 1 FROM members mm, a WHERE mm.namespace = t.namespace "
            "AND mm.session = t.session AND mm.participant = a.participant)"
        )
        author_ok = (
            "EXISTS (SELECT 1 FROM a) AND (s.is_member OR (s.kind IN ({}) AND (:may_manage::boolean "
            "OR NOT (s.managed OR (SELECT managed FROM a)))))"
        ).format(", ".join(str(k) for k in JOINABLE_KINDS))
        joined = "(SELECT count(*) FROM m)"
        author = "(SELECT participant FROM a)"
    else:
        is_member, author_ok, joined, author = "true", "true", "0", "NULL::varchar"
    parts.append(
        "s AS (SELECT t.namespace, t.session, t.kind, t.managed, t.session_state, "
        f"{merged} AS new_state, {is_member} AS is_member FROM sessions t "
        f"WHERE t.namespace = :ns::varchar AND {where} AND t.delete_time IS NULL AND t.enabled "
        "AND (:expected::bigint IS NULL OR t.last_sequence = :expected::bigint) FOR UPDATE OF t)"
    )
    parts.append(
        f"g AS (SELECT * FROM s WHERE {author_ok} "
        "AND (:delta::jsonb IS NULL OR octet_length(s.new_state::text) <= :max_state::integer))"
    )
    if author_by is not None:
        parts.append(
            "m AS (INSERT INTO members (namespace, session, participant, role, join_time, update_time) "
            "SELECT g.namespace, g.session, a.participant, :member_role::smallint, :now::timestamptz, "
            ":now::timestamptz FROM g, a WHERE NOT g.is_member ON CONFLICT DO NOTHING RETURNING participant)"
        )
    changed = (
        f"(COALESCE(g.new_state, '{{}}'::jsonb) IS DISTINCT FROM COALESCE(g.session_state, '{{}}'::jsonb) "
        f"OR {joined} > 0)"
    )
    parts.append(
        "u AS (UPDATE sessions SET last_sequence = sessions.last_sequence + 1, "
        "event_count = sessions.event_count + 1, "
        "last_activity_time = GREATEST(sessions.last_activity_time, :event_time::timestamptz), "
        f"session_state = g.new_state, member_count = sessions.member_count + {joined}, "
        f"version = sessions.version + CASE WHEN {changed} THEN 1 ELSE 0 END, "
        f"update_time = CASE WHEN {changed} THEN :now::timestamptz ELSE sessions.update_time END "
        "FROM g WHERE sessions.namespace = g.namespace AND sessions.session = g.session RETURNING sessions.*)"
    )
    columns = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)
    parts.append(
        f"e AS (INSERT INTO events ({columns}) SELECT u.namespace, u.session, u.last_sequence, "
        f":event::varchar, :uid::varchar, {author}, :invocation_id::text, :branch::text, :labels::jsonb, "
        ":content::jsonb, :delta::jsonb, :event_time::timestamptz, :now::timestamptz FROM u RETURNING *)"
    )
    body = _Numbered("WITH " + ", ".join(parts))
    # The claim names the event from its row: by key, the session is known only here.
    resource = "'namespaces/' || e.namespace || '/sessions/' || e.session || '/events/' || e.event"
    claim = idempotency_db.claim_cte("e", len(body.order) + 1, resource_sql=resource)
    selected = ", ".join(
        [*(f'e."{c}" AS "ev_{c}"' for c in _EVENT_COLUMNS), *(f'u."{c}"' for c in _SESSION_COLUMNS)]
    )
    body.text = f"{body.text}, {claim} SELECT {selected} FROM e, u"
    return body


def _fast_args(plan: Append, statement: _Numbered) -> list[Any]:
    event = plan.event
    values: dict[str, Any] = {
        "ns": plan.namespace,
        "session": plan.session,
        "delta": plan.delta,
        "expected": plan.expected_last_sequence,
        "max_state": MAX_SESSION_STATE_BYTES,
        "may_manage": plan.may_manage,
        "member_role": session_pb2.Member.ROLE_MEMBER,
        "now": event["create_time"],
        "author": plan.author,
        **{column: event[column] for column in ("event", "uid", "invocation_id", "branch", "labels")},
        "content": event["content"],
        "event_time": event["event_time"],
    }
    if plan.author_key is not None:
        values["author_kind"] = plan.author_key.values["kind"]
        values["author_external_id"] = plan.author_key.values["external_id"]
    if plan.session_key is not None:
        key, fixed = plan.session_key.target.key, plan.session_key.fixed
        values.update(
            agent=key.get("agent"),
            channel=key.get("channel"),
            conversation=key.get("external_conversation_id"),
            pair=key.get("agent_pair"),
            fixed_kind=fixed.get("kind"),
            fixed_user=fixed.get("user"),
            fixed_peer=fixed.get("peer_agent"),
        )
    return [*statement.args(values), *idempotency_db.claim_args(plan.claim, None)]


def _split(row: Row) -> Appended:
    event = {key[3:]: value for key, value in row.items() if key.startswith("ev_")}
    session = {key: value for key, value in row.items() if not key.startswith("ev_")}
    return Appended(event, session)


async def _append_in_one_statement(db: Database, plan: Append) -> Appended | None:
    assert db.hot is not None
    if plan.session_key is not None:
        session_by = "pair" if plan.session_key.target.key.get("agent_pair") else "conversation"
    else:
        session_by = "name"
    author_by = "key" if plan.author_key is not None else ("name" if plan.author else None)
    statement = _fast_sql(session_by, author_by)
    try:
        args = _fast_args(plan, statement)
        row = await idempotency_db.fetch_claiming(db, plan.claim, statement.text, *args)
    except asyncpg.UniqueViolationError as exc:
        if getattr(exc, "constraint_name", None) == EVENT_INDEX:
            raise _event_taken(plan) from None
        raise
    return None if row is None else _split(row)


# --- The append as one transaction (SQLite; PostgreSQL when something is missing) ---------------


async def append(db: Database, plan: Append) -> Appended:
    """Append `plan`'s event; Replayed when its request id appended before."""
    if db.hot is not None:
        done = await _append_in_one_statement(db, plan)
        if done is not None:
            return done
    for _ in range(3):
        try:
            return await db.write(_append_in, plan)
        except IntegrityError as exc:
            kind = constraint_kind(exc)
            if kind == "foreign_key":
                await namespace_db.get(db, plan.namespace)  # a new author in a missing namespace
            if kind == "unique" and (EVENT_INDEX in str(exc.orig) or "events.event" in str(exc.orig)):
                raise _event_taken(plan) from None
            if kind == "other":
                raise
            # A concurrent creator of the session or author won, or a participant went away
            # meanwhile: the next round finds it, or says why not.
        except session_db.NeitherFoundNorCreatedError:
            pass
    raise errors.ApiError(Reason.CONCURRENT_CHANGE, "the session changed concurrently; retry")


# The session (locked on PostgreSQL), with what an append must know of its author: one read.
_AUTHOR = participants.alias("author")
_MEMBER = members.alias("member")
_LOCKED_WITH_AUTHOR = (
    select(
        sessions,
        _AUTHOR.c.participant.label("author_id"),
        _AUTHOR.c.enabled.label("author_enabled"),
        _AUTHOR.c.delete_time.label("author_delete_time"),
        _AUTHOR.c.managed.label("author_managed"),
        _MEMBER.c.participant.label("member_id"),
    )
    .select_from(
        sessions.outerjoin(
            _AUTHOR,
            and_(_AUTHOR.c.namespace == sessions.c.namespace, _AUTHOR.c.participant == bindparam("p_author")),
        ).outerjoin(
            _MEMBER,
            and_(
                _MEMBER.c.namespace == sessions.c.namespace,
                _MEMBER.c.session == sessions.c.session,
                _MEMBER.c.participant == bindparam("p_author"),
            ),
        )
    )
    .where(session_db.KEY)
    .with_for_update(of=sessions)
)


def _append_in(conn: Connection, plan: Append) -> Appended:
    """The append as one transaction: the author (found or created by key), the session
    (found or created by key), then one locked read of the session with its author and
    membership, the session's update, the event, the claim. A request id claimed before
    fails the claim at the end, which rolls the whole append back (Replayed)."""
    result = Appended({}, {})
    author = _author_in(conn, plan, result)
    session_id = plan.session
    if plan.session_key is not None:
        key = plan.session_key
        if key.user_from_author:
            assert author is not None
            key = key.with_user(author)  # a new DM's user is its author
        session_id = _session_by_key_in(conn, key, result)
    params = {"p_namespace": plan.namespace, "p_session": session_id, "p_author": author}
    session: Row | None = conn.execute(_LOCKED_WITH_AUTHOR, params).mappings().first()
    if session is None:
        raise errors.not_found(Resource.SESSION, names.session_name(plan.namespace, session_id or ""))
    if author is not None and (
        session["author_id"] is None
        or session["author_delete_time"] is not None
        or not session["author_enabled"]
    ):
        ref = session_db.ParticipantRef(_author_field(plan), author, kind=0)
        session_db.check_participants_in(conn, plan.namespace, [ref])  # says what is wrong with it
    _check_appendable(session, plan)
    joins = author is not None and session["member_id"] is None
    if joins:
        assert author is not None
        _check_may_join(session, author, plan)
    updated = conn.execute(
        _session_update(conn, plan.delta is not None), _update_params(conn, plan, session, joins)
    )
    row = updated.mappings().first()
    if row is None:
        raise _state_too_large(session)
    if joins:
        conn.execute(
            members.insert().values(
                namespace=plan.namespace,
                session=session["session"],
                participant=author,
                role=session_pb2.Member.ROLE_MEMBER,
                join_time=plan.event["create_time"],
                update_time=plan.event["create_time"],
            )
        )
    event = {
        **plan.event,
        "namespace": plan.namespace,
        "session": session["session"],
        "sequence": row["last_sequence"],
        "author": author,
    }
    conn.execute(events.insert(), event)  # every column given: the row is `event`
    result.event, result.session = event, row
    idempotency_db.record(conn, plan.claim, event_name(event), also_created=result.also_created())
    return result


def _session_by_key_in(conn: Connection, key: SessionKey, result: Appended) -> str:
    """The id of the live session for the key, created if there is none."""
    found, created = session_db.find_or_create_in(
        conn, key.target, key.values, key.refs, None, key.fixed, False
    )
    result.session_created = created
    session: str = found["session"]
    return session


def _author_in(conn: Connection, plan: Append, result: Appended) -> str | None:
    """The author's participant id (None: a system event): named, or found (or created) by key."""
    if plan.author_key is None:
        return plan.author
    values = plan.author_key.values
    found = participant_db.lookup_in(conn, values, None)  # the common case: one read
    if found is None:
        found, created = participant_db.create_or_find_in(conn, values, None)
        result.author_created = created
    author: str = found["participant"]
    return author


def _check_appendable(session: Row, plan: Append) -> None:
    session_db.raise_not_live(session)
    expected = plan.expected_last_sequence
    if expected is not None and session["last_sequence"] != expected:
        name = names.session_name(session["namespace"], session["session"])
        raise errors.ApiError(
            Reason.STALE_SEQUENCE,
            f"session {name!r} has last sequence {session['last_sequence']}, not {expected}: "
            "another event was appended since; read again and retry",
            metadata={"resource_name": name, "last_sequence": str(session["last_sequence"])},
        )


def _author_field(plan: Append) -> str:
    """The request field the author came from, for messages."""
    return "author_key" if plan.author_key is not None else "event.author"


def _check_may_join(session: Row, author: str, plan: Append) -> None:
    """An author who is not a member joins a GROUP or TRIGGER session (changing its membership:
    of a managed session or participant only by a system caller); elsewhere NOT_A_MEMBER."""
    namespace = session["namespace"]
    author_name = names.participant_name(namespace, author)
    name = names.session_name(namespace, session["session"])
    if session["kind"] not in JOINABLE_KINDS:
        kind = session_pb2.Session.Kind.Name(session["kind"]).removeprefix("KIND_")
        raise errors.ApiError(
            Reason.NOT_A_MEMBER,
            f"{_author_field(plan)}: {author_name!r} is not a member of the {kind} session {name!r}; "
            "only GROUP and TRIGGER sessions take new members by AppendEvent (use AddMember)",
            metadata={"resource_name": author_name, "session": name},
        )
    if plan.may_manage:
        return
    if session["managed"]:
        raise managed_refused(name)
    if session["author_managed"]:
        raise managed_refused(author_name)


def _merged_state(dialect: str) -> ColumnElement[Any]:
    """The session's state with the event's delta merged in (RFC 7396)."""
    if dialect == "postgresql":
        delta: ColumnElement[Any] = bindparam("p_delta", type_=JSONB)
        current = func.coalesce(sessions.c.session_state, literal_column("'{}'::jsonb"))
        merged: ColumnElement[Any] = getattr(func, MERGE_PATCH_FUNCTION)(
            current, delta, type_=sessions.c.session_state.type
        )
        return merged
    current = func.coalesce(sessions.c.session_state, literal_column("'{}'"))
    return func.json_patch(current, bindparam("p_delta", type_=Text), type_=sessions.c.session_state.type)


def _state_size(dialect: str, state: ColumnElement[Any]) -> ColumnElement[int]:
    """The merged state's JSON text in bytes, as the fast statement measures it."""
    if dialect == "postgresql":
        return func.octet_length(cast(state, Text))
    return func.length(cast(state, LargeBinary))


def _state_changed(dialect: str, state: ColumnElement[Any]) -> ColumnElement[bool]:
    if dialect == "postgresql":
        current = func.coalesce(sessions.c.session_state, literal_column("'{}'::jsonb"))
        return state.is_distinct_from(current)
    # SQLite keeps JSON as text: compare the minified forms.
    return func.json(state) != func.json(func.coalesce(sessions.c.session_state, literal_column("'{}'")))


@cache
def _session_update_for(dialect: str, with_delta: bool) -> Any:
    joined = bindparam("p_joined", type_=Integer)
    moved = bindparam("p_moved", type_=Boolean)  # the membership changed
    when = bindparam("p_event_time", type_=UTCDateTime())
    now = bindparam("p_now", type_=UTCDateTime())
    values: dict[str, Any] = {
        "last_sequence": sessions.c.last_sequence + 1,
        "event_count": sessions.c.event_count + 1,
        "last_activity_time": case(
            (sessions.c.last_activity_time < when, when), else_=sessions.c.last_activity_time
        ),
        "member_count": sessions.c.member_count + joined,
    }
    conditions = [
        sessions.c.namespace == bindparam("p_namespace"),
        sessions.c.session == bindparam("p_session"),
    ]
    changed: ColumnElement[bool] = moved
    if with_delta:
        merged = _merged_state(dialect)
        values["session_state"] = merged
        changed = moved | _state_changed(dialect, merged)
        conditions.append(_state_size(dialect, merged) <= MAX_SESSION_STATE_BYTES)
    values["version"] = sessions.c.version + case((changed, 1), else_=0)
    values["update_time"] = case((changed, now), else_=sessions.c.update_time)
    return update(sessions).where(*conditions).values(values).returning(sessions)


def _session_update(conn: Connection, with_delta: bool) -> Any:
    return _session_update_for(conn.dialect.name, with_delta)


def _update_params(conn: Connection, plan: Append, session: Row, joins: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "p_namespace": plan.namespace,
        "p_session": session["session"],
        "p_joined": int(joins),
        "p_moved": joins,
        "p_event_time": plan.event["event_time"],
        "p_now": plan.event["create_time"],
    }
    if plan.delta is not None:
        # SQLite's json_patch takes JSON text; PostgreSQL's parameter is typed jsonb.
        postgresql = conn.dialect.name == "postgresql"
        params["p_delta"] = plan.delta if postgresql else json.dumps(plan.delta)
    return params


def _state_too_large(session: Row) -> errors.ApiError:
    name = names.session_name(session["namespace"], session["session"])
    return errors.ApiError(
        Reason.SIZE_LIMIT_EXCEEDED,
        f"event.state_delta: session {name!r}'s session_state would be over {MAX_SESSION_STATE_BYTES} "
        "bytes (as JSON text) with this delta merged; nothing was appended",
        violations=[
            errors.FieldViolation(
                "event.state_delta",
                f"the merged session_state would be over {MAX_SESSION_STATE_BYTES} bytes",
            )
        ],
    )


def _event_taken(plan: Append) -> errors.ApiError:
    name = names.event_name(plan.namespace, plan.session or "-", plan.event["event"])
    return errors.ApiError(
        Reason.EVENT_ALREADY_EXISTS,
        f"the session already has an event with id {plan.event['event']!r}; nothing was appended",
        metadata={"resource_name": name},
    )


# --- Reading, deleting, purging ---------------------------------------------------------------

_EVENT_KEY = and_(
    events.c.namespace == bindparam("p_namespace"),
    events.c.session == bindparam("p_session"),
    events.c.event == bindparam("p_event"),
)


def _event_params(namespace: str, session: str, event: str) -> dict[str, str]:
    return {"p_namespace": namespace, "p_session": session, "p_event": event}


async def get(db: Database, namespace: str, session: str, event: str) -> Row:
    row = await db.query(_get_in, namespace, session, event)
    if row is None:
        raise errors.not_found(Resource.EVENT, names.event_name(namespace, session, event))
    return row


def _get_in(conn: Connection, namespace: str, session: str, event: str) -> Row | None:
    stmt = select(events).where(_EVENT_KEY)
    row: Row | None = conn.execute(stmt, _event_params(namespace, session, event)).mappings().first()
    return row


async def delete_event(db: Database, namespace: str, session: str, event: str) -> None:
    """Remove one event for good (its sequence is not reused); the session's event_count
    moves with it. A soft-deleted session keeps its events (purge them instead)."""
    await db.write(_delete_in, namespace, session, event)


def _delete_in(conn: Connection, namespace: str, session: str, event: str) -> None:
    name = names.event_name(namespace, session, event)
    locked = session_db.row_in(conn, namespace, session, lock=True)
    if locked is None:
        raise errors.not_found(Resource.EVENT, name)
    # The count first, so that the event's change (migration 0005) shows the session after it.
    _move_event_count(conn, namespace, session, -1)
    stmt = delete(events).where(_EVENT_KEY).returning(events.c.sequence)
    if conn.execute(stmt, _event_params(namespace, session, event)).first() is None:
        raise errors.not_found(Resource.EVENT, name)  # rolls the count back
    if locked["delete_time"] is not None:
        raise session_db.deleted_error(locked)  # rolls the delete back


def _move_event_count(conn: Connection, namespace: str, session: str, delta: int) -> None:
    conn.execute(
        update(sessions)
        .where(sessions.c.namespace == namespace, sessions.c.session == session)
        .values(event_count=sessions.c.event_count + delta)
    )


async def purge(
    db: Database, namespace: str, session: str, where: ColumnElement[bool] | None, *, force: bool
) -> tuple[int, list[str]]:
    """Count the session's events matching `where` (None: all) and name up to 100, oldest
    first; with `force` delete them, oldest first, in transactions of at most
    PURGE_BATCH events that each move event_count with their deletes (so that a purge of
    millions neither holds one huge transaction nor makes more changes in one than a
    WatchSessions revision can number)."""
    if not force:
        return await db.query(_count_in, namespace, session, where)
    total, sample = 0, list[str]()
    while True:
        done, names_ = await db.write(_purge_batch_in, namespace, session, where, PURGE_BATCH)
        total += done
        sample += names_[: PURGE_SAMPLE - len(sample)]
        if done < PURGE_BATCH:
            return total, sample


def _matching(namespace: str, session: str, where: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    conditions = [events.c.namespace == namespace, events.c.session == session]
    return conditions if where is None else [*conditions, where]


def _require_session(conn: Connection, namespace: str, session: str, *, lock: bool = False) -> None:
    if session_db.row_in(conn, namespace, session, lock=lock) is None:
        raise errors.not_found(Resource.SESSION, names.session_name(namespace, session))


def _count_in(
    conn: Connection, namespace: str, session: str, where: ColumnElement[bool] | None
) -> tuple[int, list[str]]:
    _require_session(conn, namespace, session)
    return _count(conn, namespace, session, where)


def _count(
    conn: Connection, namespace: str, session: str, where: ColumnElement[bool] | None
) -> tuple[int, list[str]]:
    matching = _matching(namespace, session, where)
    count = conn.execute(select(func.count()).select_from(events).where(*matching)).scalar_one()
    sample = conn.execute(
        select(events.c.event).where(*matching).order_by(events.c.sequence).limit(PURGE_SAMPLE)
    ).scalars()
    return int(count), [names.event_name(namespace, session, event) for event in sample]


def _purge_batch_in(
    conn: Connection, namespace: str, session: str, where: ColumnElement[bool] | None, limit: int
) -> tuple[int, list[str]]:
    """Purge the oldest `limit` events matching `where`: (how many, the first names)."""
    _require_session(conn, namespace, session, lock=True)
    matching = _matching(namespace, session, where)
    picked = conn.execute(
        select(events.c.sequence, events.c.event).where(*matching).order_by(events.c.sequence).limit(limit)
    ).all()
    if not picked:
        return 0, []
    # The count first, so that the events' changes (migration 0005) show the session after the purge.
    _move_event_count(conn, namespace, session, -len(picked))
    conn.execute(delete(events).where(*matching, events.c.sequence <= picked[-1].sequence))
    return len(picked), [names.event_name(namespace, session, row.event) for row in picked[:PURGE_SAMPLE]]


async def also_created(db: Database, claim: idempotency_db.Claim) -> list[str]:
    """What else the call that holds `claim` created (for a replay's flags)."""
    flags = await db.query(idempotency_db.also_created, claim)
    return [flag for flag in (flags or "").split(",") if flag]
