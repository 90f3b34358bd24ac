"""Error details that must not mislead (issue 9): one reason per rule, violations that name
only the field at fault, hints with the right name pattern, grammatical messages, and a
FindOrCreateSession that never answers a session its template contradicts. The event RPCs
too: AppendEvent's session key and author, its refusals, and the event name hints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tether.client import (
    AgentPair,
    AsyncSessionsClient,
    Event,
    ExternalConversation,
    FailedPreconditionError,
    InvalidArgumentError,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
    TetherError,
)

AGENT, USER = Participant.KIND_AGENT, Participant.KIND_USER
DIRECT, GROUP = Session.KIND_DIRECT, Session.KIND_GROUP
A2A, TRIGGER = Session.KIND_AGENT_TO_AGENT, Session.KIND_TRIGGER
CONCURRENCY = 32


def _participant(client: SessionsClient, parent: str, kind: Participant.Kind.ValueType) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=kind)).name


def _fields(error: TetherError) -> set[str]:
    return {v.field for v in error.violations}


def _text(error: TetherError) -> str:
    """Everything a caller reads of an error: message and violation descriptions."""
    return " ".join([error.message, *(f"{v.field}: {v.description}" for v in error.violations)])


# --- IMMUTABLE_FIELD: the same reason with and without an update mask ----------------------


@pytest.mark.parametrize("field", ["kind", "agent", "user", "peer_agent"])
def test_changing_an_immutable_session_field_is_immutable_field_with_or_without_a_mask(
    client: SessionsClient, parent: str, field: str
) -> None:
    agent, other_agent = _participant(client, parent, AGENT), _participant(client, parent, AGENT)
    if field == "peer_agent":
        s = client.create_session(
            parent=parent, session=Session(kind=A2A, agent=agent, peer_agent=other_agent)
        )
    else:
        user = _participant(client, parent, USER)
        s = client.create_session(parent=parent, session=Session(kind=DIRECT, agent=agent, user=user))
    changed: dict[str, Any] = {
        "kind": GROUP,
        "agent": other_agent,
        "user": _participant(client, parent, USER),
        "peer_agent": _participant(client, parent, AGENT),
    }
    change = Session(name=s.name, **{field: changed[field]})
    errors = []
    for mask in (None, [field]):
        with pytest.raises(InvalidArgumentError) as info:
            client.update_session(session=change, update_mask=mask)
        errors.append(info.value)
    for error in errors:
        assert error.reason == Reason.IMMUTABLE_FIELD, _text(error)
        assert _fields(error) == {f"session.{field}"}
    # Sending the current value back is no change, with or without a mask (AIP-203).
    same = Session(name=s.name, **{field: getattr(s, field)})
    assert client.update_session(session=same, update_mask=[field]) == s
    assert client.update_session(session=same) == s
    assert client.get_session(name=s.name) == s


def test_changing_a_participant_kind_is_immutable_field_with_or_without_a_mask(
    client: SessionsClient, parent: str
) -> None:
    p = client.create_participant(parent=parent, participant=Participant(kind=USER, display_name="P"))
    for mask in (None, ["kind"], ["kind", "display_name"]):
        with pytest.raises(InvalidArgumentError) as info:
            client.update_participant(participant=Participant(name=p.name, kind=AGENT), update_mask=mask)
        assert info.value.reason == Reason.IMMUTABLE_FIELD, (mask, _text(info.value))
        assert _fields(info.value) == {"participant.kind"}
    assert (
        client.update_participant(participant=Participant(name=p.name, kind=USER), update_mask=["kind"]) == p
    )
    assert client.get_participant(name=p.name) == p


# --- FindOrCreateParticipant: only the request's `kind` is at fault ------------------------


@pytest.mark.parametrize("kind", [Participant.KIND_UNSPECIFIED, 99])
def test_find_or_create_participant_without_a_valid_kind_names_only_kind(
    client: SessionsClient, parent: str, kind: int
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.find_or_create_participant(parent=parent, kind=kind, external_id="slack:U1")  # type: ignore[arg-type]
    assert _fields(info.value) == {"kind"}, _text(info.value)


# --- name hints show the right pattern -----------------------------------------------------


def test_name_hints_show_the_right_patterns(client: SessionsClient, parent: str) -> None:
    participant = _participant(client, parent, USER)
    with pytest.raises(InvalidArgumentError) as info:
        client.add_member(parent=participant, member=Member(participant="bogus"))
    text = _text(info.value)
    assert "namespaces//" not in text
    hints = {v.field: v.description for v in info.value.violations}
    assert "namespaces/{namespace}/sessions/{session}" in hints["parent"]
    assert "namespaces/{namespace}/participants/{participant}" in hints["member.participant"]


@pytest.mark.parametrize(
    "call",
    [
        lambda c, p: c.add_member(parent="nonsense", member=Member(participant="bogus")),
        lambda c, p: c.add_member(parent=f"{p}/sessions/s", member=Member(participant="bogus")),
        lambda c, p: c.create_session(parent="x", session=Session(kind=DIRECT, agent="a", user="u")),
        lambda c, p: c.create_session(parent=p, session=Session(kind=A2A, agent="a", peer_agent="b")),
        lambda c, p: c.find_or_create_session(
            parent="namespaces/", external_conversation=ExternalConversation(agent="a", conversation_id="c")
        ),
        lambda c, p: c.update_session(session=Session(name="namespaces//sessions/s", user="u")),
        lambda c, p: c.batch_get_sessions(parent="bad", names=["namespaces/x/participants/y"]),
        lambda c, p: c.update_member(member=Member(name=f"{p}/sessions/s", role=Member.ROLE_OWNER)),
    ],
)
def test_no_name_hint_has_an_empty_segment(client: SessionsClient, parent: str, call: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call(client, parent)
    text = _text(info.value)
    assert "namespaces//" not in text.replace("'namespaces//sessions/s'", "")  # the caller's own input


def test_a_bad_parent_is_the_only_violation_of_a_batch_get(client: SessionsClient, parent: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.batch_get_sessions(parent="bad", names=[f"{parent}/sessions/s"])
    assert _fields(info.value) == {"parent"}, _text(info.value)


# --- messages in plain English ----------------------------------------------------------


def test_wrong_kind_and_kind_rule_messages_use_the_right_article(client: SessionsClient, parent: str) -> None:
    agent, user = _participant(client, parent, AGENT), _participant(client, parent, USER)
    with pytest.raises(InvalidArgumentError) as info:
        client.create_session(parent=parent, session=Session(kind=DIRECT, agent=user, user=agent))
    assert info.value.reason == Reason.WRONG_PARTICIPANT_KIND
    hints = {v.field: v.description for v in info.value.violations}
    assert hints == {
        "session.agent": "must be an AGENT participant",
        "session.user": "must be a USER participant",
    }
    assert "an USER" not in info.value.message
    with pytest.raises(InvalidArgumentError) as info:
        client.create_session(
            parent=parent, session=Session(kind=A2A, agent=agent, user=user, peer_agent=agent)
        )
    assert "must be empty for an AGENT_TO_AGENT session" in _text(info.value)
    with pytest.raises(InvalidArgumentError) as info:
        client.create_session(parent=parent, session=Session(kind=GROUP, agent=agent, user=user))
    assert "must be empty for a GROUP session" in _text(info.value)


# --- FindOrCreateSession: a template that contradicts the session found --------------------


def test_template_contradicting_the_found_session_is_template_mismatch(
    client: SessionsClient, parent: str
) -> None:
    agent, user = _participant(client, parent, AGENT), _participant(client, parent, USER)
    key = ExternalConversation(agent=agent, channel="slack", conversation_id="C042")
    group = client.find_or_create_session(parent=parent, external_conversation=key).session
    assert group.kind == GROUP
    for template, fields in (
        (Session(kind=DIRECT, user=user), "session.kind,session.user"),
        (Session(user=user), "session.user"),
        (Session(kind=TRIGGER), "session.kind"),
    ):
        with pytest.raises(FailedPreconditionError) as info:
            client.find_or_create_session(parent=parent, external_conversation=key, session=template)
        error = info.value
        assert error.reason == Reason.TEMPLATE_MISMATCH
        assert error.metadata["resource_name"] == group.name
        assert error.metadata["fields"] == fields
        assert group.name in error.message
    # Creation-only fields and the key's own fields never conflict; neither does a matching kind.
    for template in (
        Session(display_name="other", description="d", group_name="g", labels={"a": "b"}, enabled=False),
        Session(kind=GROUP, agent=agent, channel="slack", external_conversation_id="C042"),
    ):
        found = client.find_or_create_session(parent=parent, external_conversation=key, session=template)
        assert (found.created, found.session) == (False, group)


def test_template_matching_a_direct_session_finds_it(client: SessionsClient, parent: str) -> None:
    agent, user, other = (_participant(client, parent, k) for k in (AGENT, USER, USER))
    key = ExternalConversation(agent=agent, conversation_id="dm-1")
    direct = client.find_or_create_session(
        parent=parent, external_conversation=key, session=Session(user=user)
    )
    again = client.find_or_create_session(
        parent=parent, external_conversation=key, session=Session(kind=DIRECT, user=user)
    )
    assert (again.created, again.session) == (False, direct.session)
    with pytest.raises(FailedPreconditionError) as info:
        client.find_or_create_session(parent=parent, external_conversation=key, session=Session(user=other))
    assert info.value.reason == Reason.TEMPLATE_MISMATCH
    assert info.value.metadata["fields"] == "session.user"


def test_template_mismatch_against_a_session_made_by_create_session(
    client: SessionsClient, parent: str
) -> None:
    agent, peer = _participant(client, parent, AGENT), _participant(client, parent, AGENT)
    trigger = client.create_session(
        parent=parent, session=Session(kind=TRIGGER, agent=agent, external_conversation_id="run-7")
    )
    key = ExternalConversation(agent=agent, conversation_id="run-7")
    with pytest.raises(FailedPreconditionError) as info:
        client.find_or_create_session(
            parent=parent, external_conversation=key, session=Session(kind=A2A, peer_agent=peer)
        )
    assert info.value.reason == Reason.TEMPLATE_MISMATCH
    assert info.value.metadata == {"resource_name": trigger.name, "fields": "session.kind,session.peer_agent"}


def test_agent_pair_in_either_order_is_no_mismatch(client: SessionsClient, parent: str) -> None:
    a, b = _participant(client, parent, AGENT), _participant(client, parent, AGENT)
    ab = client.find_or_create_session(parent=parent, agent_pair=AgentPair(agent=a, peer_agent=b)).session
    ba = client.find_or_create_session(
        parent=parent, agent_pair=AgentPair(agent=b, peer_agent=a), session=Session(kind=A2A, peer_agent=a)
    )
    assert (ba.created, ba.session) == (False, ab)


def test_undelete_if_deleted_refuses_a_contradicting_session_and_leaves_it_deleted(
    client: SessionsClient, parent: str
) -> None:
    agent, user = _participant(client, parent, AGENT), _participant(client, parent, USER)
    key = ExternalConversation(agent=agent, conversation_id="gone")
    group = client.find_or_create_session(parent=parent, external_conversation=key).session
    client.delete_session(name=group.name)
    with pytest.raises(FailedPreconditionError) as info:
        client.find_or_create_session(
            parent=parent, external_conversation=key, session=Session(user=user), undelete_if_deleted=True
        )
    assert info.value.reason == Reason.TEMPLATE_MISMATCH
    assert info.value.metadata["resource_name"] == group.name
    assert client.get_session(name=group.name).HasField("delete_time")
    restored = client.find_or_create_session(
        parent=parent, external_conversation=key, session=Session(kind=GROUP), undelete_if_deleted=True
    )
    assert (restored.created, restored.session.name) == (True, group.name)


async def test_concurrent_contradicting_templates_never_get_another_kind(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str
) -> None:
    """Half the callers want a DIRECT session, half a GROUP one, for one key: one session is
    created, and every caller gets either a session of the kind it asked for or TEMPLATE_MISMATCH."""
    agent, user = _participant(client, parent, AGENT), _participant(client, parent, USER)
    key = ExternalConversation(agent=agent, channel="slack", conversation_id="race-kinds")
    templates = [
        Session(kind=DIRECT, user=user) if i % 2 else Session(kind=GROUP) for i in range(CONCURRENCY)
    ]
    calls = [
        aclient.find_or_create_session(parent=parent, external_conversation=key, session=t) for t in templates
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    sessions = {r.session.name for r in results if not isinstance(r, BaseException)}
    assert len(sessions) == 1
    assert sum(r.created for r in results if not isinstance(r, BaseException)) == 1
    for template, result in zip(templates, results, strict=True):
        if isinstance(result, BaseException):
            assert isinstance(result, FailedPreconditionError), repr(result)
            assert result.reason == Reason.TEMPLATE_MISMATCH
            assert result.metadata["resource_name"] in sessions
        else:
            assert result.session.kind == template.kind


# --- AppendEvent: the session key and the author -----------------------------------------------


def _by_key(client: SessionsClient, rpc: str) -> Any:
    """FindOrCreateSession, or AppendEvent by key (which takes the key exactly as it does)."""
    if rpc == "find_or_create_session":
        return client.find_or_create_session
    return lambda **key: client.append_event(event=Event(), **key)


@pytest.mark.parametrize("rpc", ["append_event", "find_or_create_session"])
def test_a_bad_session_key_is_named_as_the_caller_wrote_it(
    client: SessionsClient, parent: str, other_parent: str, rpc: str
) -> None:
    """A key's fault is named at the key's field (`external_conversation.agent`, ...), once: not at
    a field of the template the caller never set (`session.agent`)."""
    agent, user = _participant(client, parent, AGENT), _participant(client, parent, USER)
    foreign, missing = _participant(client, other_parent, AGENT), f"{parent}/participants/nobody"

    def conversation(agent: str, channel: str = "") -> dict[str, Any]:
        return {
            "external_conversation": ExternalConversation(agent=agent, channel=channel, conversation_id="c")
        }

    cases: dict[str, tuple[dict[str, Any], str]] = {
        "an agent of another namespace": (conversation(foreign), "external_conversation.agent"),
        "a USER as the agent": (conversation(user), "external_conversation.agent"),
        "a missing agent": (conversation(missing), "external_conversation.agent"),
        "a bad channel": (conversation(agent, "SLACK"), "external_conversation.channel"),
        "no peer_agent": ({"agent_pair": AgentPair(agent=agent)}, "agent_pair.peer_agent"),
        "one agent twice": (
            {"agent_pair": AgentPair(agent=agent, peer_agent=agent)},
            "agent_pair.peer_agent",
        ),
    }
    wrong = []
    for what, (key, field) in cases.items():
        with pytest.raises(TetherError) as info:
            _by_key(client, rpc)(parent=parent, **key)
        error = info.value
        named = [v.field for v in error.violations] or [error.metadata.get("field", "")]
        if named != [field]:
            wrong.append(f"{what}: {error.code.name} {error.reason} names {named}, not [{field!r}]")
    assert wrong == [], "\n".join(wrong)


def test_event_name_hints_show_the_right_patterns(client: SessionsClient, parent: str) -> None:
    agent = _participant(client, parent, AGENT)
    session = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent)).name
    event_pattern = "namespaces/{namespace}/sessions/{session}/events/{event}"
    session_pattern = "namespaces/{namespace}/sessions/{session}"
    cases: list[tuple[Any, str, str]] = [
        (lambda: client.get_event(name=session), "name", event_pattern),
        (lambda: client.delete_event(name=f"{session}/events"), "name", event_pattern),
        (lambda: client.list_events_page(parent=f"{session}/events/e"), "parent", session_pattern),
        (lambda: client.purge_events(parent=parent, filter="*"), "parent", session_pattern),
        (lambda: client.append_event(parent=parent, event=Event()), "parent", session_pattern),
        (
            lambda: client.append_event(
                parent=session,
                external_conversation=ExternalConversation(agent=agent, conversation_id="c"),
                event=Event(),
            ),
            "parent",
            "form namespaces/{namespace},",
        ),
        (
            lambda: client.append_event(parent=session, event=Event(author="bogus")),
            "event.author",
            f"{parent}/participants/{{participant}}",
        ),
    ]
    for call, field, pattern in cases:
        with pytest.raises(InvalidArgumentError) as info:
            call()
        hints = {v.field: v.description for v in info.value.violations}
        assert list(hints) == [field], _text(info.value)
        assert pattern in hints[field], _text(info.value)
        assert "namespaces//" not in _text(info.value)


def test_no_event_name_hint_has_an_empty_segment(client: SessionsClient) -> None:
    calls: list[Callable[[], object]] = [
        lambda: client.get_event(name="namespaces//sessions/s/events/e"),
        lambda: client.append_event(parent="nonsense", event=Event(author="bogus")),
        lambda: client.append_event(
            parent="namespaces/",
            external_conversation=ExternalConversation(agent="a", conversation_id="c"),
            event=Event(),
        ),
        lambda: client.list_events_page(parent="namespaces//sessions/s"),
        lambda: client.purge_events(parent="x", filter="*"),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as info:
            call()
        text = _text(info.value).replace("'namespaces//sessions/s", "")  # the caller's own input
        assert "namespaces//" not in text, text


def test_append_refusals_name_what_is_at_fault(client: SessionsClient, parent: str) -> None:
    """Each refusal of an append has its own reason and names the resource at fault."""
    agent, user, stranger = (_participant(client, parent, k) for k in (AGENT, USER, USER))
    direct = client.create_session(parent=parent, session=Session(kind=DIRECT, agent=agent, user=user)).name
    first = client.append_event(parent=direct, event_id="first", event=Event(author=user)).event
    refusals: list[tuple[Any, str, dict[str, str]]] = [
        (
            lambda: client.append_event(parent=direct, event=Event(author=stranger)),
            Reason.NOT_A_MEMBER,
            {"resource_name": stranger, "session": direct},
        ),
        (
            lambda: client.append_event(parent=direct, event_id="first", event=Event()),
            Reason.EVENT_ALREADY_EXISTS,
            {"resource_name": first.name},
        ),
        (
            lambda: client.append_event(parent=direct, event=Event(), expected_last_sequence=0),
            Reason.STALE_SEQUENCE,
            {"resource_name": direct, "last_sequence": "1"},
        ),
    ]
    key = ExternalConversation(agent=agent, channel="slack", conversation_id="C1")
    group = client.append_event(parent=parent, external_conversation=key, event=Event()).session.name
    refusals.append(
        (
            lambda: client.append_event(
                parent=parent,
                external_conversation=key,
                session=Session(kind=DIRECT, user=user),
                event=Event(),
            ),
            Reason.TEMPLATE_MISMATCH,
            {"resource_name": group, "fields": "session.kind,session.user"},
        )
    )
    for call, reason, metadata in refusals:
        with pytest.raises(TetherError) as info:
            call()
        assert (info.value.reason, info.value.metadata) == (reason, metadata), _text(info.value)

    def refused(call: Callable[[], object], reason: str, resource: str) -> None:
        with pytest.raises(FailedPreconditionError) as caught:
            call()
        got = (caught.value.reason, caught.value.metadata.get("resource_name"))
        assert got == (reason, resource), _text(caught.value)

    client.delete_participant(name=stranger)
    refused(
        lambda: client.append_event(parent=group, event=Event(author=stranger)),
        Reason.PARTICIPANT_DELETED,
        stranger,
    )
    client.update_session(session=Session(name=group, enabled=False))
    refused(lambda: client.append_event(parent=group, event=Event()), Reason.SESSION_DISABLED, group)
    client.delete_session(name=direct)
    refused(lambda: client.append_event(parent=direct, event=Event()), Reason.SESSION_DELETED, direct)
    refused(lambda: client.delete_event(name=first.name), Reason.SESSION_DELETED, direct)
    assert client.get_event(name=first.name) == first  # a deleted session's events stay readable
