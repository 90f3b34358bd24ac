"""The validation battery: every bad field of a request is named at once, with the
right code; sizes are RESOURCE_EXHAUSTED; lengths count characters, not bytes."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from tether.client import (
    FailedPreconditionError,
    InvalidArgumentError,
    Member,
    Participant,
    ResourceExhaustedError,
    Session,
    SessionsClient,
    TetherError,
)


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


def _fields(error: TetherError) -> set[str]:
    return {v.field for v in error.violations}


def _state(size: int) -> struct_pb2.Struct:
    state = struct_pb2.Struct()
    state.update({"blob": "x" * size})
    return state


def test_every_bad_field_at_once(client: SessionsClient) -> None:
    with pytest.raises(InvalidArgumentError) as info:
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
    assert {
        "parent",
        "session_id",
        "request_id",
        "session.agent",
        "session.user",
        "session.channel",
        "session.display_name",
        "session.description",
        "session.ttl",
    } <= _fields(info.value)
    assert sum(f.startswith("session.labels") for f in _fields(info.value)) == 2


def test_lengths_count_characters(client: SessionsClient, parent: str) -> None:
    emoji = "🤖" * 200  # 800 bytes in UTF-8, 200 characters
    created = client.create_participant(
        parent=parent, participant=Participant(kind=Participant.KIND_USER, display_name=emoji)
    )
    assert created.display_name == emoji
    with pytest.raises(InvalidArgumentError) as info:
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, display_name=emoji + "🤖")
        )
    assert _fields(info.value) == {"participant.display_name"}


def test_nul_characters_are_refused(client: SessionsClient, parent: str, agent: str) -> None:
    state = struct_pb2.Struct()
    state.update({"nested": {"k\x00": "v"}})
    with pytest.raises(InvalidArgumentError) as info:
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
    assert {"session.external_conversation_id", "session.session_state"} <= _fields(info.value)


def test_sizes_are_resource_exhausted(client: SessionsClient, parent: str, agent: str) -> None:
    with pytest.raises(ResourceExhaustedError) as info:
        client.create_session(
            parent=parent,
            session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(256 * 1024)),
        )
    assert info.value.reason == "SIZE_LIMIT_EXCEEDED"
    assert _fields(info.value) == {"session.session_state"}
    metadata = _state(64 * 1024)
    with pytest.raises(ResourceExhaustedError):
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, metadata=metadata)
        )
    # Just under the limit is fine.
    ok = client.create_session(
        parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(200 * 1024))
    )
    assert ok.session_state.fields["blob"].string_value
    # Beyond the transport limit (4 MiB), gRPC itself answers RESOURCE_EXHAUSTED.
    with pytest.raises(TetherError) as transport:
        client.create_session(
            parent=parent,
            session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=_state(5 * 1024 * 1024)),
        )
    assert transport.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_label_count(client: SessionsClient, parent: str) -> None:
    labels = {f"k{i}": "v" for i in range(65)}
    with pytest.raises(InvalidArgumentError) as info:
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER, labels=labels)
        )
    assert _fields(info.value) == {"participant.labels"}


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
    with pytest.raises(InvalidArgumentError) as info:
        client.record_activity(name=s.name, activity_time=timestamp_pb2.Timestamp(seconds=300_000_000_000))
    assert _fields(info.value) == {"activity_time"}
    with pytest.raises(InvalidArgumentError):
        client.update_session(
            session=Session(name=s.name, expire_time=timestamp_pb2.Timestamp(seconds=1, nanos=-1))
        )


def test_add_member_needs_a_live_session_and_participant(
    client: SessionsClient, parent: str, agent: str
) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent))
    user = client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_USER)).name
    client.delete_participant(name=user)
    with pytest.raises(FailedPreconditionError) as info:
        client.add_member(parent=s.name, member=Member(participant=user))
    assert info.value.reason == "PARTICIPANT_DELETED"
    client.undelete_participant(name=user)
    client.update_session(session=Session(name=s.name, enabled=False))
    with pytest.raises(FailedPreconditionError) as info:
        client.add_member(parent=s.name, member=Member(participant=user))
    assert info.value.reason == "SESSION_DISABLED"
    client.update_session(session=Session(name=s.name, enabled=True))
    client.delete_session(name=s.name)
    with pytest.raises(FailedPreconditionError) as info:
        client.add_member(parent=s.name, member=Member(participant=user))
    assert info.value.reason == "SESSION_DELETED"
