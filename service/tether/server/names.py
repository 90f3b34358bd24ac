"""Resource names (AIP-122): parsing and formatting in one place."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from tether.server.errors import ApiError, bad_field, shorten

ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
ID_RE = re.compile(rf"^{ID_PATTERN}$")
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

_NAMESPACE_RE = re.compile(rf"^namespaces/({ID_PATTERN})$")
_PARTICIPANT_RE = re.compile(rf"^namespaces/({ID_PATTERN})/participants/({ID_PATTERN})$")
_SESSION_RE = re.compile(rf"^namespaces/({ID_PATTERN})/sessions/({ID_PATTERN})$")
_MEMBER_RE = re.compile(rf"^namespaces/({ID_PATTERN})/sessions/({ID_PATTERN})/members/({ID_PATTERN})$")
_EVENT_RE = re.compile(rf"^namespaces/({ID_PATTERN})/sessions/({ID_PATTERN})/events/({ID_PATTERN})$")


def new_id() -> str:
    """A server-assigned id: a lowercase UUID (also a valid id segment)."""
    return str(uuid.uuid4())


def is_valid_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class SessionName:
    namespace: str
    session: str

    def __str__(self) -> str:
        return session_name(self.namespace, self.session)


@dataclass(frozen=True, slots=True)
class ParticipantName:
    namespace: str
    participant: str

    def __str__(self) -> str:
        return participant_name(self.namespace, self.participant)


@dataclass(frozen=True, slots=True)
class MemberName:
    namespace: str
    session: str
    participant: str

    def __str__(self) -> str:
        return member_name(self.namespace, self.session, self.participant)


@dataclass(frozen=True, slots=True)
class EventName:
    namespace: str
    session: str
    event: str

    def __str__(self) -> str:
        return event_name(self.namespace, self.session, self.event)


def namespace_name(namespace: str) -> str:
    return f"namespaces/{namespace}"


def participant_name(namespace: str, participant: str) -> str:
    return f"namespaces/{namespace}/participants/{participant}"


def session_name(namespace: str, session: str) -> str:
    return f"namespaces/{namespace}/sessions/{session}"


def member_name(namespace: str, session: str, participant: str) -> str:
    return f"namespaces/{namespace}/sessions/{session}/members/{participant}"


def event_name(namespace: str, session: str, event: str) -> str:
    return f"namespaces/{namespace}/sessions/{session}/events/{event}"


def _fail(field: str, value: str, shape: str) -> ApiError:
    if not value:
        return bad_field(field, "required")
    return bad_field(field, f"must be a resource name of the form {shape}, got {shorten(value, 80)!r}")


def parse_namespace(value: str, field: str = "name") -> str:
    match = _NAMESPACE_RE.fullmatch(value)
    if match is None:
        raise _fail(field, value, "namespaces/{namespace}")
    return match.group(1)


def parse_participant(value: str, field: str = "name") -> ParticipantName:
    match = _PARTICIPANT_RE.fullmatch(value)
    if match is None:
        raise _fail(field, value, "namespaces/{namespace}/participants/{participant}")
    return ParticipantName(match.group(1), match.group(2))


def parse_session(value: str, field: str = "name") -> SessionName:
    match = _SESSION_RE.fullmatch(value)
    if match is None:
        raise _fail(field, value, "namespaces/{namespace}/sessions/{session}")
    return SessionName(match.group(1), match.group(2))


def parse_member(value: str, field: str = "name") -> MemberName:
    match = _MEMBER_RE.fullmatch(value)
    if match is None:
        raise _fail(field, value, "namespaces/{namespace}/sessions/{session}/members/{participant}")
    return MemberName(match.group(1), match.group(2), match.group(3))


def parse_event(value: str, field: str = "name") -> EventName:
    match = _EVENT_RE.fullmatch(value)
    if match is None:
        raise _fail(field, value, "namespaces/{namespace}/sessions/{session}/events/{event}")
    return EventName(match.group(1), match.group(2), match.group(3))
