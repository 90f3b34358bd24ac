"""The validation battery: every bad field of a request is named at once, with the
right code; sizes are RESOURCE_EXHAUSTED; lengths count characters, not bytes. For
sessions, participants and members, and for events (AppendEvent and the event queries)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from tests.support.errors import expect_error
from tether.client import (
    AuthorKey,
    Event,
    ExternalConversation,
    InvalidArgumentError,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
)


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


def _state(size: int) -> struct_pb2.Struct:
    state = struct_pb2.Struct()
    state.update({"blob": "x" * size})
    return state


def test_every_bad_field_at_once(client: SessionsClient) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=[
            "parent",
            "session_id",
            "request_id",
            "session.agent",
            "session.user",
            "session.display_name",
            "session.description",
            "session.channel",
            "session.labels['Key']",
            "session.labels['ok']",
            "session.ttl",
        ],
    ):
        client.create_session(
            parent="namespaces/Bad_Parent",
            session_id="-bad-",
            session=Session(
                kind=Session.KIND_DIRECT,
                agent="not-a-name",
                channel="SLACK",
                display_name="d" * 201,
                description="x\x00y",
                labels={"Key": "v", "ok": "v" * 257},
                ttl=duration_pb2.Duration(seconds=-5),
            ),
            request_id="nope",
        )


def test_lengths_count_characters(client: SessionsClient, parent: str) -> None:
    emoji = "🤖" * 200  # 800 bytes in UTF-8, 200 characters
    created = client.create_participant(
        parent=parent, participant=Participant(kind=Participant.KIND_USER, display_name=emoji)
    )
    assert created.display_name == emoji
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["participant.display_name"]
    ):
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, display_name=emoji + "🤖")
        )


def test_nul_characters_are_refused(client: SessionsClient, parent: str, agent: str) -> None:
    state = struct_pb2.Struct()
    state.update({"nested": {"k\x00": "v"}})
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["session.external_conversation_id", "session.labels['a']", "session.session_state"],
    ):
        client.create_session(
            parent=parent,
            session=Session(
                kind=Session.KIND_GROUP,
                agent=agent,
                external_conversation_id="c\x00",
                labels={"a": "\x00"},
                session_state=state,
            ),
        )


def test_sizes_are_resource_exhausted(client: SessionsClient, parent: str, agent: str) -> None:
    with expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED, fields=["session.session_state"]
    ):
        client.create_session(
            parent=parent,
            session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(256 * 1024)),
        )
    metadata = _state(64 * 1024)
    with expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED, fields=["participant.metadata"]
    ):
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, metadata=metadata)
        )
    # Just under the limit is fine.
    ok = client.create_session(
        parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(200 * 1024))
    )
    assert ok.session_state.fields["blob"].string_value
    # Beyond the transport limit (4 MiB), gRPC itself answers RESOURCE_EXHAUSTED.
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, ""):
        client.create_session(
            parent=parent,
            session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(5 * 1024 * 1024)),
        )


def test_label_count(client: SessionsClient, parent: str) -> None:
    labels = {f"k{i}": "v" for i in range(65)}
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["participant.labels"]
    ):
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, labels=labels)
        )


def test_update_mask_paths(client: SessionsClient, parent: str, agent: str) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent))
    with pytest.raises(InvalidArgumentError) as info:
        client.update_session(session=Session(name=s.name), update_mask=["create_time", "agent", "bogus"])
    descriptions = " ".join(v.description for v in info.value.violations)
    assert "output only" in descriptions
    assert "'agent'" not in descriptions  # a mask may name an immutable field; its value is checked
    assert "unknown" in descriptions


def test_timestamps_out_of_range(client: SessionsClient, parent: str, agent: str) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent))
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["activity_time"]):
        client.record_activity(name=s.name, activity_time=timestamp_pb2.Timestamp(seconds=300_000_000_000))
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.expire_time"]
    ):
        client.update_session(
            session=Session(name=s.name, expire_time=timestamp_pb2.Timestamp(seconds=1, nanos=-1))
        )


def test_add_member_needs_a_live_session_and_participant(
    client: SessionsClient, parent: str, agent: str
) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent))
    user = client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_USER)).name
    client.delete_participant(name=user)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.PARTICIPANT_DELETED):
        client.add_member(parent=s.name, member=Member(participant=user))
    client.undelete_participant(name=user)
    client.update_session(session=Session(name=s.name, enabled=False))
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DISABLED):
        client.add_member(parent=s.name, member=Member(participant=user))
    client.update_session(session=Session(name=s.name, enabled=True))
    client.delete_session(name=s.name)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DELETED):
        client.add_member(parent=s.name, member=Member(participant=user))


# --- events -----------------------------------------------------------------------------------


@pytest.fixture
def trigger(client: SessionsClient, parent: str, agent: str) -> str:
    """A TRIGGER session: any author may write there, so only the event itself is at fault."""
    return client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent)).name


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _nested(depth: int) -> struct_pb2.Struct:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return _struct(value)


def test_every_bad_field_of_an_append_at_once(client: SessionsClient, trigger: str) -> None:
    event = Event(
        author="namespaces/other/participants/p",
        invocation_id="i" * 129,
        branch="root..planner",
        labels={"Key": "v", "ok": "v" * 257},
        content=_struct({"n": float("nan")}),
        state_delta=_nested(33),
        event_time=timestamp_pb2.Timestamp(seconds=-62_135_596_801),
    )
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=[
            "event_id",
            "request_id",
            "event.author",
            "event.invocation_id",
            "event.branch",
            "event.labels['Key']",
            "event.labels['ok']",
            "event.content",
            "event.state_delta",
            "event.event_time",
            "expected_last_sequence",
        ],
    ):
        client.append_event(
            parent=trigger, event_id="-bad-", event=event, request_id="nope", expected_last_sequence=-1
        )
    assert client.get_session(name=trigger).event_count == 0


def test_every_bad_field_of_an_append_by_key_at_once(client: SessionsClient, parent: str, agent: str) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["parent", "external_conversation.conversation_id", "event_id", "event.branch"],
    ):
        client.append_event(
            parent=f"{parent}/sessions/not-a-namespace",  # by key, the parent is the namespace
            external_conversation=ExternalConversation(agent=agent),
            event_id="Bad_Id",
            event=Event(branch="."),
        )


@pytest.mark.parametrize("by", ["name", "key"])
def test_a_bad_author_key_hides_no_other_bad_field(
    client: SessionsClient, parent: str, agent: str, trigger: str, by: str
) -> None:
    """The author key is checked with the rest: its violations come with those of the other fields,
    not instead of them."""
    if by == "name":
        where: dict[str, object] = {"parent": trigger, "session": Session(display_name="only with a key")}
        others = ["session"]
    else:
        key = ExternalConversation(agent=agent, conversation_id="")
        where = {"parent": parent, "external_conversation": key}
        others = ["external_conversation.conversation_id"]
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["author_key.kind", "author_key.external_id", "expected_last_sequence", *others],
    ):
        client.append_event(
            **where,  # type: ignore[arg-type]
            author_key=AuthorKey(kind=7),  # type: ignore[arg-type]
            event=Event(),
            expected_last_sequence=-1,
        )


def test_event_lengths_count_characters(client: SessionsClient, trigger: str) -> None:
    emoji = "🤖"
    fine = Event(invocation_id=emoji * 128, labels={"k": emoji * 256}, branch=".".join(["ab"] * 85) + ".c")
    assert len(fine.branch) == 256
    appended = client.append_event(parent=trigger, event=fine).event
    assert (appended.invocation_id, appended.labels["k"], appended.branch) == (
        fine.invocation_id,
        fine.labels["k"],
        fine.branch,
    )
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["event.invocation_id", "event.labels['k']", "event.branch"],
    ):
        client.append_event(
            parent=trigger,
            event=Event(invocation_id=emoji * 129, labels={"k": emoji * 257}, branch=fine.branch + "d"),
        )


def test_event_nul_characters_are_refused(client: SessionsClient, trigger: str) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["event.invocation_id", "event.labels['a']", "event.content", "event.state_delta"],
    ):
        client.append_event(
            parent=trigger,
            event=Event(
                invocation_id="i\x00",
                labels={"a": "\x00"},
                content=_struct({"nested": {"k\x00": "v"}}),
                state_delta=_struct({"list": ["ok", "n\x00"]}),
            ),
        )


def test_event_sizes_are_resource_exhausted(client: SessionsClient, trigger: str) -> None:
    limit = 1024 * 1024
    for content_share in (limit, limit // 2, 0):  # content alone, half and half, state_delta alone
        event = Event()
        if content_share:
            event.content.CopyFrom(_state(content_share))
        if limit - content_share:
            event.state_delta.CopyFrom(_state(limit - content_share))
        with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED) as info:
            client.append_event(parent=trigger, event=event)
        assert {v.field for v in info.value.violations} <= {"event.content", "event.state_delta"}
        assert info.value.violations, info.value
    # Just under the limit is fine (content alone: state_delta would be over the state's own limit).
    ok = client.append_event(parent=trigger, event=Event(content=_state(limit - 64))).event
    assert len(ok.content.fields["blob"].string_value) == limit - 64
    # A state_delta that would make session_state too big is refused as the state's size.
    with expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED, fields=["event.state_delta"]
    ):
        client.append_event(parent=trigger, event=Event(state_delta=_state(256 * 1024)))
    # Beyond the transport limit (4 MiB), gRPC itself answers RESOURCE_EXHAUSTED.
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, ""):
        client.append_event(parent=trigger, event=Event(content=_state(5 * 1024 * 1024)))
    assert client.get_session(name=trigger).event_count == 1


def test_event_queries_are_checked(client: SessionsClient, trigger: str) -> None:
    client.append_event(parent=trigger, event=Event())
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_SIZE, fields=["page_size"]):
        client.list_events_page(parent=trigger, page_size=-1)
    assert len(client.list_events_page(parent=trigger, page_size=5000).events) == 1  # clamped, not refused
    for filter_ in ("kind = DIRECT", "sequence > one", "event_time > 0000-01-01T00:00:00Z", "sequence >"):
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER, fields=["filter"]) as info:
            client.list_events_page(parent=trigger, filter=filter_)
        assert "position" in info.value.violations[0].description, info.value
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER, fields=["filter"]):
            client.purge_events(parent=trigger, filter=filter_)
    for order_by in ("create_time", "sequence up", "sequence, sequence"):
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ORDER_BY, fields=["order_by"]):
            client.list_events_page(parent=trigger, order_by=order_by)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["filter"]):
        client.purge_events(parent=trigger, filter="")
    assert client.get_session(name=trigger).event_count == 1
