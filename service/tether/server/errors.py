"""Errors: the one place where failures become gRPC statuses (AIP-193).

Domain code raises `ApiError`; the servicer wrapper turns it into a
`google.rpc.Status` with `ErrorInfo` (domain `tether`) and, for bad input,
`BadRequest` field violations. Database exceptions are mapped here too, so no
SQL or stack trace ever reaches a caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import exc as sa_exc

DOMAIN = "tether"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class Reason(StrEnum):
    """Every ErrorInfo reason Tether answers with: stable, documented in
    docs/errors.md (generated from `CATALOGUE`), mirrored by `tether.client.Reason`."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    IMMUTABLE_FIELD = "IMMUTABLE_FIELD"
    WRONG_PARTICIPANT_KIND = "WRONG_PARTICIPANT_KIND"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_ORDER_BY = "INVALID_ORDER_BY"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    SIZE_LIMIT_EXCEEDED = "SIZE_LIMIT_EXCEEDED"
    NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
    PARTICIPANT_NOT_FOUND = "PARTICIPANT_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    MEMBER_NOT_FOUND = "MEMBER_NOT_FOUND"
    EVENT_NOT_FOUND = "EVENT_NOT_FOUND"
    NAMESPACE_ALREADY_EXISTS = "NAMESPACE_ALREADY_EXISTS"
    PARTICIPANT_ALREADY_EXISTS = "PARTICIPANT_ALREADY_EXISTS"
    SESSION_ALREADY_EXISTS = "SESSION_ALREADY_EXISTS"
    MEMBER_ALREADY_EXISTS = "MEMBER_ALREADY_EXISTS"
    EVENT_ALREADY_EXISTS = "EVENT_ALREADY_EXISTS"
    EXTERNAL_ID_ALREADY_EXISTS = "EXTERNAL_ID_ALREADY_EXISTS"
    CONVERSATION_ALREADY_EXISTS = "CONVERSATION_ALREADY_EXISTS"
    SESSION_DELETED = "SESSION_DELETED"
    SESSION_DISABLED = "SESSION_DISABLED"
    PARTICIPANT_DELETED = "PARTICIPANT_DELETED"
    PARTICIPANT_DISABLED = "PARTICIPANT_DISABLED"
    AUTOMATIC_MEMBER = "AUTOMATIC_MEMBER"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    NAMESPACE_NOT_EMPTY = "NAMESPACE_NOT_EMPTY"
    TEMPLATE_MISMATCH = "TEMPLATE_MISMATCH"
    REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    STALE_SEQUENCE = "STALE_SEQUENCE"
    CONCURRENT_CHANGE = "CONCURRENT_CHANGE"
    REVISION_COMPACTED = "REVISION_COMPACTED"
    REVISION_AHEAD = "REVISION_AHEAD"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    MANAGED_RESOURCE = "MANAGED_RESOURCE"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    INTERNAL = "INTERNAL"


# Each reason's status code and meaning: the source of docs/errors.md.
CATALOGUE: dict[Reason, tuple[grpc.StatusCode, str]] = {
    Reason.INVALID_ARGUMENT: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "A field is malformed or breaks a rule of the contract; BadRequest names every bad field.",
    ),
    Reason.IMMUTABLE_FIELD: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "An update changes a field fixed at creation (a session's kind, agent, user or peer_agent, a "
        "participant's kind), with or without an update mask; sending the stored value back is no change.",
    ),
    Reason.WRONG_PARTICIPANT_KIND: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "A reference names a participant of the wrong kind (a USER as `agent`, an AGENT as `user`).",
    ),
    Reason.INVALID_FILTER: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "`filter` does not parse or names an unknown field or operator; the message gives the position.",
    ),
    Reason.INVALID_ORDER_BY: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "`order_by` names an unknown or repeated key, or a direction other than asc/desc.",
    ),
    Reason.INVALID_PAGE_SIZE: (grpc.StatusCode.INVALID_ARGUMENT, "`page_size` is negative."),
    Reason.INVALID_PAGE_TOKEN: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "`page_token` is malformed, or was issued for another parent, filter, order_by or show_deleted.",
    ),
    Reason.SIZE_LIMIT_EXCEEDED: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "A value is over its size limit (`session_state` 256 KiB, also after an event's `state_delta` is "
        "merged; `metadata` 64 KiB; an event's `content` + `state_delta` 1 MiB).",
    ),
    Reason.NAMESPACE_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "The namespace does not exist."),
    Reason.PARTICIPANT_NOT_FOUND: (
        grpc.StatusCode.NOT_FOUND,
        "The participant (named or referenced) does not exist in the namespace.",
    ),
    Reason.SESSION_NOT_FOUND: (
        grpc.StatusCode.NOT_FOUND,
        "The session (or, in BatchGetSessions, one of them) does not exist.",
    ),
    Reason.MEMBER_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "The participant is not a member of the session."),
    Reason.EVENT_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "The session has no event with this id."),
    Reason.NAMESPACE_ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, "A namespace with this id exists."),
    Reason.PARTICIPANT_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "A participant with this id exists, or UndeleteParticipant of one that is not deleted.",
    ),
    Reason.SESSION_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "A session with this id exists, or UndeleteSession of one that is not deleted.",
    ),
    Reason.MEMBER_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "The participant is already a member of the session.",
    ),
    Reason.EVENT_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "The session already has an event with this `event_id`; nothing was appended.",
    ),
    Reason.EXTERNAL_ID_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "A live participant of this kind already has this `external_id`.",
    ),
    Reason.CONVERSATION_ALREADY_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        "A live session already has this agent + channel + external conversation id, or this agent pair.",
    ),
    Reason.SESSION_DELETED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The session is soft-deleted: undelete it first.",
    ),
    Reason.SESSION_DISABLED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The session is disabled: RecordActivity, AppendEvent, AddMember and updates (except enabling it) "
        "are refused.",
    ),
    Reason.PARTICIPANT_DELETED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The participant is soft-deleted and cannot be changed or newly referenced.",
    ),
    Reason.PARTICIPANT_DISABLED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The participant is disabled and cannot be newly referenced.",
    ),
    Reason.AUTOMATIC_MEMBER: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The session's agent, user and peer_agent are members for good and cannot be removed.",
    ),
    Reason.NOT_A_MEMBER: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AppendEvent by an author who is not a member of a DIRECT or AGENT_TO_AGENT session (in GROUP "
        "and TRIGGER sessions the author joins instead); metadata `resource_name` names the author.",
    ),
    Reason.NAMESPACE_NOT_EMPTY: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "DeleteNamespace of a namespace that holds participants or sessions needs `force`.",
    ),
    Reason.TEMPLATE_MISMATCH: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "FindOrCreateSession found a session for the key whose kind, user or peer_agent differs from "
        "what the template sets; metadata `resource_name` names it, `fields` the template fields.",
    ),
    Reason.REQUEST_ID_CONFLICT: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "The `request_id` was already used for a different request (another method or payload).",
    ),
    Reason.ETAG_MISMATCH: (
        grpc.StatusCode.ABORTED,
        "The resource changed since the `etag` was read; read it again and retry.",
    ),
    Reason.STALE_SEQUENCE: (
        grpc.StatusCode.ABORTED,
        "AppendEvent's `expected_last_sequence` is not the session's last sequence: another event was "
        "appended since the caller read; metadata `last_sequence` holds the current one.",
    ),
    Reason.CONCURRENT_CHANGE: (
        grpc.StatusCode.ABORTED,
        "A concurrent change kept the call from completing; retry it.",
    ),
    Reason.REVISION_COMPACTED: (
        grpc.StatusCode.OUT_OF_RANGE,
        "WatchSessions' `start_revision` (or a watch that fell that far behind) is older than the "
        "changes still held: metadata `oldest_revision` is the oldest change held and `resume_revision` "
        "the smallest `start_revision` that is accepted (everything after it is held).",
    ),
    Reason.REVISION_AHEAD: (
        grpc.StatusCode.OUT_OF_RANGE,
        "WatchSessions' `start_revision` is beyond the newest revision (it was not handed out by this "
        "deployment's database); metadata `head_revision` holds the newest.",
    ),
    Reason.SERVER_SHUTTING_DOWN: (
        grpc.StatusCode.UNAVAILABLE,
        "The server is shutting down and ended the stream; call again (another replica answers, and the "
        "client's watch iterator resumes where it was by itself).",
    ),
    Reason.DATABASE_UNAVAILABLE: (
        grpc.StatusCode.UNAVAILABLE,
        "The database cannot be reached; the call had no effect and is safe to retry.",
    ),
    Reason.UNAUTHENTICATED: (
        grpc.StatusCode.UNAUTHENTICATED,
        "The call carries no `authorization: Bearer <token>` metadata, or a token that is not configured.",
    ),
    Reason.PERMISSION_DENIED: (
        grpc.StatusCode.PERMISSION_DENIED,
        "The caller may see the resource but its role does not allow this method (reader < writer < "
        "system < admin).",
    ),
    Reason.MANAGED_RESOURCE: (
        grpc.StatusCode.PERMISSION_DENIED,
        "The resource is managed (or the call sets `managed`): only system and admin principals may "
        "change it.",
    ),
    Reason.NOT_IMPLEMENTED: (
        grpc.StatusCode.UNIMPLEMENTED,
        "The RPC is part of the contract but not implemented by this release.",
    ),
    Reason.INTERNAL: (
        grpc.StatusCode.INTERNAL,
        "A bug in Tether; the server log has the details. Never the answer to a caller's mistake.",
    ),
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in proto names (e.g. `session.labels`) and why."""

    field: str
    description: str


# An error must fit gRPC's default 8 KiB metadata limit (message + details), or a
# client with default options sees RESOURCE_EXHAUSTED and nothing else.
MAX_MESSAGE_CHARS = 512
MAX_TEXT_CHARS = 200
MAX_VIOLATIONS = 20


def shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters (marked with an ellipsis): errors quote caller input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def with_article(word: str) -> str:
    """`word` after "a" or "an", for the upper-case enum names messages quote:
    "an AGENT", "a USER" ("U" sounds like "you" there), "a GROUP"."""
    return f"{'an' if word[:1] in 'AEIO' else 'a'} {word}"


@dataclass
class ApiError(Exception):
    """An error meant for the caller: ErrorInfo reason, message, metadata, field violations.

    The status code is the reason's code in `CATALOGUE`, so a raise cannot contradict
    the catalogue (nor docs/errors.md). What reaches the wire is bounded: the message,
    every quoted value and the number of violations are capped, whatever the caller sent."""

    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    code: grpc.StatusCode = field(init=False)

    def __post_init__(self) -> None:
        self.code = CATALOGUE[self.reason][0]
        self.message = shorten(self.message, MAX_MESSAGE_CHARS)
        self.metadata = {shorten(k, 64): shorten(v) for k, v in self.metadata.items()}
        kept = [
            FieldViolation(shorten(v.field), shorten(v.description)) for v in self.violations[:MAX_VIOLATIONS]
        ]
        if len(self.violations) > MAX_VIOLATIONS:
            more = len(self.violations) - MAX_VIOLATIONS
            kept.append(FieldViolation(kept[-1].field, f"... and {more} more violations not listed"))
        self.violations = kept

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata))
        details: list[Message] = [info]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        packed = []
        for detail in details:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((STATUS_DETAILS_KEY, self.to_status().SerializeToString()),)


def invalid_argument(
    violations: Sequence[FieldViolation], reason: Reason = Reason.INVALID_ARGUMENT
) -> ApiError:
    """Bad input: names every bad field at once."""
    listed = violations[:3]
    message = "; ".join(f"{shorten(v.field, 80)}: {shorten(v.description, 120)}" for v in listed)
    if len(violations) > len(listed):
        message += f"; and {len(violations) - len(listed)} more (see the BadRequest details)"
    message = message or "invalid argument"
    return ApiError(reason, message, violations=violations)


def bad_field(field_path: str, description: str, reason: Reason = Reason.INVALID_ARGUMENT) -> ApiError:
    """Bad input in a single field."""
    return ApiError(
        reason, f"{field_path}: {description}", violations=[FieldViolation(field_path, description)]
    )


class Resource(StrEnum):
    """The kinds of resource a NOT_FOUND or ALREADY_EXISTS names; the value is the noun
    the message uses."""

    NAMESPACE = "namespace"
    PARTICIPANT = "participant"
    SESSION = "session"
    MEMBER = "member"
    EVENT = "event"


_NOT_FOUND: dict[Resource, Reason] = {
    Resource.NAMESPACE: Reason.NAMESPACE_NOT_FOUND,
    Resource.PARTICIPANT: Reason.PARTICIPANT_NOT_FOUND,
    Resource.SESSION: Reason.SESSION_NOT_FOUND,
    Resource.MEMBER: Reason.MEMBER_NOT_FOUND,
    Resource.EVENT: Reason.EVENT_NOT_FOUND,
}
_ALREADY_EXISTS: dict[Resource, Reason] = {
    Resource.NAMESPACE: Reason.NAMESPACE_ALREADY_EXISTS,
    Resource.PARTICIPANT: Reason.PARTICIPANT_ALREADY_EXISTS,
    Resource.SESSION: Reason.SESSION_ALREADY_EXISTS,
    Resource.MEMBER: Reason.MEMBER_ALREADY_EXISTS,
    Resource.EVENT: Reason.EVENT_ALREADY_EXISTS,
}


def not_found(resource: Resource, resource_name: str) -> ApiError:
    return ApiError(
        _NOT_FOUND[resource],
        f"{resource} {resource_name!r} not found",
        metadata={"resource_name": resource_name},
    )


def already_exists(resource: Resource, resource_name: str, message: str | None = None) -> ApiError:
    return ApiError(
        _ALREADY_EXISTS[resource],
        message or f"{resource} {resource_name!r} already exists",
        metadata={"resource_name": resource_name},
    )


def unauthenticated(message: str) -> ApiError:
    """No usable credentials; `message` must never quote the token."""
    return ApiError(Reason.UNAUTHENTICATED, message)


def permission_denied(message: str, reason: Reason = Reason.PERMISSION_DENIED, **metadata: str) -> ApiError:
    return ApiError(reason, message, metadata=metadata)


def unavailable(message: str = "the database is unreachable; retry later") -> ApiError:
    return ApiError(Reason.DATABASE_UNAVAILABLE, message)


def internal() -> ApiError:
    return ApiError(Reason.INTERNAL, "internal error; see the server log")


# SQLSTATE classes that mean "the database cannot be reached right now".
# SQLSTATEs that mean "the database cannot answer right now": connection
# exceptions, insufficient resources, operator intervention, statement timeout.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P", "57014")
# Serialization failure and deadlock: the transaction lost a race; a retry may win.
# TX001: a session row was changed by a transaction newer than this one, which would
# put this one's change before it in WatchSessions (migration 0005); the call guard
# runs such a call again, in a new transaction.
ORDER_RACE_SQLSTATE = "TX001"
_CONFLICT_SQLSTATES = ("40001", "40P01", ORDER_RACE_SQLSTATE)


def sqlstate(error: BaseException) -> object:
    """The SQLSTATE of a database error: SQLAlchemy's (its driver's inside) or asyncpg's own."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_order_race(error: BaseException) -> bool:
    """Whether `error` is the TX001 refusal of a write that is safe to run again at once."""
    return sqlstate(error) == ORDER_RACE_SQLSTATE


def from_database_error(error: Exception) -> ApiError | None:
    """Map a database exception to an ApiError, or None when it is a bug.

    Constraint violations are mapped where the statement is issued (only the
    caller of the statement knows which resource collided); what reaches here
    is connectivity trouble (UNAVAILABLE, safe to retry), a lost race (ABORTED)
    or a bug (None: the call guard answers INTERNAL and logs it). The error is
    SQLAlchemy's, or asyncpg's own where a hot statement runs on the hot pool
    (`db.hot`): both carry the SQLSTATE.
    """
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return unavailable()
    code = sqlstate(error)
    if isinstance(code, str) and code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
        return unavailable()
    if code in _CONFLICT_SQLSTATES:
        return ApiError(Reason.CONCURRENT_CHANGE, "the call lost a race with another; retry it")
    if isinstance(error, sa_exc.OperationalError):
        # SQLite "database is locked" after busy_timeout, disk I/O, or a
        # dropped PostgreSQL connection: transient from the caller's view.
        return unavailable()
    if isinstance(error, (ConnectionError, TimeoutError, OSError, sa_exc.TimeoutError)):
        return unavailable()
    return None
