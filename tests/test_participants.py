"""Participants through the real server: standard methods and find-or-create."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from tests.support.errors import expect_error
from tether.client import (
    Participant,
    Reason,
    SessionsClient,
)

AGENT = Participant.KIND_AGENT
USER = Participant.KIND_USER


def test_create_get_roundtrip(client: SessionsClient, parent: str) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"team": "support", "tier": 2})
    created = client.create_participant(
        parent=parent,
        participant_id="bot",
        participant=Participant(
            kind=AGENT, display_name="Bot 🤖", external_id="ext-1", labels={"env": "prod"}, metadata=metadata
        ),
    )
    assert created.name == f"{parent}/participants/bot"
    assert created.uid
    assert created.etag
    assert created.enabled is True
    assert created.managed is False
    assert created.metadata == metadata
    assert created.create_time == created.update_time
    assert not created.HasField("delete_time")
    assert client.get_participant(name=created.name) == created


def test_server_assigns_uuid_id(client: SessionsClient, parent: str) -> None:
    created = client.create_participant(parent=parent, participant=Participant(kind=USER))
    participant_id = created.name.rsplit("/", 1)[1]
    assert len(participant_id) == 36
    assert participant_id == participant_id.lower()


def test_duplicate_id_and_external_id(client: SessionsClient, parent: str) -> None:
    client.create_participant(
        parent=parent, participant_id="a", participant=Participant(kind=USER, external_id="x")
    )
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.PARTICIPANT_ALREADY_EXISTS):
        client.create_participant(parent=parent, participant_id="a", participant=Participant(kind=USER))
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.EXTERNAL_ID_ALREADY_EXISTS):
        client.create_participant(parent=parent, participant=Participant(kind=USER, external_id="x"))
    # The same external id is fine for the other kind.
    client.create_participant(parent=parent, participant=Participant(kind=AGENT, external_id="x"))


def test_bad_input_names_every_field(client: SessionsClient, parent: str) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=[
            "participant_id",
            "participant.kind",
            "participant.display_name",
            "participant.labels['Bad Key']",
        ],
    ) as info:
        client.create_participant(
            parent=parent,
            participant_id="Not_Valid",
            participant=Participant(display_name="x" * 201, labels={"Bad Key": "v"}),
        )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_namespace_is_not_found(client: SessionsClient) -> None:
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
        client.create_participant(parent="namespaces/does-not-exist", participant=Participant(kind=USER))
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.PARTICIPANT_NOT_FOUND):
        client.get_participant(name="namespaces/does-not-exist/participants/x")


def test_update_with_and_without_mask(client: SessionsClient, parent: str) -> None:
    p = client.create_participant(
        parent=parent,
        participant_id="u",
        participant=Participant(kind=USER, display_name="Old", labels={"a": "1"}),
    )
    # No mask: only the fields set in the request change.
    updated = client.update_participant(participant=Participant(name=p.name, display_name="New"))
    assert updated.display_name == "New"
    assert dict(updated.labels) == {"a": "1"}
    assert updated.etag != p.etag
    assert updated.update_time.ToDatetime() >= p.update_time.ToDatetime()
    # Explicit mask: an unset field in the mask is cleared.
    cleared = client.update_participant(participant=Participant(name=p.name), update_mask=["labels"])
    assert dict(cleared.labels) == {}
    assert cleared.display_name == "New"
    # enabled=false is a real value with an implicit mask.
    disabled = client.update_participant(participant=Participant(name=p.name, enabled=False))
    assert disabled.enabled is False
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.IMMUTABLE_FIELD, fields=["participant.kind"]):
        client.update_participant(participant=Participant(name=p.name), update_mask=["kind"])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["update_mask"]):
        client.update_participant(participant=Participant(name=p.name), update_mask=["no_such_field"])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.IMMUTABLE_FIELD, fields=["participant.kind"]):
        client.update_participant(participant=Participant(name=p.name, kind=AGENT))
    # Sending the unchanged immutable kind back is fine.
    same = client.update_participant(participant=Participant(name=p.name, kind=USER, display_name="Again"))
    assert same.display_name == "Again"


def test_soft_delete_and_undelete(client: SessionsClient, parent: str) -> None:
    p = client.create_participant(parent=parent, participant=Participant(kind=USER, external_id="e"))
    deleted = client.delete_participant(name=p.name)
    assert deleted.HasField("delete_time")
    assert deleted.HasField("purge_time")
    assert client.get_participant(name=p.name).HasField("delete_time")
    listed = [x.name for x in client.list_participants(parent=parent)]
    assert p.name not in listed
    assert p.name in [x.name for x in client.list_participants(parent=parent, show_deleted=True)]
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.PARTICIPANT_DELETED):
        client.delete_participant(name=p.name)
    # The external id is free again while the participant is deleted...
    other = client.create_participant(parent=parent, participant=Participant(kind=USER, external_id="e"))
    # ...so undeleting the first would collide.
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.EXTERNAL_ID_ALREADY_EXISTS):
        client.undelete_participant(name=p.name)
    client.delete_participant(name=other.name)
    restored = client.undelete_participant(name=p.name)
    assert not restored.HasField("delete_time")
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.PARTICIPANT_ALREADY_EXISTS):
        client.undelete_participant(name=p.name)


def test_find_or_create_participant(client: SessionsClient, parent: str) -> None:
    first = client.find_or_create_participant(
        parent=parent, kind=USER, external_id="feishu:ou_1", participant=Participant(display_name="Ann")
    )
    assert first.created is True
    assert first.participant.display_name == "Ann"
    assert first.participant.external_id == "feishu:ou_1"
    again = client.find_or_create_participant(parent=parent, kind=USER, external_id="feishu:ou_1")
    assert again.created is False
    assert again.participant == first.participant
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["participant.kind"]):
        client.find_or_create_participant(
            parent=parent, kind=USER, external_id="k", participant=Participant(kind=AGENT)
        )
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["external_id"]):
        client.find_or_create_participant(parent=parent, kind=USER, external_id="")


def test_list_filter_order_and_pages(client: SessionsClient, parent: str) -> None:
    for i in range(7):
        client.create_participant(
            parent=parent,
            participant_id=f"p{i}",
            participant=Participant(
                kind=AGENT if i % 2 else USER,
                display_name=f"name-{i}",
                labels={"team": "a" if i < 3 else "b"},
            ),
        )
    agents = [
        p.name.rsplit("/", 1)[1] for p in client.list_participants(parent=parent, filter="kind = AGENT")
    ]
    assert sorted(agents) == ["p1", "p3", "p5"]
    team_a = {
        p.name.rsplit("/", 1)[1] for p in client.list_participants(parent=parent, filter='labels.team = "a"')
    }
    assert team_a == {"p0", "p1", "p2"}
    by_name = [
        p.display_name for p in client.list_participants(parent=parent, order_by="display_name", page_size=2)
    ]
    assert by_name == [f"name-{i}" for i in range(7)]
    newest_first = [p.name.rsplit("/", 1)[1] for p in client.list_participants(parent=parent, page_size=3)]
    assert newest_first == [f"p{i}" for i in reversed(range(7))]
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER, fields=["filter"]):
        list(client.list_participants(parent=parent, filter="nope = 1"))
