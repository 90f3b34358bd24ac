"""Session rules: kinds, references, defaults, update masks, find-or-create keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2

from tether.server import names
from tether.server.convert import struct_to_json, to_datetime
from tether.server.db.base import utcnow
from tether.server.db.sessions import ParticipantRef, agent_pair_key
from tether.server.domain import masks
from tether.server.domain.validation import (
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_EXTERNAL_ID,
    MAX_SESSION_STATE_BYTES,
    Violations,
    timestamp_in_range,
)
from tether.server.errors import ApiError, shorten, with_article
from tether.v1 import participant_pb2, session_pb2, session_service_pb2

Session = session_pb2.Session
AGENT = participant_pb2.Participant.KIND_AGENT
USER = participant_pb2.Participant.KIND_USER
KINDS: dict[int, str] = {
    Session.KIND_DIRECT: "DIRECT",
    Session.KIND_GROUP: "GROUP",
    Session.KIND_AGENT_TO_AGENT: "AGENT_TO_AGENT",
    Session.KIND_TRIGGER: "TRIGGER",
}
DEFAULT_CHANNEL = "web"
MAX_TTL = timedelta(days=365 * 100)

RULES = masks.FieldRules(
    mutable=frozenset(
        {
            "display_name",
            "description",
            "channel",
            "external_conversation_id",
            "group_name",
            "enabled",
            "managed",
            "labels",
            "session_state",
            "expire_time",
            "ttl",
        }
    ),
    immutable=frozenset({"kind", "agent", "user", "peer_agent"}),
    output_only=frozenset(
        {
            "uid",
            "auto_created",
            "create_time",
            "update_time",
            "last_activity_time",
            "delete_time",
            "purge_time",
            "member_count",
            "etag",
            "event_count",
        }
    ),
)


@dataclass(frozen=True)
class NewSession:
    values: dict[str, Any]
    refs: list[ParticipantRef]


def participant_id(value: str, namespace: str, path: str, v: Violations) -> str | None:
    """The participant id of a reference, which must be in `namespace` ("" when
    the namespace is itself invalid: only the shape is checked then)."""
    if not value:
        return None
    try:
        ref = names.parse_participant(value, path)
    except ApiError:
        shown = namespace or "{namespace}"  # "" when the request's namespace is itself invalid
        v.add(path, f"must be a participant name namespaces/{shown}/participants/{{participant}}")
        return None
    if namespace and ref.namespace != namespace:
        v.add(path, f"must be a participant of namespace {names.namespace_name(namespace)!r}")
        return None
    return ref.participant


def _check_mutable(
    s: Session, path: str, v: Violations, fields: frozenset[str], field: Callable[[str], str] | None = None
) -> None:
    name = field or (lambda column: f"{path}.{column}")
    if "display_name" in fields:
        v.text(f"{path}.display_name", s.display_name, MAX_DISPLAY_NAME)
    if "description" in fields:
        v.text(f"{path}.description", s.description, MAX_DESCRIPTION)
    if "group_name" in fields:
        v.text(f"{path}.group_name", s.group_name, MAX_DISPLAY_NAME)
    if "channel" in fields:
        v.channel(name("channel"), s.channel)
    if "external_conversation_id" in fields:
        v.text(name("external_conversation_id"), s.external_conversation_id, MAX_EXTERNAL_ID)
    if "labels" in fields:
        v.labels(f"{path}.labels", s.labels)
    if "session_state" in fields and s.HasField("session_state"):
        v.struct(f"{path}.session_state", s.session_state, MAX_SESSION_STATE_BYTES)
    if "expire_time" in fields and s.HasField("expire_time"):
        v.timestamp(f"{path}.expire_time", s.expire_time)
    if "ttl" in fields and s.HasField("ttl") and not _ttl_valid(s.ttl):
        v.add(f"{path}.ttl", "must be positive and at most 100 years")


def check_update(s: Session, mask: masks.ResolvedMask, v: Violations) -> None:
    """Validate the fields an update writes."""
    _check_mutable(s, "session", v, mask.mutable)


def _ttl_valid(ttl: duration_pb2.Duration) -> bool:
    """Compared in integers: ToTimedelta() itself overflows on absurd values."""
    if not 0 <= ttl.nanos < 1_000_000_000 or ttl.seconds < 0 or (ttl.seconds, ttl.nanos) == (0, 0):
        return False
    return ttl.seconds < MAX_TTL.total_seconds()


def _expire_time(s: Session, now: datetime) -> datetime | None:
    """The expiry a request asks for; None for an invalid one (validation reports it)."""
    if s.HasField("ttl"):
        return now + s.ttl.ToTimedelta() if _ttl_valid(s.ttl) else None
    if s.HasField("expire_time"):
        return to_datetime(s.expire_time) if timestamp_in_range(s.expire_time) else None
    return None


def mutable_values(s: Session, fields: frozenset[str], now: datetime) -> dict[str, Any]:
    """Column values of the mutable `fields` (unset fields become defaults)."""
    values: dict[str, Any] = {}
    for name in fields:
        if name in ("expire_time", "ttl"):
            values["expire_time"] = _expire_time(s, now)
        elif name == "channel":
            values["channel"] = s.channel or DEFAULT_CHANNEL
        elif name == "external_conversation_id":
            values["external_conversation_id"] = s.external_conversation_id or None
        elif name == "labels":
            values["labels"] = dict(s.labels)
        elif name == "session_state":
            values["session_state"] = struct_to_json(s.session_state) if s.HasField("session_state") else None
        elif name == "enabled":
            values["enabled"] = s.enabled if s.HasField("enabled") else True
        elif name == "managed":
            values["managed"] = s.managed if s.HasField("managed") else False
        else:
            values[name] = getattr(s, name)
    return values


def _check_kind_rules(
    kind: int,
    agent: str | None,
    user: str | None,
    peer: str | None,
    s: Session,
    path: str,
    v: Violations,
    field: Callable[[str], str],
) -> None:
    if kind == Session.KIND_DIRECT:
        if not s.user:
            v.add(field("user"), "required for a DIRECT session")
    elif s.user:
        v.add(field("user"), f"must be empty for {with_article(KINDS.get(kind, 'non-DIRECT'))} session")
    if kind == Session.KIND_AGENT_TO_AGENT:
        if not s.peer_agent:
            v.add(field("peer_agent"), "required for an AGENT_TO_AGENT session")
        elif peer is not None and peer == agent:
            v.add(field("peer_agent"), "must differ from agent")
    elif s.peer_agent:
        v.add(
            field("peer_agent"),
            f"must be empty for {with_article(KINDS.get(kind, 'non-AGENT_TO_AGENT'))} session",
        )
    if s.group_name and kind != Session.KIND_GROUP:
        v.add(f"{path}.group_name", "only GROUP sessions have a group_name")


def new_session(
    namespace: str,
    session_id: str,
    s: Session,
    path: str,
    v: Violations,
    *,
    auto_created: bool = False,
    key_paths: Mapping[str, str] | None = None,
) -> NewSession:
    """Validate a session to create (raising every violation in `v` so far) and build its row.

    `key_paths`: the fields a find-or-create key filled in, and the request field each came
    from, so a fault of the key is named as the caller wrote it (and once)."""
    key_paths = key_paths or {}
    first_new = len(v.items)

    def field(name: str) -> str:
        return key_paths.get(name, f"{path}.{name}")

    v.enum(f"{path}.kind", s.kind, KINDS)
    if not s.agent:
        v.add(field("agent"), "required")
    agent = participant_id(s.agent, namespace, field("agent"), v)
    user = participant_id(s.user, namespace, field("user"), v)
    peer = participant_id(s.peer_agent, namespace, field("peer_agent"), v)
    _check_kind_rules(s.kind, agent, user, peer, s, path, v, field)
    _check_mutable(s, path, v, RULES.mutable, field)
    # A fault of the key is named once (the key's own checks may have named it already).
    kept = v.items[:first_new]
    seen = {item.field for item in kept}
    for item in v.items[first_new:]:
        if item.field in key_paths.values() and item.field in seen:
            continue
        kept.append(item)
        seen.add(item.field)
    v.items = kept
    v.check()
    now = utcnow()
    values = {
        "namespace": namespace,
        "session": session_id,
        "uid": names.new_id(),
        "kind": s.kind,
        "agent": agent,
        "user": user,
        "peer_agent": peer,
        "agent_pair": agent_pair_key(agent, peer) if agent and peer else None,
        "auto_created": auto_created,
        "create_time": now,
        "update_time": now,
        "last_activity_time": now,
        "member_count": 1 + (user is not None) + (peer is not None),
        **mutable_values(s, RULES.mutable - {"ttl"}, now),
    }
    refs = [ParticipantRef(field("agent"), agent, AGENT)] if agent else []
    if user:
        refs.append(ParticipantRef(field("user"), user, USER))
    if peer:
        refs.append(ParticipantRef(field("peer_agent"), peer, AGENT))
    return NewSession(values, refs)


def template_for_key(
    request: session_service_pb2.FindOrCreateSessionRequest, namespace: str, v: Violations
) -> Session:
    """The template with the key's fields filled in; a contradiction is a violation."""
    template = Session()
    template.CopyFrom(request.session)
    key = request.WhichOneof("key")
    if key == "external_conversation":
        conv = request.external_conversation
        channel = conv.channel or DEFAULT_CHANNEL
        _fill(template, "agent", conv.agent, "external_conversation.agent", v)
        _fill(template, "channel", channel, "external_conversation.channel", v)
        _fill(
            template,
            "external_conversation_id",
            conv.conversation_id,
            "external_conversation.conversation_id",
            v,
        )
        if not conv.agent:
            v.add("external_conversation.agent", "required")
        v.channel("external_conversation.channel", conv.channel)
        v.text("external_conversation.conversation_id", conv.conversation_id, MAX_EXTERNAL_ID, required=True)
        if template.kind == Session.KIND_UNSPECIFIED:
            template.kind = Session.KIND_DIRECT if template.user else Session.KIND_GROUP
    elif key == "agent_pair":
        pair = request.agent_pair
        _fill(template, "agent", pair.agent, "agent_pair.agent", v)
        _fill(template, "peer_agent", pair.peer_agent, "agent_pair.peer_agent", v)
        for field in ("agent", "peer_agent"):
            if not getattr(pair, field):
                v.add(f"agent_pair.{field}", "required")
        if template.kind not in (Session.KIND_UNSPECIFIED, Session.KIND_AGENT_TO_AGENT):
            v.add("session.kind", "must be AGENT_TO_AGENT (or unset) for an agent_pair key")
        template.kind = Session.KIND_AGENT_TO_AGENT
    else:
        v.add("key", "one of external_conversation or agent_pair is required")
    return template


def key_paths(request: session_service_pb2.FindOrCreateSessionRequest) -> dict[str, str]:
    """The session fields a find-or-create key fills, and the request field each comes from."""
    if request.WhichOneof("key") == "agent_pair":
        return {"agent": "agent_pair.agent", "peer_agent": "agent_pair.peer_agent"}
    return {
        "agent": "external_conversation.agent",
        "channel": "external_conversation.channel",
        "external_conversation_id": "external_conversation.conversation_id",
    }


# What a FindOrCreateSession template may fix that its key does not: a session the
# key finds must have the template's value of each of these it sets.
_TEMPLATE_FIXED = ("kind", "user", "peer_agent")


def template_fixed(
    request: session_service_pb2.FindOrCreateSessionRequest, values: dict[str, Any]
) -> dict[str, Any]:
    """The columns fixed at creation that the request's template sets itself,
    with their values (from `values`, the new session's row): what a session the
    key finds must match, else TEMPLATE_MISMATCH. The key's own fields (agent;
    the pair, whichever order) and creation-only fields (display_name, labels,
    group_name, ...) never count; nor does a kind the template leaves unset."""
    key_fields = {"agent", "peer_agent"} if request.WhichOneof("key") == "agent_pair" else {"agent"}
    template = request.session
    return {f: values[f] for f in _TEMPLATE_FIXED if f not in key_fields and getattr(template, f)}


def _fill(template: Session, field: str, key_value: str, key_path: str, v: Violations) -> None:
    current = getattr(template, field)
    if current and current != key_value:
        v.add(f"session.{field}", f"contradicts {key_path} ({shorten(key_value, 80)!r})")
    setattr(template, field, key_value)
