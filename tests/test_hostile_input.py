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
from tests.support.strategies import BAD_INTEGER_CURSORS, forge_page_token
from tether.client import (
    Event,
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


# --- events -------------------------------------------------------------------------------------


@pytest.fixture
def trigger(client: SessionsClient, parent: str, agent: str) -> str:
    return client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent)).name


def _nested(depth: int) -> struct_pb2.Struct:
    """``depth`` Structs, each the only field of the one around it."""
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"a": value}
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@pytest.mark.parametrize("field", ["content", "state_delta"])
@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_in_an_event(
    client: SessionsClient, trigger: str, field: str, number: float
) -> None:
    struct = struct_pb2.Struct()
    struct.update({"ok": 1, "deep": {"list": [1, {"x": 0}]}})
    struct.fields["deep"].struct_value.fields["list"].list_value.values[1].struct_value.fields[
        "x"
    ].number_value = number
    event = Event()
    getattr(event, field).CopyFrom(struct)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=[f"event.{field}"]):
        client.append_event(parent=trigger, event=event)
    assert client.get_session(name=trigger).event_count == 0


@pytest.mark.parametrize("field", ["content", "state_delta"])
def test_deeply_nested_event_structs(client: SessionsClient, trigger: str, field: str) -> None:
    at_limit = Event()
    getattr(at_limit, field).CopyFrom(_nested(32))
    appended = client.append_event(parent=trigger, event=at_limit).event
    assert getattr(client.get_event(name=appended.name), field) == getattr(at_limit, field)
    assert list(client.list_events(parent=trigger)) == [appended]
    past = Event()
    getattr(past, field).CopyFrom(_nested(33))  # past the 32-level limit, within what protobuf decodes
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=[f"event.{field}"]):
        client.append_event(parent=trigger, event=past)
    assert client.get_session(name=trigger).event_count == 1


@pytest.mark.parametrize("value", ["\x00", *BAD_INTEGER_CURSORS])
@pytest.mark.parametrize("order_by", ["", "sequence desc"])
def test_forged_event_page_tokens(client: SessionsClient, trigger: str, value: str, order_by: str) -> None:
    """Tokens with a right fingerprint (anyone can compute it) whose cursor is no int64."""
    client.append_event(parent=trigger, event=Event())
    canonical = order_by or "sequence asc"
    token = forge_page_token([trigger, "", canonical], [value])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, fields=["page_token"]):
        client.list_events_page(parent=trigger, order_by=order_by, page_token=token)


def test_a_lone_surrogate_in_an_event_page_token(client: SessionsClient, trigger: str) -> None:
    payload = json.dumps({"v": ["\ud800"], "f": "x"}).encode()  # JSON escapes it: \\ud800
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, fields=["page_token"]):
        client.list_events_page(parent=trigger, page_token=token)


def test_a_forged_event_page_token_in_range_pages_on(client: SessionsClient, trigger: str) -> None:
    names = [client.append_event(parent=trigger, event=Event()).event.name for _ in range(3)]
    token = forge_page_token([trigger, "", "sequence asc"], ["1"])
    assert [e.name for e in client.list_events_page(parent=trigger, page_token=token).events] == names[1:]
    token = forge_page_token([trigger, "", "sequence desc"], [str(2**63 - 1)])
    assert [
        e.name for e in client.list_events_page(parent=trigger, page_token=token, newest_first=True).events
    ] == names[::-1]


def test_undecodable_event_requests(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        for method in ("AppendEvent", "GetEvent", "ListEvents", "DeleteEvent", "PurgeEvents"):
            call = channel.unary_unary(
                f"/tether.v1.SessionService/{method}",
                request_serializer=lambda raw: raw,
                response_deserializer=bytes,
            )
            with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["request"]):
                call(b"\x0a\xff", timeout=10)  # field 1 (a string) claims 255 bytes, 0 follow


def test_append_errors_stay_small_whatever_the_input(client: SessionsClient) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT) as info:
        client.append_event(
            parent="namespaces/" + "😀" * 7000,
            event_id="E" * 10_000,
            event=Event(
                author="x" * 100_000,
                invocation_id="x" * 100_000,
                branch="." * 100_000,
                labels={f"K{i}" + "é" * 100: "v" for i in range(5000)},
            ),
        )
    error = info.value
    assert len(error.violations) <= 21
    assert len(error.message) <= 512
    assert all(len(v.description) <= 200 for v in error.violations)
