"""The validation battery: every bad field of a request is named at once, with the
right code; sizes are RESOURCE_EXHAUSTED; lengths count characters, not bytes."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from tests.support.errors import expect_error
from tether.client import (
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
