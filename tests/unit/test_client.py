"""Unit tests of `tether.client` without a Tether server.

The blocking client runs in a worker thread against a grpc_testing channel while the
test plays the server; the asyncio client talks to a tiny grpc.aio server on loopback
that implements only what a test needs.
"""

from __future__ import annotations

import inspect
import json
import queue
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2

from tests.support.errors import expect_error
from tether.client import (
    AbortedError,
    AgentPair,
    AsyncSessionsClient,
    AuthorKey,
    Event,
    ExternalConversation,
    FieldViolation,
    InvalidArgumentError,
    Member,
    Namespace,
    NotFoundError,
    OutOfRangeError,
    Participant,
    Session,
    SessionsClient,
    TetherError,
    UnavailableError,
    WatchSessionsResponse,
    _common,
)
from tether.v1 import session_service_pb2 as pb

T = TypeVar("T")

SERVICE = pb.DESCRIPTOR.services_by_name["SessionService"]
TOKEN = "s3cret"
AUTHORIZATION = ("authorization", f"Bearer {TOKEN}")
PARENT = "namespaces/default"
SESSION = f"{PARENT}/sessions/s1"
EVENT = f"{SESSION}/events/e1"
WAIT = 10.0  # seconds a worker may take before the test fails instead of hanging


def output_class(method: str) -> type[Message]:
    return GetMessageClass(SERVICE.methods_by_name[method].output_type)


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: tuple[tuple[str, str], ...] = (),
) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status, as the Tether server sends it."""
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=reason, domain="tether", metadata=metadata)]
    if violations:
        bad = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
        details.append(error_details_pb2.BadRequest(field_violations=bad))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


# Every unary RPC: a call with every request field set, and the request it must send.
UNARY_CASES: list[tuple[str, Callable[[Any], Any], Message]] = [
    (
        "CreateNamespace",
        lambda c: c.create_namespace(
            namespace_id="ns", namespace=Namespace(display_name="N"), request_id="r", validate_only=True
        ),
        pb.CreateNamespaceRequest(
            namespace_id="ns", namespace=Namespace(display_name="N"), request_id="r", validate_only=True
        ),
    ),
    (
        "GetNamespace",
        lambda c: c.get_namespace(name="namespaces/a"),
        pb.GetNamespaceRequest(name="namespaces/a"),
    ),
    (
        "ListNamespaces",
        lambda c: c.list_namespaces_page(page_size=3, page_token="t"),
        pb.ListNamespacesRequest(page_size=3, page_token="t"),
    ),
    (
        "DeleteNamespace",
        lambda c: c.delete_namespace(name="namespaces/a", force=True, etag="e"),
        pb.DeleteNamespaceRequest(name="namespaces/a", force=True, etag="e"),
    ),
    (
        "CreateParticipant",
        lambda c: c.create_participant(
            parent=PARENT,
            participant_id="p",
            participant=Participant(kind=Participant.KIND_USER),
            request_id="r",
            validate_only=True,
        ),
        pb.CreateParticipantRequest(
            parent=PARENT,
            participant_id="p",
            participant=Participant(kind=Participant.KIND_USER),
            request_id="r",
            validate_only=True,
        ),
    ),
    ("GetParticipant", lambda c: c.get_participant(name="p"), pb.GetParticipantRequest(name="p")),
    (
        "ListParticipants",
        lambda c: c.list_participants_page(
            parent=PARENT, page_size=3, page_token="t", filter="f", order_by="o", show_deleted=True
        ),
        pb.ListParticipantsRequest(
            parent=PARENT, page_size=3, page_token="t", filter="f", order_by="o", show_deleted=True
        ),
    ),
    (
        "UpdateParticipant",
        lambda c: c.update_participant(participant=Participant(name="p"), update_mask=["labels"]),
        pb.UpdateParticipantRequest(
            participant=Participant(name="p"), update_mask=field_mask_pb2.FieldMask(paths=["labels"])
        ),
    ),
    (
        "DeleteParticipant",
        lambda c: c.delete_participant(name="p", etag="e"),
        pb.DeleteParticipantRequest(name="p", etag="e"),
    ),
    (
        "UndeleteParticipant",
        lambda c: c.undelete_participant(name="p", etag="e"),
        pb.UndeleteParticipantRequest(name="p", etag="e"),
    ),
    (
        "FindOrCreateParticipant",
        lambda c: c.find_or_create_participant(
            parent=PARENT,
            kind=Participant.KIND_AGENT,
            external_id="x",
            participant=Participant(display_name="X"),
            request_id="r",
        ),
        pb.FindOrCreateParticipantRequest(
            parent=PARENT,
            kind=Participant.KIND_AGENT,
            external_id="x",
            participant=Participant(display_name="X"),
            request_id="r",
        ),
    ),
    (
        "CreateSession",
        lambda c: c.create_session(
            parent=PARENT,
            session_id="s1",
            session=Session(kind=Session.KIND_GROUP, agent="a"),
            request_id="r",
            validate_only=True,
        ),
        pb.CreateSessionRequest(
            parent=PARENT,
            session_id="s1",
            session=Session(kind=Session.KIND_GROUP, agent="a"),
            request_id="r",
            validate_only=True,
        ),
    ),
    ("GetSession", lambda c: c.get_session(name=SESSION), pb.GetSessionRequest(name=SESSION)),
    (
        "BatchGetSessions",
        lambda c: c.batch_get_sessions(parent=PARENT, names=["a", "b"]),
        pb.BatchGetSessionsRequest(parent=PARENT, names=["a", "b"]),
    ),
    (
        "ListSessions",
        lambda c: c.list_sessions_page(
            parent=PARENT, page_size=3, page_token="t", filter="f", order_by="o", show_deleted=True
        ),
        pb.ListSessionsRequest(
            parent=PARENT, page_size=3, page_token="t", filter="f", order_by="o", show_deleted=True
        ),
    ),
    (
        "UpdateSession",
        lambda c: c.update_session(
            session=Session(name=SESSION), update_mask=field_mask_pb2.FieldMask(paths=["*"])
        ),
        pb.UpdateSessionRequest(
            session=Session(name=SESSION), update_mask=field_mask_pb2.FieldMask(paths=["*"])
        ),
    ),
    (
        "DeleteSession",
        lambda c: c.delete_session(name=SESSION, etag="e"),
        pb.DeleteSessionRequest(name=SESSION, etag="e"),
    ),
    (
        "UndeleteSession",
        lambda c: c.undelete_session(name=SESSION, etag="e"),
        pb.UndeleteSessionRequest(name=SESSION, etag="e"),
    ),
    (
        "PurgeSessions",
        lambda c: c.purge_sessions(parent=PARENT, filter="*", force=True),
        pb.PurgeSessionsRequest(parent=PARENT, filter="*", force=True),
    ),
    (
        "FindOrCreateSession",
        lambda c: c.find_or_create_session(
            parent=PARENT,
            agent_pair=AgentPair(agent="a", peer_agent="b"),
            session=Session(display_name="D"),
            undelete_if_deleted=True,
            request_id="r",
        ),
        pb.FindOrCreateSessionRequest(
            parent=PARENT,
            agent_pair=AgentPair(agent="a", peer_agent="b"),
            session=Session(display_name="D"),
            undelete_if_deleted=True,
            request_id="r",
        ),
    ),
    (
        "RecordActivity",
        lambda c: c.record_activity(name=SESSION, activity_time=timestamp_pb2.Timestamp(seconds=9)),
        pb.RecordActivityRequest(name=SESSION, activity_time=timestamp_pb2.Timestamp(seconds=9)),
    ),
    (
        "AddMember",
        lambda c: c.add_member(
            parent=SESSION, member=Member(participant="p", role=Member.ROLE_MEMBER), request_id="r"
        ),
        pb.AddMemberRequest(
            parent=SESSION, member=Member(participant="p", role=Member.ROLE_MEMBER), request_id="r"
        ),
    ),
    (
        "UpdateMember",
        lambda c: c.update_member(member=Member(name="m", role=Member.ROLE_OBSERVER), update_mask=["role"]),
        pb.UpdateMemberRequest(
            member=Member(name="m", role=Member.ROLE_OBSERVER),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
    ),
    ("RemoveMember", lambda c: c.remove_member(name="m"), pb.RemoveMemberRequest(name="m")),
    (
        "ListMembers",
        lambda c: c.list_members_page(parent=SESSION, page_size=3, page_token="t"),
        pb.ListMembersRequest(parent=SESSION, page_size=3, page_token="t"),
    ),
    (
        "AppendEvent",
        lambda c: c.append_event(
            parent=PARENT,
            event=Event(invocation_id="i1", branch="root"),
            event_id="e1",
            external_conversation=ExternalConversation(agent="a", channel="slack", conversation_id="C1"),
            session=Session(kind=Session.KIND_GROUP),
            author_key=AuthorKey(kind=Participant.KIND_USER, external_id="u1"),
            expected_last_sequence=7,
            request_id="r",
        ),
        pb.AppendEventRequest(
            parent=PARENT,
            event=Event(invocation_id="i1", branch="root"),
            event_id="e1",
            external_conversation=ExternalConversation(agent="a", channel="slack", conversation_id="C1"),
            session=Session(kind=Session.KIND_GROUP),
            author_key=AuthorKey(kind=Participant.KIND_USER, external_id="u1"),
            expected_last_sequence=7,
            request_id="r",
        ),
    ),
    ("GetEvent", lambda c: c.get_event(name=EVENT), pb.GetEventRequest(name=EVENT)),
    (
        "ListEvents",
        lambda c: c.list_events_page(parent=SESSION, filter="f", order_by="o", page_size=3, page_token="t"),
        pb.ListEventsRequest(parent=SESSION, filter="f", order_by="o", page_size=3, page_token="t"),
    ),
    ("DeleteEvent", lambda c: c.delete_event(name=EVENT), pb.DeleteEventRequest(name=EVENT)),
    (
        "PurgeEvents",
        lambda c: c.purge_events(parent=SESSION, filter="*", force=True),
        pb.PurgeEventsRequest(parent=SESSION, filter="*", force=True),
    ),
]


def test_unary_cases_cover_every_unary_rpc() -> None:
    unary = {m.name for m in SERVICE.methods if not m.server_streaming}
    assert sorted(name for name, _, _ in UNARY_CASES) == sorted(unary)


def _public_methods(client_class: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(client_class, name))
        for name in dir(client_class)
        if not name.startswith("_")
    }


def test_both_clients_have_a_method_per_rpc_with_the_same_parameters() -> None:
    blocking, asyncio_ = _public_methods(SessionsClient), _public_methods(AsyncSessionsClient)
    rpcs = {re.sub(r"(?<!^)(?=[A-Z])", "_", m.name).lower() for m in SERVICE.methods}
    assert rpcs <= set(blocking)
    assert sorted(blocking) == sorted(asyncio_)
    for name, signature in blocking.items():
        skip = 1 if name == "from_channel" else 0  # its channel: a grpc.Channel or a grpc.aio.Channel
        parameters = list(signature.parameters.values())[skip:]
        assert list(asyncio_[name].parameters.values())[skip:] == parameters, name


class FakeServer:
    """A grpc_testing channel under a blocking client: start calls, then answer them."""

    def __init__(self) -> None:
        self.channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        self.client = SessionsClient.from_channel(self.channel, token=TOKEN, timeout=5.0)
        self._pool = ThreadPoolExecutor(max_workers=1)

    def start(self, invoke: Callable[[SessionsClient], T]) -> Future[T]:
        """Run `invoke(client)` in the worker thread."""
        return self._pool.submit(invoke, self.client)

    def take(self, method: str) -> tuple[tuple[tuple[str, str], ...], Any, Any]:
        """The next unary call of `method`: (metadata, request, rpc to answer)."""
        taken: tuple[tuple[tuple[str, str], ...], Any, Any] = self.channel.take_unary_unary(
            SERVICE.methods_by_name[method]
        )
        return taken

    def answer(self, method: str, response: Message | None = None) -> Any:
        """Answer the next call of `method` (by default with an empty response); returns its request."""
        _, request, rpc = self.take(method)
        rpc.terminate(response or output_class(method)(), (), grpc.StatusCode.OK, "")
        return request

    def call(
        self, invoke: Callable[[SessionsClient], T], method: str, response: Message | None = None
    ) -> tuple[Any, T]:
        """Run `invoke(client)` and answer its call of `method`: (request, result)."""
        future = self.start(invoke)
        request = self.answer(method, response)
        return request, future.result(WAIT)

    def take_stream(self, method: str) -> tuple[Any, Any]:
        """The next server-streaming call of `method`: (request, rpc to answer)."""
        _, request, rpc = self.channel.take_unary_stream(SERVICE.methods_by_name[method])
        return request, rpc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


# Blocking client over grpc_testing


@pytest.mark.parametrize(("method", "invoke", "expected"), UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_keyword_arguments_land_in_the_request(
    fake: FakeServer, method: str, invoke: Callable[[SessionsClient], Any], expected: Message
) -> None:
    request, result = fake.call(invoke, method)
    assert request == expected
    if output_class(method) is empty_pb2.Empty:
        assert result is None
    else:
        assert isinstance(result, output_class(method))


def test_bearer_token_and_extra_metadata_are_sent(fake: FakeServer) -> None:
    future = fake.start(lambda c: c.get_session(name=SESSION, metadata=[("x-trace", "t1")]))
    metadata, request, rpc = fake.take("GetSession")
    rpc.terminate(Session(name=request.name), (), grpc.StatusCode.OK, "")
    assert future.result(WAIT).name == SESSION
    assert AUTHORIZATION in metadata
    assert ("x-trace", "t1") in metadata


def test_creating_calls_get_a_request_id_unless_given(fake: FakeServer) -> None:
    agent = Participant(kind=Participant.KIND_AGENT)
    request, _ = fake.call(
        lambda c: c.create_participant(parent=PARENT, participant=agent), "CreateParticipant"
    )
    assert uuid.UUID(request.request_id).version == 4
    request, _ = fake.call(
        lambda c: c.add_member(parent=SESSION, member=Member(), request_id="mine"), "AddMember"
    )
    assert request.request_id == "mine"


def test_update_mask_and_activity_time_conversions(fake: FakeServer) -> None:
    request, _ = fake.call(
        lambda c: c.update_member(member=Member(), update_mask="role, etag"), "UpdateMember"
    )
    assert list(request.update_mask.paths) == ["role", "etag"]
    request, _ = fake.call(lambda c: c.update_session(session=Session()), "UpdateSession")
    assert not request.HasField("update_mask")
    when = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    request, _ = fake.call(lambda c: c.record_activity(name=SESSION, activity_time=when), "RecordActivity")
    assert request.activity_time.ToDatetime(tzinfo=UTC) == when
    request, _ = fake.call(lambda c: c.record_activity(name=SESSION), "RecordActivity")
    assert not request.HasField("activity_time")


def test_naive_datetime_is_refused_before_any_call(fake: FakeServer) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fake.client.record_activity(name=SESSION, activity_time=datetime(2030, 1, 1))


def test_find_or_create_session_takes_exactly_one_key(fake: FakeServer) -> None:
    key = ExternalConversation(agent=f"{PARENT}/participants/a", channel="slack", conversation_id="C1")
    response = pb.FindOrCreateSessionResponse(created=True)
    request, result = fake.call(
        lambda c: c.find_or_create_session(parent=PARENT, external_conversation=key),
        "FindOrCreateSession",
        response,
    )
    assert request.WhichOneof("key") == "external_conversation"
    assert request.external_conversation == key
    assert result.created
    pair = AgentPair(agent="a", peer_agent="b")
    with pytest.raises(ValueError, match="exactly one"):
        fake.client.find_or_create_session(parent=PARENT, external_conversation=key, agent_pair=pair)
    with pytest.raises(ValueError, match="exactly one"):
        fake.client.find_or_create_session(parent=PARENT)


def test_append_event_to_a_named_session_or_by_key(fake: FakeServer) -> None:
    response = pb.AppendEventResponse(event=Event(name=EVENT, sequence=1), session_created=True)
    request, result = fake.call(
        lambda c: c.append_event(parent=SESSION, event=Event(author="p")), "AppendEvent", response
    )
    assert request.WhichOneof("session_key") is None
    assert uuid.UUID(request.request_id).version == 4
    # Unset means "don't check"; 0 means "only before the first event".
    assert not request.HasField("expected_last_sequence")
    assert (result.event.sequence, result.session_created) == (1, True)
    request, _ = fake.call(
        lambda c: c.append_event(parent=SESSION, expected_last_sequence=0, request_id="mine"), "AppendEvent"
    )
    assert request.HasField("expected_last_sequence")
    assert request.expected_last_sequence == 0
    assert request.request_id == "mine"
    pair = AgentPair(agent="a", peer_agent="b")
    request, _ = fake.call(lambda c: c.append_event(parent=PARENT, agent_pair=pair), "AppendEvent")
    assert request.WhichOneof("session_key") == "agent_pair"
    key = ExternalConversation(agent="a", channel="slack", conversation_id="C1")
    with pytest.raises(ValueError, match="at most one"):
        fake.client.append_event(parent=PARENT, external_conversation=key, agent_pair=pair)


def test_list_events_newest_first(fake: FakeServer) -> None:
    events = fake.client.list_events(parent=SESSION, page_size=2, newest_first=True)
    future = fake.start(lambda _: [e.sequence for e in events])
    pages = [([5, 4], "t1"), ([3], "")]
    requests = [
        fake.answer(
            "ListEvents",
            pb.ListEventsResponse(events=[Event(sequence=n) for n in sequences], next_page_token=token),
        )
        for sequences, token in pages
    ]
    assert future.result(WAIT) == [5, 4, 3]
    assert [(r.page_token, r.order_by, r.page_size) for r in requests] == [
        ("", "sequence desc", 2),
        ("t1", "sequence desc", 2),
    ]
    request, _ = fake.call(lambda c: c.list_events_page(parent=SESSION, newest_first=True), "ListEvents")
    assert request.order_by == "sequence desc"
    # Refused when asked, before any call, not when the iterator first fetches.
    with pytest.raises(ValueError, match="not both"):
        fake.client.list_events(parent=SESSION, order_by="sequence", newest_first=True)
    with pytest.raises(ValueError, match="not both"):
        fake.client.list_events_page(parent=SESSION, order_by="sequence", newest_first=True)


def test_list_follows_page_tokens_lazily(fake: FakeServer) -> None:
    # Building the iterator sends nothing: with no server answering it would block here.
    sessions = fake.client.list_sessions(
        parent=PARENT, page_size=2, filter="kind = GROUP", order_by="display_name"
    )
    future = fake.start(lambda _: [s.name for s in sessions])
    pages = [(["s1", "s2"], "t1"), (["s3", "s4"], "t2"), (["s5"], "")]
    requests = [
        fake.answer(
            "ListSessions",
            pb.ListSessionsResponse(sessions=[Session(name=n) for n in names], next_page_token=token),
        )
        for names, token in pages
    ]
    assert future.result(WAIT) == ["s1", "s2", "s3", "s4", "s5"]
    assert [r.page_token for r in requests] == ["", "t1", "t2"]
    assert {(r.parent, r.page_size, r.filter, r.order_by) for r in requests} == {
        (PARENT, 2, "kind = GROUP", "display_name")
    }


def test_rich_error_becomes_typed_exception(fake: FakeServer) -> None:
    future = fake.start(lambda c: c.create_session(parent=PARENT, session_id="Bad Id", session=Session()))
    _, _, rpc = fake.take("CreateSession")
    message = "session_id: bad; session.kind: required"
    violations = (("session_id", "bad"), ("session.kind", "required"))
    trailers = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_ARGUMENT", {"hint": "x"}, violations
    )
    rpc.terminate(None, trailers, grpc.StatusCode.INVALID_ARGUMENT, message)
    with pytest.raises(InvalidArgumentError) as info:
        future.result(WAIT)
    error = info.value
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "tether",
    )
    assert error.metadata == {"hint": "x"}
    assert error.violations == [
        FieldViolation("session_id", "bad"),
        FieldViolation("session.kind", "required"),
    ]
    assert error.message == message
    assert isinstance(error.__cause__, grpc.RpcError)
    assert str(error).startswith("INVALID_ARGUMENT INVALID_ARGUMENT: session_id: bad")


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ABORTED, AbortedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DATA_LOSS, TetherError),
    ],
)
def test_status_code_picks_the_exception_class(
    fake: FakeServer, code: grpc.StatusCode, error_class: type[TetherError]
) -> None:
    future = fake.start(lambda c: c.get_session(name=SESSION))
    _, _, rpc = fake.take("GetSession")
    rpc.terminate(None, rich_status(code, "boom", "SOME_REASON", {"resource_name": SESSION}), code, "boom")
    with pytest.raises(TetherError) as info:
        future.result(WAIT)
    assert type(info.value) is error_class
    assert (info.value.code, info.value.reason) == (code, "SOME_REASON")
    assert info.value.metadata == {"resource_name": SESSION}


def test_error_without_rich_status(fake: FakeServer) -> None:
    future = fake.start(lambda c: c.get_namespace(name="namespaces/x"))
    _, _, rpc = fake.take("GetNamespace")
    rpc.terminate(None, (), grpc.StatusCode.NOT_FOUND, "plain")
    with pytest.raises(NotFoundError) as info:
        future.result(WAIT)
    assert (info.value.reason, info.value.domain, info.value.message) == ("", "", "plain")
    assert info.value.violations == []


def test_watch_resumes_after_unavailable(fake: FakeServer) -> None:
    seen: queue.Queue[int] = queue.Queue()

    def consume(client: SessionsClient) -> None:
        for change in client.watch_sessions(parent=PARENT, filter="kind = GROUP"):
            seen.put(change.revision)

    future = fake.start(consume)
    first, rpc = fake.take_stream("WatchSessions")
    rpc.send_initial_metadata((("tether-revision", "6"),))  # where the server started it
    for revision in (7, 8):
        rpc.send_response(WatchSessionsResponse(revision=revision))
        # grpc_testing drops unread messages when a stream fails: wait until each is delivered.
        assert seen.get(timeout=WAIT) == revision
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "server restarting")
    second, rpc = fake.take_stream("WatchSessions")
    rpc.send_initial_metadata((("tether-revision", "8"),))
    rpc.send_response(WatchSessionsResponse(revision=9))
    rpc.terminate((), grpc.StatusCode.OK, "")
    future.result(WAIT)
    assert seen.get_nowait() == 9
    assert (first.start_revision, second.start_revision) == (0, 8)
    assert first.filter == second.filter == "kind = GROUP"


def test_watch_from_now_resumes_where_the_server_started_it(fake: FakeServer) -> None:
    # A watch "from now" that breaks before its first change resumes from the revision the
    # server's initial metadata named, not from a later "now" (which would skip changes).
    future = fake.start(lambda c: list(c.watch_sessions(parent=PARENT)))
    first, rpc = fake.take_stream("WatchSessions")
    rpc.send_initial_metadata((("tether-revision", "41"),))
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "server restarting")
    second, rpc = fake.take_stream("WatchSessions")
    rpc.send_initial_metadata((("tether-revision", "41"),))
    rpc.terminate((), grpc.StatusCode.OK, "")
    assert future.result(WAIT) == []
    assert (first.start_revision, second.start_revision) == (0, 41)


def test_watch_raises_other_errors(fake: FakeServer) -> None:
    future = fake.start(lambda c: list(c.watch_sessions(parent=PARENT, start_revision=3)))
    request, rpc = fake.take_stream("WatchSessions")
    assert request.start_revision == 3
    trailers = rich_status(grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED")
    rpc.terminate(trailers, grpc.StatusCode.OUT_OF_RANGE, "compacted")
    with pytest.raises(OutOfRangeError) as info:
        future.result(WAIT)
    assert info.value.reason == "REVISION_COMPACTED"


def test_watch_gives_up_when_the_server_stays_away(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_common, "monotonic", lambda: clock[0])
    unavailable = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    resumer = _common.WatchResumer(parent=PARENT, filter="", start_revision=0)
    resumer.request()
    clock[0] += 3600  # a long-lived stream breaks: reconnect at once
    assert resumer.failed(unavailable) == 0.0
    resumer.request()
    clock[0] += 1
    assert 0.0 <= resumer.failed(unavailable) <= _common.WATCH_MAX_BACKOFF
    clock[0] += _common.WATCH_GIVE_UP_AFTER
    resumer.request()
    with expect_error(grpc.StatusCode.UNAVAILABLE, ""):
        resumer.failed(unavailable)


# Channel settings


def test_channel_options_carry_the_retry_policy() -> None:
    options = dict(_common.channel_options(retry=True, extra=[("grpc.max_receive_message_length", 1 << 20)]))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_receive_message_length"] == 1 << 20
    repeatable, everything = json.loads(options["grpc.service_config"])["methodConfig"]
    assert everything["name"] == [{"service": _common.SERVICE_NAME}]
    assert everything["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert everything["waitForReady"] is True
    # CANCELLED (a stopping server's queued calls) is retried only where a repeat is harmless.
    assert repeatable["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert repeatable["waitForReady"] is True
    names = {entry["method"] for entry in repeatable["name"]}
    assert {"GetSession", "ListSessions", "RecordActivity", "CreateSession", "FindOrCreateSession"} <= names
    assert {"AddMember", "CreateParticipant", "FindOrCreateParticipant", "CreateNamespace"} <= names
    assert {"AppendEvent", "GetEvent", "ListEvents"} <= names
    not_repeatable = {"UpdateSession", "DeleteSession", "UndeleteSession", "RemoveMember", "PurgeSessions"}
    not_repeatable |= {"DeleteEvent", "PurgeEvents"}
    assert names.isdisjoint(not_repeatable | {"WatchSessions"})
    assert dict(_common.channel_options(retry=False, extra=())) == {"grpc.enable_retries": 0}
    overridden = dict(_common.channel_options(retry=True, extra=[("grpc.service_config", "{}")]))
    assert overridden["grpc.service_config"] == "{}"


def test_tls_settings_are_checked() -> None:
    none: dict[str, Any] = {"root_certificates": None, "private_key": None, "certificate_chain": None}
    assert _common.channel_credentials(tls=None, **none) is None
    assert _common.channel_credentials(tls=True, **none) is not None
    with pytest.raises(ValueError, match="need TLS"):
        _common.channel_credentials(tls=False, **{**none, "root_certificates": b"pem"})
    with pytest.raises(ValueError, match="together"):
        _common.channel_credentials(tls=None, **{**none, "private_key": b"key"})


# Asyncio client against a tiny grpc.aio server

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handlers: TypeAlias = "dict[str, grpc.RpcMethodHandler[Any, Any]]"


@asynccontextmanager
async def serving(handlers: Handlers) -> AsyncIterator[str]:
    """Serve `handlers` (by method name) of the SessionService on a free loopback port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_common.SERVICE_NAME, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def unary(
    method: str, handler: Callable[[Any, Context], Awaitable[Message]]
) -> grpc.RpcMethodHandler[Any, Any]:
    descriptor = SERVICE.methods_by_name[method]
    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=GetMessageClass(descriptor.input_type).FromString,
        response_serializer=GetMessageClass(descriptor.output_type).SerializeToString,
    )


def watch(handler: Callable[[Any, Context], AsyncIterator[WatchSessionsResponse]]) -> Handlers:
    return {
        "WatchSessions": grpc.unary_stream_rpc_method_handler(
            handler,
            request_deserializer=pb.WatchSessionsRequest.FromString,
            response_serializer=WatchSessionsResponse.SerializeToString,
        )
    }


def recorder(
    method: str, calls: list[tuple[Message, tuple[tuple[str, Any], ...]]]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `method` that records (request, metadata) and answers an empty response."""
    response_class = output_class(method)

    async def handle(request: Message, context: Context) -> Message:
        calls.append((request, tuple(context.invocation_metadata() or ())))
        return response_class()

    return unary(method, handle)


@pytest.mark.parametrize(("method", "invoke", "expected"), UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
async def test_async_client_sends_the_same_requests(
    method: str, invoke: Callable[[AsyncSessionsClient], Awaitable[Any]], expected: Message
) -> None:
    calls: list[tuple[Message, tuple[tuple[str, Any], ...]]] = []
    async with (
        serving({method: recorder(method, calls)}) as target,
        AsyncSessionsClient(target, token=TOKEN) as client,
    ):
        result = await invoke(client)
    ((request, metadata),) = calls
    assert request == expected
    assert AUTHORIZATION in metadata
    assert (
        result is None
        if output_class(method) is empty_pb2.Empty
        else isinstance(result, output_class(method))
    )


async def test_async_watch_resumes_after_unavailable() -> None:
    requests: list[pb.WatchSessionsRequest] = []

    async def changes(
        request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[WatchSessionsResponse]:
        requests.append(request)
        if len(requests) == 1:
            yield WatchSessionsResponse(revision=1, type=WatchSessionsResponse.CHANGE_TYPE_CREATED)
            yield WatchSessionsResponse(revision=2, type=WatchSessionsResponse.CHANGE_TYPE_UPDATED)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        yield WatchSessionsResponse(revision=request.start_revision + 1)

    async with serving(watch(changes)) as target, AsyncSessionsClient(target) as client:
        revisions = [change.revision async for change in client.watch_sessions(parent=PARENT)]
    assert revisions == [1, 2, 3]
    assert [r.start_revision for r in requests] == [0, 2]


async def test_async_watch_raises_typed_error() -> None:
    async def changes(
        request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[WatchSessionsResponse]:
        trailers = rich_status(grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED")
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "compacted", trailers)
        yield WatchSessionsResponse()  # never reached; makes this an async generator

    async with serving(watch(changes)) as target, AsyncSessionsClient(target) as client:
        with pytest.raises(OutOfRangeError) as info:
            async for _ in client.watch_sessions(parent=PARENT, start_revision=5):
                pass
    assert info.value.reason == "REVISION_COMPACTED"


async def test_async_unary_retries_unavailable_within_its_deadline() -> None:
    deadlines: list[float | None] = []

    async def get_session(request: pb.GetSessionRequest, context: Context) -> Session:
        deadlines.append(context.time_remaining())
        if len(deadlines) == 1:
            trailers = rich_status(grpc.StatusCode.UNAVAILABLE, "db down", "DATABASE_UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "db down", trailers)
        return Session(name=request.name)

    async with serving({"GetSession": unary("GetSession", get_session)}) as target:
        async with AsyncSessionsClient(target, timeout=30.0) as client:
            assert (await client.get_session(name=SESSION)).name == SESSION
        assert len(deadlines) == 2
        # The deadline travels as a rounded-up relative timeout, hence the slack.
        assert all(d is not None and 0 < d < 31.0 for d in deadlines)
        deadlines.clear()
        async with AsyncSessionsClient(target, retry=False) as client:
            with pytest.raises(UnavailableError) as info:
                await client.get_session(name=SESSION, timeout=3.0)
        assert info.value.reason == "DATABASE_UNAVAILABLE"
        assert len(deadlines) == 1


async def test_async_list_follows_page_tokens() -> None:
    async def list_members(request: pb.ListMembersRequest, context: Context) -> pb.ListMembersResponse:
        index = int(request.page_token or "0")
        next_token = str(index + 1) if index < 2 else ""
        return pb.ListMembersResponse(members=[Member(participant=f"p{index}")], next_page_token=next_token)

    async with (
        serving({"ListMembers": unary("ListMembers", list_members)}) as target,
        AsyncSessionsClient(target) as client,
    ):
        members = [m.participant async for m in client.list_members(parent=SESSION, page_size=1)]
    assert members == ["p0", "p1", "p2"]


async def test_async_list_events_newest_first() -> None:
    requests: list[pb.ListEventsRequest] = []

    async def list_events(request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        requests.append(request)
        index = int(request.page_token or "0")
        next_token = str(index + 1) if index < 1 else ""
        return pb.ListEventsResponse(events=[Event(sequence=9 - index)], next_page_token=next_token)

    async with (
        serving({"ListEvents": unary("ListEvents", list_events)}) as target,
        AsyncSessionsClient(target) as client,
    ):
        with pytest.raises(ValueError, match="not both"):
            client.list_events(parent=SESSION, order_by="sequence", newest_first=True)
        sequences = [e.sequence async for e in client.list_events(parent=SESSION, newest_first=True)]
        with pytest.raises(ValueError, match="at most one"):
            await client.append_event(
                parent=PARENT,
                external_conversation=ExternalConversation(agent="a"),
                agent_pair=AgentPair(agent="a", peer_agent="b"),
            )
    assert sequences == [9, 8]
    assert [(r.page_token, r.order_by) for r in requests] == [("", "sequence desc"), ("1", "sequence desc")]
