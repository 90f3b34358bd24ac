"""Authorization: which role each RPC needs and which namespaces it touches.

`POLICY` has one `Rule` per `tether.v1.SessionService` method (a unit test
checks it against the service descriptor). Before every handler the call guard
(`interceptors.CallGuard`) asks `AccessPolicy`:

1. `authenticate` the call (`auth.Authenticator`): UNAUTHENTICATED otherwise;
2. find the namespaces the request names (the `namespaces/{ns}` segment of
   each field in `Rule.names`). One the principal cannot access answers
   NOT_FOUND with the reason and resource name a missing resource of that
   kind gets from the handler, so another tenant's namespace looks exactly
   like one that does not exist (the policy never reads the database, so its
   answer cannot depend on what exists). A name without a parsable namespace
   segment passes through: the handler rejects it as INVALID_ARGUMENT
   (steps 2 and 3 are `authorize`);
3. check the role: PERMISSION_DENIED when it is below `Rule.role`.

The namespace methods are admin only (as the README's roles table and the
comments in protos/tether/v1/session_service.proto say), and an admin sees
every namespace. Mutating methods (`Rule.mutating`) get an `audit` log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from tether.server import auth, errors
from tether.server.auth import Principal, Role
from tether.server.errors import Resource
from tether.server.names import ID_PATTERN
from tether.v1 import session_service_pb2
from tether.v1 import session_service_pb2 as pb

SERVICE = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"]
_NAMESPACE_SEGMENT = re.compile(rf"^namespaces/({ID_PATTERN})(?:/|$)")
# Resource name segments of each kind: what a hidden resource's NOT_FOUND names.
_SEGMENTS: dict[Resource, int] = {
    Resource.NAMESPACE: 2,
    Resource.PARTICIPANT: 4,
    Resource.SESSION: 4,
    Resource.EVENT: 6,
}


@dataclass(frozen=True)
class Rule:
    """One RPC's policy.

    role: the lowest role allowed to call it.
    names: (field path, resource) of each request field holding resource names,
        in the order they are checked; a field may be repeated (`names`).
        `resource` is what a missing resource there is reported as
        (`SESSION_NOT_FOUND`, ...).
    mutating: whether the call changes anything (then it is audited).
    """

    role: Role
    names: tuple[tuple[str, Resource], ...] = ()
    mutating: bool = False


def _read(*names: tuple[str, Resource]) -> Rule:
    return Rule(Role.READER, names)


def _write(*names: tuple[str, Resource], role: Role = Role.WRITER) -> Rule:
    return Rule(role, names, mutating=True)


NameField = tuple[str, Resource]
_NAME_IS_PARTICIPANT: NameField = ("name", Resource.PARTICIPANT)
_NAME_IS_SESSION: NameField = ("name", Resource.SESSION)
_PARENT_IS_NAMESPACE: NameField = ("parent", Resource.NAMESPACE)
# A missing session is what a member call into a missing namespace reports.
_PARENT_IS_SESSION: NameField = ("parent", Resource.SESSION)

POLICY: dict[str, Rule] = {
    "CreateNamespace": _write(role=Role.ADMIN),
    "GetNamespace": Rule(Role.ADMIN, (("name", Resource.NAMESPACE),)),
    "ListNamespaces": Rule(Role.ADMIN, ()),
    "DeleteNamespace": _write(("name", Resource.NAMESPACE), role=Role.ADMIN),
    "CreateParticipant": _write(_PARENT_IS_NAMESPACE),
    "GetParticipant": _read(_NAME_IS_PARTICIPANT),
    "ListParticipants": _read(_PARENT_IS_NAMESPACE),
    "UpdateParticipant": _write(("participant.name", Resource.PARTICIPANT)),
    "DeleteParticipant": _write(_NAME_IS_PARTICIPANT),
    "UndeleteParticipant": _write(_NAME_IS_PARTICIPANT),
    "FindOrCreateParticipant": _write(_PARENT_IS_NAMESPACE),
    "CreateSession": _write(_PARENT_IS_NAMESPACE),
    "GetSession": _read(_NAME_IS_SESSION),
    "BatchGetSessions": _read(("names", Resource.SESSION), _PARENT_IS_NAMESPACE),
    "ListSessions": _read(_PARENT_IS_NAMESPACE),
    "UpdateSession": _write(("session.name", Resource.SESSION)),
    "DeleteSession": _write(_NAME_IS_SESSION),
    "UndeleteSession": _write(_NAME_IS_SESSION),
    "PurgeSessions": _write(_PARENT_IS_NAMESPACE, role=Role.ADMIN),
    "FindOrCreateSession": _write(_PARENT_IS_NAMESPACE),
    "RecordActivity": _write(_NAME_IS_SESSION),
    "AddMember": _write(_PARENT_IS_SESSION),
    "UpdateMember": _write(("member.name", Resource.SESSION)),
    "RemoveMember": _write(("name", Resource.SESSION)),
    "ListMembers": _read(_PARENT_IS_SESSION),
    # `parent` is the session, or (with a session key) its namespace.
    "AppendEvent": _write(_PARENT_IS_SESSION),
    "GetEvent": _read(("name", Resource.EVENT)),
    "ListEvents": _read(_PARENT_IS_SESSION),
    "DeleteEvent": _write(("name", Resource.EVENT)),
    "PurgeEvents": _write(_PARENT_IS_SESSION, role=Role.ADMIN),
    "WatchSessions": _read(_PARENT_IS_NAMESPACE),
}
RULES_BY_PATH: dict[str, Rule] = {f"/{SERVICE.full_name}/{method}": rule for method, rule in POLICY.items()}


def field_values(message: Message, path: str) -> Iterator[str]:
    """The string(s) at a dotted field path (a repeated field gives each item)."""
    value: Any = message
    for part in path.split("."):
        value = getattr(value, part)
    if isinstance(value, str):
        yield value
    else:
        yield from value


def namespace_of(name: str) -> str | None:
    """The namespace id of a resource name, None when it has no valid `namespaces/{ns}` segment."""
    match = _NAMESPACE_SEGMENT.match(name)
    return None if match is None else match.group(1)


def hidden(name: str, namespace: str, resource: Resource) -> errors.ApiError:
    """What the handler answers for `name` when its namespace does not exist."""
    if resource == Resource.NAMESPACE or name.count("/") == 1:  # AppendEvent's parent may be a namespace
        return errors.not_found(Resource.NAMESPACE, f"namespaces/{namespace}")
    return errors.not_found(resource, "/".join(name.split("/")[: _SEGMENTS[resource]]))


def short_method(method: str) -> str:
    return method.rpartition("/")[2]


class AccessPolicy:
    """Authentication and authorization for every SessionService call; see the module docstring."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self.authenticator = authenticator

    def authenticate(self, metadata: Any) -> Principal:
        return self.authenticator.authenticate(metadata)

    def authorize(self, method: str, request: Message, principal: Principal) -> None:
        """NOT_FOUND for a namespace the principal cannot see, then PERMISSION_DENIED for a low role."""
        rule = RULES_BY_PATH.get(method)
        if rule is None:  # not in the table: nobody may call it
            raise errors.permission_denied(f"{method} is not open to callers", method=short_method(method))
        for path, resource in rule.names:
            for name in field_values(request, path):
                namespace = namespace_of(name)
                if namespace is not None and not principal.can_access(namespace):
                    raise hidden(name, namespace, resource)
        if not principal.has_role(rule.role):
            raise errors.permission_denied(
                f"principal {principal.id!r} ({principal.role.label}) may not call {short_method(method)}: "
                f"it needs the {rule.role.label} role",
                method=short_method(method),
                required_role=rule.role.label,
                principal=principal.id,
            )


def audited_resource(method: str, request: Message, response: Message | None) -> str:
    """The resource a mutating call touched: the created or changed resource's name when the
    response has one, else the first name the request gives."""
    if not isinstance(request, Message):  # bytes that did not decode
        return ""
    if response is not None:
        for holder in (response, *_sub_messages(response, ("event", "session", "participant"))):
            name = getattr(holder, "name", "")
            if isinstance(name, str) and name:
                return name
    rule = RULES_BY_PATH.get(method)
    for path, _ in rule.names if rule else ():
        for name in field_values(request, path):
            if name:
                return name
    if isinstance(request, pb.CreateNamespaceRequest) and request.namespace_id:
        return f"namespaces/{request.namespace_id}"
    return ""


def _sub_messages(message: Message, fields: tuple[str, ...]) -> Iterator[Message]:
    """The set message fields among `fields` (FindOrCreate responses wrap the resource)."""
    for field in fields:
        descriptor = message.DESCRIPTOR.fields_by_name.get(field)
        if descriptor is not None and descriptor.message_type is not None and message.HasField(field):
            yield getattr(message, field)
