"""Regressions from the property tests: hostile input gets a clean, bounded error."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from tests.support.errors import expect_error
from tests.support.server import ServerProcess
from tether.client import (
    Participant,
    Reason,
    Session,
    SessionsClient,
    TetherError,
)
from tether.v1 import session_service_pb2 as pb


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


def _fields(error: TetherError) -> set[str]:
    return {v.field for v in error.violations}


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_in_a_struct(client: SessionsClient, parent: str, number: float) -> None:
    metadata = struct_pb2.Struct()
    metadata.fields["x"].number_value = number
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["participant.metadata"]
    ):
        client.create_participant(parent=parent, participant=Participant(kind=1, metadata=metadata))  # type: ignore[arg-type]


def test_deeply_nested_struct(client: SessionsClient, parent: str, agent: str) -> None:
    value: dict[str, Any] = {}
    for _ in range(33):  # past the 32-level limit, within what protobuf itself decodes
        value = {"a": value}
    state = struct_pb2.Struct()
    state.update(value)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT) as info:
        client.create_session(
            parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, session_state=state)
        )
    # Our 32-level limit and protobuf's own decoding limit meet here: either names it.
    assert _fields(info.value) in ({"session.session_state"}, {"request"})


@pytest.mark.parametrize(
    "expiry",
    [
        {"ttl": duration_pb2.Duration(seconds=2**63 - 1)},
        {"ttl": duration_pb2.Duration(seconds=315_576_000_000)},
        {"expire_time": timestamp_pb2.Timestamp(seconds=-62_135_596_801)},
        {"expire_time": timestamp_pb2.Timestamp(seconds=0, nanos=-1)},
    ],
    ids=["ttl-int64", "ttl-max", "expire-before-year-1", "negative-nanos"],
)
def test_impossible_expiry(
    client: SessionsClient, parent: str, agent: str, expiry: dict[str, object]
) -> None:
    fields = [f"session.{field}" for field in expiry]
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=fields):
        client.create_session(parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, **expiry))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["\ud800", "\x00"])
def test_forged_page_tokens(client: SessionsClient, parent: str, value: str) -> None:
    payload = json.dumps({"v": [value, "x"], "f": "x"}).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, fields=["page_token"]):
        client.list_sessions_page(parent=parent, page_token=token)


def test_out_of_range_kind_on_update(client: SessionsClient, parent: str, agent: str) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent))
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.kind"]):
        client.update_session(session=Session(name=s.name, kind=40000, display_name="x"))  # type: ignore[arg-type]


def test_undecodable_bytes(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(
            "/tether.v1.SessionService/GetSession",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.GetSessionRequest.FromString,
        )
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["request"]):
            call(b"\x00", timeout=10)


def test_errors_stay_small_whatever_the_input(client: SessionsClient) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT) as info:
        client.batch_get_sessions(
            parent="namespaces/" + "😀" * 7000, names=["namespaces/x/sessions/s"] * 1000
        )
    error = info.value
    assert len(error.violations) <= 21
    assert len(error.message) <= 512
    assert all(len(v.description) <= 200 for v in error.violations)


def test_undecodable_mutating_calls_log_no_error(server: ServerProcess) -> None:
    method = "/tether.v1.SessionService/AddMember"
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda raw: raw, response_deserializer=bytes)
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["request"]):
            call(b"\x00", timeout=10)
    audit = server.wait_for_event("audit", 30, method=method, code="INVALID_ARGUMENT")
    assert audit is not None
    assert not [e for e in server.events() if e.get("level") == "error"], server.log_tail()
