"""Errors are rich (ErrorInfo + BadRequest), never INTERNAL for a caller's
mistake, and the server stays up after bad input."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.errors import expect_error
from tether.client import (
    InvalidArgumentError,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
    TetherError,
)


def test_error_info_and_violations(client: SessionsClient, parent: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.create_session(parent=parent, session_id="Bad Id", session=Session())
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain == "tether"
    assert {"session_id", "session.kind", "session.agent"} <= {v.field for v in error.violations}


def test_not_found_carries_resource_name(client: SessionsClient, parent: str) -> None:
    name = f"{parent}/sessions/missing"
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND) as info:
        client.get_session(name=name)
    assert info.value.metadata["resource_name"] == name


@pytest.mark.parametrize(
    "call",
    [
        lambda c, p: c.get_session(name=""),
        lambda c, p: c.get_session(name="namespaces//sessions/x"),
        lambda c, p: c.create_participant(parent=p, participant=Participant(kind=99)),  # type: ignore[arg-type]
        lambda c, p: c.create_participant(
            parent=p, participant=Participant(kind=Participant.KIND_USER, display_name="a\x00b")
        ),
        lambda c, p: c.create_session(parent=p, session=Session(kind=Session.KIND_DIRECT, agent="nonsense")),
        lambda c, p: list(c.list_sessions(parent=p, filter='kind = "')),
        lambda c, p: list(c.list_sessions(parent=p, order_by="uid")),
        lambda c, p: c.record_activity(name=f"{p}/sessions/x", activity_time=Timestamp(seconds=-(10**12))),
        lambda c, p: c.add_member(
            parent=f"{p}/sessions/x", member=Member(participant="", role=Member.Role.ValueType(7))
        ),
        lambda c, p: c.update_member(member=Member(name="nope")),
        lambda c, p: c.remove_member(name="namespaces/a/sessions/b"),
        lambda c, p: c.find_or_create_participant(
            parent=p, kind=Participant.KIND_UNSPECIFIED, external_id="x"
        ),
    ],
)
def test_bad_input_is_never_internal(client: SessionsClient, parent: str, call: object) -> None:
    with pytest.raises(TetherError) as info:
        call(client, parent)  # type: ignore[operator]
    assert info.value.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert info.value.reason
    # And the server is still answering.
    assert client.get_namespace(name="namespaces/default").name == "namespaces/default"


def test_a_bad_watch_names_every_bad_field(client: SessionsClient, parent: str) -> None:
    """WatchSessions, the one streaming RPC, reports bad input like the unary ones: all of it
    at once, before the stream starts."""
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["start_revision", "read_mask"]
    ):
        next(iter(client.watch_sessions(parent=parent, start_revision=-5, read_mask=["etag", "nope"])))
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["parent"]):
        next(iter(client.watch_sessions(parent="namespaces/")))
