"""Property-based tests: arbitrary and near-valid requests for every RPC of ``tether.v1.SessionService``,
sent over a real channel with the raw generated stub (no client-side validation), on SQLite and on
PostgreSQL (the shared ``server`` of each backend).

For every RPC, a batch of generated requests (see ``tests/support/strategies.py``: requests built from
the message descriptors, and correct requests with one or two fields perturbed) must satisfy:

1. **Clean errors.** The status is never INTERNAL, UNKNOWN or DATA_LOSS. Every non-OK status carries a
   ``grpc-status-details-bin`` trailer that parses as ``google.rpc.Status`` (with the call's code)
   holding a ``google.rpc.ErrorInfo`` with domain ``tether`` and an UPPER_SNAKE reason;
   INVALID_ARGUMENT also holds a ``google.rpc.BadRequest`` with at least one field violation. The
   status with its trailers fits in gRPC's default 8 KiB metadata limit (a bigger one reaches a client
   with default options as RESOURCE_EXHAUSTED "received metadata size exceeds limit", details lost;
   this test's channel raises its own limits so that it sees, and measures, what the server sent).
   The one exception is gRPC's own refusal of a request over the server's 4 MiB receive limit
   (RESOURCE_EXHAUSTED without details); the generators stay below it, and the check allows that case
   only when the request really is that big. WatchSessions is included (UNIMPLEMENTED, with details,
   until it is implemented); a stream still open when the test stops listening (DEADLINE_EXCEEDED on
   the client side) counts as a success.
2. **The server survives.** After each batch the server answers its health check with SERVING (at
   once, no waiting) and its process is still running. Before each batch the test waits (up to 30 s)
   for SERVING, so that a failure is charged to the batch that caused it.
3. **Written data stays intact.** A snapshot namespace (participants, sessions with members, labels,
   ``session_state``, events, a soft-deleted session and participant, a disabled participant) is
   created once per backend and read back (Get and List) before the batches; after each batch it
   reads back equal (same etags, same fields). Generated requests name it freely, but a request that
   may write only names it in corrupted form (see ``strategies.may_write_protected``), so none can
   legitimately change it. PurgeSessions is only ever sent with ``force=false`` (PurgeEvents may
   purge, in the test's own namespace).

``test_one_defect_gets_its_own_error`` is sharper, for the event RPCs: a correct request with exactly
one known defect (``strategies.DEFECTS``: a bad id or name, NaN or infinite numbers or too deep a
``Struct`` in ``content``/``state_delta``, ``content`` + ``state_delta`` over 1 MiB, a bad branch, an
author of another namespace, a negative ``expected_last_sequence``, a filter on an unknown field, a bad
``order_by``, forged page tokens, a missing session or event ...) gets exactly the error the contract
gives that defect: code, ErrorInfo reason, the field violations naming exactly the field at fault and,
for NOT_FOUND, the resource name asked for. Then properties 1-3.

``test_undecodable_requests_are_rejected_cleanly`` applies property 1 to request *bytes* (random bytes,
valid requests with flipped, dropped or appended bytes, and ``Struct`` values (a session's
``session_state``, an event's ``content`` or ``state_delta``) nested past protobuf's decoding depth
limit), sent with a pass-through serializer: bad input on the wire is bad input too.

Runs are deterministic (``derandomize=True``, no example database): 40 examples per RPC and backend,
8 per defect, 80 for the bytes property; ``TETHER_TEST_PROPERTY_SCALE=10`` multiplies them for a
longer local hunt. When a property fails, the assertion message shows the RPC, the (shortened)
request in text format, the status, what was wrong, and the server's log lines of that call (with
the traceback of an INTERNAL).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, text_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

from tests.support import strategies as gen
from tests.support.server import ServerProcess, parse_event
from tether.v1 import event_pb2, namespace_pb2, participant_pb2, session_pb2, session_service_pb2_grpc
from tether.v1 import session_service_pb2 as pb

# Examples per RPC and backend (32 RPCs), and for the undecodable-bytes property per backend;
# TETHER_TEST_PROPERTY_SCALE multiplies both (e.g. 10 for a long local hunt).
SCALE = float(os.environ.get("TETHER_TEST_PROPERTY_SCALE", "1"))
EXAMPLES_PER_RPC = max(1, round(40 * SCALE))
DEFECT_EXAMPLES = max(1, round(8 * SCALE))
UNDECODABLE_EXAMPLES = max(1, round(80 * SCALE))

SERVING = health_pb2.HealthCheckResponse.SERVING
SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
DETAILS_KEY = "grpc-status-details-bin"
REASON_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
CALL_TIMEOUT_SECONDS = 30.0
WATCH_WINDOW_SECONDS = 0.3  # how long a WatchSessions stream is listened to
RECOVERY_SECONDS = 30.0  # how long a batch waits for the server to be SERVING before it starts
LOG_WAIT_SECONDS = 1.0  # failure path only: how long to wait for the server's log line of a call
TRACEBACK_LINES = 40  # of a server traceback, in a failure message
# gRPC's default limit for received metadata (the soft one: past it, calls fail at random, all of
# them past 16 KiB). A status whose trailers are bigger does not reliably reach a client with
# default options.
DEFAULT_METADATA_LIMIT_BYTES = 8 * 1024
UNLIMITED_METADATA_BYTES = 64 * 1024 * 1024

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    # No explain phase: it replays many variations of a failure, which costs a server call each.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Session = session_pb2.Session
Participant = participant_pb2.Participant
Member = session_pb2.Member
Stub = session_service_pb2_grpc.SessionServiceStub


# --- calling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its status code, message and trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]
    stream_left_open: bool = False


def _outcome_of(call: grpc.Call, *, stream_left_open: bool = False) -> Outcome:
    return Outcome(
        code=call.code(),
        details=call.details() or "",
        trailers=tuple(call.trailing_metadata() or ()),
        stream_left_open=stream_left_open,
    )


def invoke(channel: grpc.Channel, stub: Stub, method: str, request: Message | bytes) -> Outcome:
    """Call ``method`` with a message (through the generated stub) or with raw bytes (passed
    through as they are, on the same channel)."""
    path = f"/{gen.SERVICE.full_name}/{method}"
    streaming = gen.METHODS[method].server_streaming
    if isinstance(request, bytes):
        if streaming:
            rpc: Any = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        else:
            rpc = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    else:
        rpc = getattr(stub, method)
    if streaming:
        call: Any = rpc(request, timeout=WATCH_WINDOW_SECONDS)
        try:
            for _ in itertools.islice(call, 3):
                pass
        except grpc.RpcError as error:
            failed = cast(grpc.Call, error)
            return _outcome_of(failed, stream_left_open=failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            call.cancel()
        return Outcome(grpc.StatusCode.OK, "", ())
    try:
        _, done = rpc.with_call(request, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        return _outcome_of(cast(grpc.Call, error))
    return _outcome_of(done)


class ServerFaultError(AssertionError):
    """INTERNAL, UNKNOWN or DATA_LOSS."""


class OversizedStatusError(AssertionError):
    """A status too big for a client with gRPC's default metadata limit."""


class IncompleteStatusError(AssertionError):
    """An error without the rich details the contract promises."""


Problem = tuple[type[AssertionError], str]


def trailer_bytes(outcome: Outcome) -> int:
    """What the status costs on the wire as HTTP/2 trailers (as gRPC's metadata limit counts them:
    name + value + 32 per entry; binary values travel base64-encoded, grpc-message percent-encoded)."""
    message = sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in outcome.details.encode())
    total = len("grpc-status") + 2 + 32 + len("grpc-message") + message + 32
    for key, value in outcome.trailers:
        encoded = base64.b64encode(value) if isinstance(value, bytes) else value.encode()
        total += len(key) + len(encoded) + 32
    return total


def problems_of(outcome: Outcome, request_size: int) -> list[Problem]:
    """What is wrong with ``outcome`` under property 1 (empty: nothing)."""
    code = outcome.code
    if code == grpc.StatusCode.OK or outcome.stream_left_open:
        return []
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and request_size > gen.MAX_RECEIVE_BYTES:
        return []  # gRPC's own receive limit, not the service
    found: list[Problem] = []
    if code in SERVER_FAULTS:
        found.append(
            (ServerFaultError, f"status {code.name} (a server fault, never allowed for any request)")
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size exceeds" in outcome.details:
        # Even this channel's raised limits (16 MiB at most) could not take the trailers.
        found.append((OversizedStatusError, f"the status and its trailers are too big: {outcome.details}"))
        return found
    size = trailer_bytes(outcome)
    if size > DEFAULT_METADATA_LIMIT_BYTES:
        found.append(
            (
                OversizedStatusError,
                f"the status and its trailers take ~{size} bytes, more than gRPC's default metadata limit "
                f"({DEFAULT_METADATA_LIMIT_BYTES}): a client with default options gets RESOURCE_EXHAUSTED "
                "'received metadata size exceeds limit' and no details",
            )
        )
    raw = dict(outcome.trailers).get(DETAILS_KEY)
    if not isinstance(raw, bytes):
        found.append((IncompleteStatusError, f"no {DETAILS_KEY} trailer"))
        return found
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        found.append((IncompleteStatusError, f"{DETAILS_KEY} does not parse as google.rpc.Status"))
        return found
    if status.code != code.value[0]:
        found.append(
            (
                IncompleteStatusError,
                f"google.rpc.Status.code {status.code} differs from the call's {code.name}",
            )
        )
    infos: list[error_details_pb2.ErrorInfo] = []
    bad_requests: list[error_details_pb2.BadRequest] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bad_requests.append(bad)
    if not infos:
        found.append((IncompleteStatusError, "no google.rpc.ErrorInfo in the details"))
    for info in infos:
        if info.domain != "tether":
            found.append((IncompleteStatusError, f"ErrorInfo.domain is {info.domain!r}, not 'tether'"))
        if not REASON_RE.fullmatch(info.reason):
            found.append((IncompleteStatusError, f"ErrorInfo.reason {info.reason!r} is not UPPER_SNAKE"))
    if code == grpc.StatusCode.INVALID_ARGUMENT and not any(b.field_violations for b in bad_requests):
        found.append(
            (IncompleteStatusError, "INVALID_ARGUMENT without a google.rpc.BadRequest field violation")
        )
    return found


# --- reporting ----------------------------------------------------------------------------------

SHOW_CHARS = 60
SHOW_ITEMS = 5


def _short(text: str) -> str:
    if len(text) <= 2 * SHOW_CHARS:
        return text
    return f"{text[:SHOW_CHARS]}<...{len(text)} chars in all...>"


def shortened(message: Message, notes: list[str], path: str = "") -> Message:
    """A copy of ``message`` fit for printing: long strings cut, long lists cut (``notes`` says where)."""
    result = copy.deepcopy(message)
    for field, value in list(result.ListFields()):
        where = f"{path}{field.name}"
        if gen.is_map(field):
            entries = dict(value)
            if len(entries) > SHOW_ITEMS:
                notes.append(f"{where}: {len(entries)} entries, {SHOW_ITEMS} shown")
            target = getattr(result, field.name)
            target.clear()
            for key, item in list(entries.items())[:SHOW_ITEMS]:
                if isinstance(item, Message):
                    target[_short(key)].CopyFrom(shortened(item, notes, f"{where}[{_short(key)!r}]."))
                else:
                    target[_short(key)] = _short(item) if isinstance(item, str) else item
        elif field.is_repeated:
            items = list(value)
            if len(items) > SHOW_ITEMS:
                notes.append(f"{where}: {len(items)} items, {SHOW_ITEMS} shown")
            del getattr(result, field.name)[:]
            for item in items[:SHOW_ITEMS]:
                if isinstance(item, Message):
                    getattr(result, field.name).add().CopyFrom(shortened(item, notes, f"{where}."))
                else:
                    getattr(result, field.name).append(_short(item) if isinstance(item, str) else item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(result, field.name).CopyFrom(shortened(value, notes, f"{where}."))
        elif isinstance(value, str) and len(value) > 2 * SHOW_CHARS:
            notes.append(f"{where}: {len(value)} chars, starting {value[:20]!r}")
            setattr(result, field.name, _short(value))
    return result


def describe(request: Message | bytes) -> str:
    if isinstance(request, bytes):
        shown = request[:400]
        more = f" ({len(request)} bytes in all)" if len(request) > len(shown) else ""
        return f"bytes {shown!r}{more}"
    notes: list[str] = []
    text = text_format.MessageToString(shortened(request, notes), as_utf8=True) or "(empty message)"
    return text + "".join(f"\n  # {note_}" for note_ in notes)


def server_lines_since(server: ServerProcess, start: int, method: str, fault: bool) -> list[str]:
    """The server's log lines from line ``start`` on, once those of this call are there: its ``rpc``
    line and, for a server fault, the line with the traceback (which may come second)."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        lines = server.log_lines()[start:]
        logged = any(method in line for line in lines)
        traced = any('"exception"' in line for line in lines)
        if (logged and (traced or not fault)) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def render_log(lines: list[str]) -> str:
    """Log lines as they are, except that a traceback is unfolded (and kept to its last lines)."""
    rendered: list[str] = []
    for line in lines:
        event = parse_event(line)
        if event is None or "exception" not in event:
            rendered.append(line)
            continue
        trace = str(event.pop("exception")).splitlines()
        rendered.append(json.dumps(event, ensure_ascii=False))
        rendered.extend(f"    {row}" for row in trace[-TRACEBACK_LINES:])
    return "\n".join(rendered)


def check_call(
    server: ServerProcess, channel: grpc.Channel, stub: Stub, method: str, request: Message | bytes
) -> Outcome:
    """Send one request; fail with a full account when property 1 does not hold."""
    start = len(server.log_lines())
    outcome = invoke(channel, stub, method, request)
    size = len(request) if isinstance(request, bytes) else request.ByteSize()
    note(f"{method} -> {outcome.code.name}: {outcome.details[:200]}")
    found = problems_of(outcome, size)
    if not found:
        return outcome
    fault = outcome.code in SERVER_FAULTS
    log = render_log(server_lines_since(server, start, method, fault)[-30:])
    account = (
        f"{method}: {'; '.join(text for _, text in found)}\n"
        f"status: {outcome.code.name}: {_short(outcome.details)}\n"
        f"request ({size} bytes):\n{describe(request)}\n"
        f"server log of the call:\n{log}"
    )
    # One exception type (and line) per kind of problem, so that Hypothesis reports each kind.
    kinds = {kind for kind, _ in found}
    if ServerFaultError in kinds:
        raise ServerFaultError(account)
    if OversizedStatusError in kinds:
        raise OversizedStatusError(account)
    raise IncompleteStatusError(account)


@dataclass(frozen=True)
class Case:
    """A generated request; its repr (what Hypothesis prints for a failing example) is shortened."""

    request: Message

    def __repr__(self) -> str:
        return describe(self.request)


# --- the snapshot namespace ---------------------------------------------------------------------


def _participant(kind: int, **fields: Any) -> Participant:
    return Participant(kind=kind, **fields)  # type: ignore[arg-type]


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@dataclass(frozen=True, repr=False)
class Snapshot:
    """A namespace of data that no generated request may change, and its state when written."""

    namespace: str
    participants: tuple[str, ...]
    sessions: tuple[str, ...]
    members: tuple[str, ...]
    events: tuple[str, ...] = ()
    state: tuple[tuple[str, Message], ...] = ()

    def __repr__(self) -> str:
        return f"<Snapshot of namespaces/{self.namespace}: {len(self.names)} resources>"

    @property
    def names(self) -> tuple[str, ...]:
        return (
            f"namespaces/{self.namespace}",
            *self.participants,
            *self.sessions,
            *self.members,
            *self.events,
        )

    def read(self, stub: Stub) -> dict[str, Message]:
        """Everything in the namespace, by Get and by List (soft-deleted included)."""
        parent = f"namespaces/{self.namespace}"
        state: dict[str, Message] = {"namespace": stub.GetNamespace(pb.GetNamespaceRequest(name=parent))}
        for name in self.participants:
            state[name] = stub.GetParticipant(pb.GetParticipantRequest(name=name))
        for name in self.sessions:
            state[name] = stub.GetSession(pb.GetSessionRequest(name=name))
            state[f"{name} members"] = stub.ListMembers(pb.ListMembersRequest(parent=name, page_size=1000))
            state[f"{name} events"] = stub.ListEvents(pb.ListEventsRequest(parent=name, page_size=1000))
        for name in self.events:
            state[name] = stub.GetEvent(pb.GetEventRequest(name=name))
        state["participants list"] = stub.ListParticipants(
            pb.ListParticipantsRequest(parent=parent, page_size=1000, show_deleted=True)
        )
        state["sessions list"] = stub.ListSessions(
            pb.ListSessionsRequest(parent=parent, page_size=1000, show_deleted=True)
        )
        return state


def build_snapshot(stub: Stub) -> Snapshot:
    """Write the snapshot namespace and read it back."""
    namespace = f"fzsnap-{uuid.uuid4().hex[:8]}"
    parent = f"namespaces/{namespace}"
    stub.CreateNamespace(
        pb.CreateNamespaceRequest(
            namespace_id=namespace,
            namespace=namespace_pb2.Namespace(display_name="Snapshot", labels={"purpose": "snapshot"}),
        )
    )

    def participant(pid: str, kind: int, **fields: Any) -> str:
        request = pb.CreateParticipantRequest(
            parent=parent, participant_id=pid, participant=_participant(kind, **fields)
        )
        name: str = stub.CreateParticipant(request).name
        return name

    bot = participant(
        "bot",
        Participant.KIND_AGENT,
        display_name="Bot 🤖",
        labels={"tier": "gold"},
        metadata=_struct({"v": 1}),
    )
    bot2 = participant("bot2", Participant.KIND_AGENT, external_id="agent-2")
    alice = participant("alice", Participant.KIND_USER, display_name="Alice", external_id="alice-ext")
    bob = participant("bob", Participant.KIND_USER, display_name="Bob")
    carol = participant("carol", Participant.KIND_USER)

    def session(sid: str, **fields: Any) -> str:
        request = pb.CreateSessionRequest(parent=parent, session_id=sid, session=Session(**fields))
        name: str = stub.CreateSession(request).name
        return name

    direct = session(
        "direct",
        kind=Session.KIND_DIRECT,
        agent=bot,
        user=alice,
        channel="slack",
        external_conversation_id="conv-1",
        labels={"team": "a", "env": "prod"},
        session_state=_struct({"step": 3, "flags": [True, None, "x"], "nested": {"k": "v"}}),
        display_name="Direct ✓",
        description="the direct one",
    )
    group = session(
        "group",
        kind=Session.KIND_GROUP,
        agent=bot,
        group_name="Engineering",
        labels={"team": "b"},
        expire_time=timestamp_pb2.Timestamp(seconds=gen.MAX_SECONDS - 86400),
    )
    pair = session("pair", kind=Session.KIND_AGENT_TO_AGENT, agent=bot, peer_agent=bot2)
    trigger = session(
        "trigger", kind=Session.KIND_TRIGGER, agent=bot2, ttl=duration_pb2.Duration(seconds=10**9)
    )
    gone = session("gone", kind=Session.KIND_GROUP, agent=bot2)
    stub.AddMember(
        pb.AddMemberRequest(parent=group, member=Member(participant=alice, role=Member.ROLE_OBSERVER))
    )
    stub.AddMember(pb.AddMemberRequest(parent=group, member=Member(participant=bob)))
    stub.RecordActivity(
        pb.RecordActivityRequest(name=direct, activity_time=timestamp_pb2.Timestamp(seconds=gen.NOW_SECONDS))
    )

    def event(session_name: str, event_id: str, **fields: Any) -> str:
        request = pb.AppendEventRequest(
            parent=session_name, event_id=event_id, event=event_pb2.Event(**fields)
        )
        name: str = stub.AppendEvent(request).event.name
        return name

    events = (
        event(
            direct,
            "hello",
            author=alice,
            invocation_id="inv-1",
            branch="root",
            labels={"team": "a"},
            content=_struct({"text": "hi ✓", "parts": [1, None, {"k": "v"}]}),
            state_delta=_struct({"step": 4, "nested": None}),
            event_time=timestamp_pb2.Timestamp(seconds=gen.NOW_SECONDS - 60),
        ),
        event(direct, "reply", author=bot, branch="root.planner", content=_struct({"text": "hello"})),
        event(group, "joined", author=bob, content=_struct({"text": "bob joins by writing"})),
        event(trigger, "system", content=_struct({"run": 1})),
        event(gone, "before-deletion", author=bot2),
    )
    stub.DeleteEvent(pb.DeleteEventRequest(name=event(direct, "corrected", author=alice)))
    stub.DeleteSession(pb.DeleteSessionRequest(name=gone))
    stub.UpdateParticipant(pb.UpdateParticipantRequest(participant=Participant(name=bob, enabled=False)))
    stub.DeleteParticipant(pb.DeleteParticipantRequest(name=carol))
    sessions = (direct, group, pair, trigger, gone)
    members = tuple(
        member.name
        for name in sessions
        for member in stub.ListMembers(pb.ListMembersRequest(parent=name, page_size=1000)).members
    )
    snapshot = Snapshot(namespace, (bot, bot2, alice, bob, carol), sessions, members, events)
    return dataclasses.replace(snapshot, state=tuple(snapshot.read(stub).items()))


def assert_snapshot_intact(stub: Stub, snapshot: Snapshot) -> None:
    now = snapshot.read(stub)
    before = dict(snapshot.state)
    changed = [key for key in before if now.get(key) != before[key]]
    detail = "\n".join(
        f"--- {key}\nbefore:\n{text_format.MessageToString(before[key], as_utf8=True)}"
        f"after:\n{text_format.MessageToString(now[key], as_utf8=True)}"
        for key in changed[:3]
    )
    assert not changed, f"the snapshot namespace changed: {changed}\n{detail}"


# --- the scratch world --------------------------------------------------------------------------


def build_world(stub: Stub, parent: str, snapshot: Snapshot, *, throwaway: int = 0) -> gen.World:
    """Resources in the test's own namespace for near-valid requests to aim at."""
    namespace = parent.removeprefix("namespaces/")
    etags: list[str] = []

    def participant(pid: str, kind: int) -> str:
        request = pb.CreateParticipantRequest(
            parent=parent, participant_id=pid, participant=_participant(kind, external_id=f"{pid}-ext")
        )
        created = stub.CreateParticipant(request)
        etags.append(created.etag)
        name: str = created.name
        return name

    agents = tuple(participant(pid, Participant.KIND_AGENT) for pid in ("a1", "a2", "a3"))
    users = tuple(participant(pid, Participant.KIND_USER) for pid in ("u1", "u2"))

    def session(sid: str, **fields: Any) -> str:
        request = pb.CreateSessionRequest(parent=parent, session_id=sid, session=Session(**fields))
        created = stub.CreateSession(request)
        etags.append(created.etag)
        name: str = created.name
        return name

    sessions = (
        session("direct", kind=Session.KIND_DIRECT, agent=agents[0], user=users[0], labels={"team": "a"}),
        session("group", kind=Session.KIND_GROUP, agent=agents[0], external_conversation_id="c-1"),
        session("pair", kind=Session.KIND_AGENT_TO_AGENT, agent=agents[0], peer_agent=agents[1]),
        session("trigger", kind=Session.KIND_TRIGGER, agent=agents[1]),
        session("gone", kind=Session.KIND_GROUP, agent=agents[2]),
    )
    stub.AddMember(pb.AddMemberRequest(parent=sessions[1], member=Member(participant=users[1])))
    authors = (users[0], users[1], agents[1], "", agents[2])  # a member of each session, or none
    events = tuple(
        stub.AppendEvent(
            pb.AppendEventRequest(
                parent=session_name,
                event_id=f"e{i}",
                event=event_pb2.Event(
                    author=author,
                    invocation_id="inv-1",
                    branch="root.planner",
                    labels={"team": "a"},
                    content=_struct({"text": f"message {i}"}),
                ),
            )
        ).event.name
        for session_name, author in zip(sessions, authors, strict=True)
        for i in (1, 2)
    )
    etags.append(stub.DeleteSession(pb.DeleteSessionRequest(name=sessions[4])).etag)
    members = tuple(
        member.name
        for name in sessions
        for member in stub.ListMembers(pb.ListMembersRequest(parent=name, page_size=1000)).members
    )
    tokens = [
        stub.ListSessions(pb.ListSessionsRequest(parent=parent, page_size=1)).next_page_token,
        stub.ListParticipants(pb.ListParticipantsRequest(parent=parent, page_size=1)).next_page_token,
        stub.ListMembers(pb.ListMembersRequest(parent=sessions[0], page_size=1)).next_page_token,
        stub.ListNamespaces(pb.ListNamespacesRequest(page_size=1)).next_page_token,
        stub.ListEvents(pb.ListEventsRequest(parent=sessions[0], page_size=1)).next_page_token,
        stub.ListEvents(
            pb.ListEventsRequest(
                parent=sessions[1], page_size=1, order_by="sequence desc", filter="sequence > 0"
            )
        ).next_page_token,
    ]
    spare = []
    for _ in range(throwaway):
        spare.append(f"fz-del-{uuid.uuid4().hex[:10]}")
        stub.CreateNamespace(pb.CreateNamespaceRequest(namespace_id=spare[-1]))
    return gen.World(
        scratch=namespace,
        snapshot=snapshot.namespace,
        agents=agents,
        users=users,
        sessions=sessions,
        members=members,
        events=events,
        etags=tuple(etags),
        page_tokens=tuple(token for token in tokens if token),
        throwaway=tuple(spare),
        snapshot_names=snapshot.names,
    )


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    """A plain channel to the shared server. It takes responses and trailers of any size, so that an
    oversized error trailer is seen and measured (see ``problems_of``) instead of being turned into a
    RESOURCE_EXHAUSTED at random by gRPC's soft metadata limit."""
    options = [
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_metadata_size", UNLIMITED_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", UNLIMITED_METADATA_BYTES),
    ]
    with grpc.insecure_channel(server.target, options=options) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return session_service_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture(scope="module")
def snapshot(server: ServerProcess, stub: Stub) -> Iterator[Snapshot]:
    """The snapshot namespace of this backend, written and read once. Afterwards the shared server
    gets the chance to recover (SERVING again) before the next module uses it."""
    yield build_snapshot(stub)
    wait_for_serving(server)


def assert_server_healthy(server: ServerProcess) -> None:
    """Property 2: the process runs and its health check says SERVING (right now, no waiting)."""
    assert server.is_running(), f"the server exited:\n{server.log_tail()}"
    assert server.health() == SERVING, f"the server is not SERVING:\n{server.log_tail()}"


def wait_for_serving(server: ServerProcess) -> None:
    """Give the server up to ``RECOVERY_SECONDS`` to be SERVING again (it reports NOT_SERVING for a
    while after its event loop was blocked)."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while server.is_running() and server.health() != SERVING and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_until_serving(server: ServerProcess) -> None:
    """Before a batch: recovered from an earlier batch's damage, so that a failure is charged to the
    batch that caused it."""
    wait_for_serving(server)
    assert_server_healthy(server)


# --- properties ---------------------------------------------------------------------------------


def test_every_rpc_has_generators() -> None:
    """Every RPC of the service has a near-valid generator (a new RPC must get one)."""
    assert set(gen.METHODS) == set(gen.VALID)


def test_writes_never_name_protected_namespaces() -> None:
    """The guard of property 3: a request that may write is refused when it names the snapshot
    namespace, ``default`` or another test's namespace (or would purge with force); reads pass."""
    world = gen.World(scratch="t-0000aaaa", snapshot="fzsnap-1234abcd", throwaway=("fz-del-1",))
    snap_session = "namespaces/fzsnap-1234abcd/sessions/direct"
    refused = [
        ("UpdateSession", pb.UpdateSessionRequest(session=Session(name=snap_session))),
        ("CreateParticipant", pb.CreateParticipantRequest(parent="namespaces/default")),
        ("AddMember", pb.AddMemberRequest(parent="namespaces/t-0123abcd/sessions/s")),
        ("DeleteNamespace", pb.DeleteNamespaceRequest(name="namespaces/t-0000aaaa", force=True)),
        ("CreateNamespace", pb.CreateNamespaceRequest(namespace_id="fzsnap-1234abcd")),
        ("PurgeSessions", pb.PurgeSessionsRequest(parent="namespaces/t-0000aaaa", filter="*", force=True)),
        ("RemoveMember", pb.RemoveMemberRequest(name=f"{snap_session}/members/bot\x00")),
        ("AppendEvent", pb.AppendEventRequest(parent=snap_session)),
        (
            "AppendEvent",
            pb.AppendEventRequest(
                parent="namespaces/t-0000aaaa/sessions/s",
                event=event_pb2.Event(author="namespaces/fzsnap-1234abcd/participants/bot"),
            ),
        ),
        ("DeleteEvent", pb.DeleteEventRequest(name=f"{snap_session}/events/hello")),
        ("PurgeEvents", pb.PurgeEventsRequest(parent=snap_session, filter="*")),
    ]
    allowed = [
        ("GetSession", pb.GetSessionRequest(name=snap_session)),
        ("UpdateSession", pb.UpdateSessionRequest(session=Session(name="namespaces/t-0000aaaa/sessions/x"))),
        (
            "UpdateSession",
            pb.UpdateSessionRequest(session=Session(name=snap_session.replace("1234", "1x34"))),
        ),
        ("DeleteNamespace", pb.DeleteNamespaceRequest(name="namespaces/fz-del-1", force=True)),
        ("PurgeSessions", pb.PurgeSessionsRequest(parent="namespaces/t-0000aaaa", filter="*")),
        ("GetEvent", pb.GetEventRequest(name=f"{snap_session}/events/hello")),
        ("ListEvents", pb.ListEventsRequest(parent=snap_session)),
        (
            "PurgeEvents",
            pb.PurgeEventsRequest(parent="namespaces/t-0000aaaa/sessions/s", filter="*", force=True),
        ),
    ]
    assert [m for m, r in refused if not gen.may_write_protected(m, r, world)] == []
    assert [m for m, r in allowed if gen.may_write_protected(m, r, world)] == []


@pytest.mark.parametrize("method", sorted(gen.METHODS))
def test_requests_never_break_the_server(
    server: ServerProcess, channel: grpc.Channel, stub: Stub, snapshot: Snapshot, parent: str, method: str
) -> None:
    """Properties 1-3 for one RPC: arbitrary and near-valid requests get a clean answer (OK, or an
    error with ErrorInfo and, for INVALID_ARGUMENT, field violations; never INTERNAL/UNKNOWN/
    DATA_LOSS); afterwards the server is SERVING and the snapshot namespace is unchanged."""
    wait_until_serving(server)
    world = build_world(stub, parent, snapshot, throwaway=3 if method == "DeleteNamespace" else 0)

    @settings(SETTINGS, max_examples=EXAMPLES_PER_RPC)
    @given(case=gen.requests(method, world).map(Case))
    def property_holds(case: Case) -> None:
        check_call(server, channel, stub, method, case.request)

    property_holds()
    assert_server_healthy(server)
    assert_snapshot_intact(stub, snapshot)


# --- one defect, its own error ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What an error says, from its ``google.rpc.Status`` trailer."""

    code: str
    reason: str
    fields: tuple[str, ...]  # of the field violations, sorted
    resource: str  # ErrorInfo metadata ``resource_name``


def answer_of(outcome: Outcome) -> Answer:
    reason, resource = "", ""
    fields: list[str] = []
    raw = dict(outcome.trailers).get(DETAILS_KEY)
    if isinstance(raw, bytes):
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, resource = info.reason, info.metadata.get("resource_name", "")
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend(v.field for v in bad.field_violations)
    return Answer(outcome.code.name, reason, tuple(sorted(fields)), resource)


def defect_problems(case: gen.Defective, got: Answer) -> list[str]:
    found = []
    if (got.code, got.reason) != (case.code, case.reason):
        found.append(f"expected {case.code} {case.reason}, got {got.code} {got.reason or '(no reason)'}")
    if got.fields not in {tuple(sorted(alternative)) for alternative in case.fields}:
        wanted = " or ".join(str(list(alternative)) for alternative in case.fields)
        found.append(f"expected the field violations {wanted}, got {list(got.fields)}")
    if case.resource is not None and got.resource != case.resource:
        found.append(f"expected resource_name {case.resource!r}, got {got.resource!r}")
    return found


@dataclass(frozen=True)
class DefectCase:
    """A generated defective request; its repr is the defect and the shortened request."""

    defective: gen.Defective

    def __repr__(self) -> str:
        return f"[{self.defective.defect}] {describe(self.defective.request)}"


@pytest.mark.parametrize(
    ("method", "defect"), [(method, defect) for method, defects in gen.DEFECTS.items() for defect in defects]
)
def test_one_defect_gets_its_own_error(
    server: ServerProcess,
    channel: grpc.Channel,
    stub: Stub,
    snapshot: Snapshot,
    parent: str,
    method: str,
    defect: str,
) -> None:
    """Property 1 and more for the event RPCs: a correct request with one known defect gets exactly
    the error of that defect (code, reason, the one field at fault, the resource asked for); then
    properties 2 and 3."""
    wait_until_serving(server)
    world = build_world(stub, parent, snapshot)

    @settings(SETTINGS, max_examples=DEFECT_EXAMPLES)
    @given(case=gen.defective(method, defect, world).map(DefectCase))
    def property_holds(case: DefectCase) -> None:
        defective = case.defective
        start = len(server.log_lines())
        outcome = check_call(server, channel, stub, method, defective.request)
        note(f"defect: {defective.defect}")
        found = defect_problems(defective, answer_of(outcome))
        if found:
            log = render_log(server_lines_since(server, start, method, fault=False)[-10:])
            raise AssertionError(
                f"{method} with one defect ({defective.defect}): {'; '.join(found)}\n"
                f"status: {outcome.code.name}: {_short(outcome.details)}\n"
                f"request ({defective.request.ByteSize()} bytes):\n{describe(defective.request)}\n"
                f"server log of the call:\n{log}"
            )

    property_holds()
    assert_server_healthy(server)
    assert_snapshot_intact(stub, snapshot)


def test_every_event_rpc_has_defects() -> None:
    """The event RPCs (and only they) have defect generators."""
    events = {name for name in gen.METHODS if name.endswith(("Event", "Events"))}
    assert (
        set(gen.DEFECTS) == events == {"AppendEvent", "GetEvent", "ListEvents", "DeleteEvent", "PurgeEvents"}
    )


# --- undecodable bytes --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


DEEP_STRUCT_METHODS = ("UpdateSession", "CreateSession", "AppendEvent")


def deeply_nested_state(session_name: str, depth: int, method: str, field: str = "content") -> bytes:
    """An Update/CreateSession request whose ``session_state`` nests ``depth`` Structs, or an
    AppendEvent request whose event's ``field`` (``content`` or ``state_delta``) does (built as
    bytes: the generated classes refuse to parse what is past the limit)."""
    value = _length_delimited(3, b"x")  # Value.string_value
    struct = b""
    for _ in range(depth):
        struct = _length_delimited(1, _length_delimited(1, b"a") + _length_delimited(2, value))  # fields
        value = _length_delimited(5, struct)  # Value.struct_value
    if method == "AppendEvent":
        number = event_pb2.Event.DESCRIPTOR.fields_by_name[field].number
        event = _length_delimited(number, struct)
        return _length_delimited(1, session_name.encode()) + _length_delimited(6, event)
    if method == "UpdateSession":
        session = _length_delimited(1, session_name.encode()) + _length_delimited(16, struct)
        return _length_delimited(1, session)
    parent = session_name.split("/sessions/")[0]
    return _length_delimited(1, parent.encode()) + _length_delimited(3, _length_delimited(16, struct))


@st.composite
def _mangled(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> bytes:
    """A valid request's bytes with bytes flipped, cut off or appended."""
    data = bytearray(draw(valid).SerializeToString())
    how = draw(st.sampled_from(["flip", "truncate", "append", "varint"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
    elif how == "truncate" and data:
        del data[draw(st.integers(min_value=0, max_value=len(data) - 1)) :]
    elif how == "varint":
        data += b"\x08" + b"\xff" * draw(st.integers(min_value=1, max_value=12))
    else:
        data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _struct_depth(struct: struct_pb2.Struct) -> int:
    depth = 1
    while "a" in struct.fields and struct.fields["a"].HasField("struct_value"):
        struct, depth = struct.fields["a"].struct_value, depth + 1
    return depth


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("UpdateSession", ""),
        ("CreateSession", ""),
        ("AppendEvent", "content"),
        ("AppendEvent", "state_delta"),
    ],
)
def test_deeply_nested_requests_are_what_they_say(method: str, field: str) -> None:
    """The hand-built bytes decode (below the depth limit) to the request meant."""
    session = "namespaces/t-0000aaaa/sessions/s"
    cls = gen.message_class(gen.METHODS[method].input_type)
    request: Any = cls.FromString(deeply_nested_state(session, 5, method, field))
    if method == "AppendEvent":
        assert request.parent == session
        assert [f.name for f, _ in request.event.ListFields()] == [field]
        assert _struct_depth(getattr(request.event, field)) == 5
    else:
        assert [f.name for f, _ in request.session.ListFields()][-1] == "session_state"
        assert _struct_depth(request.session.session_state) == 5


def _decodes_to_a_safe_request(method: str, data: bytes, world: gen.World) -> bool:
    """False for bytes that decode to a request which could write a protected namespace."""
    request = gen.message_class(gen.METHODS[method].input_type)()
    try:
        request.ParseFromString(data)
    except DecodeError:
        return True
    if method == "PurgeSessions" and getattr(request, "force", False):
        return False
    return not gen.may_write_protected(method, request, world)


def test_undecodable_requests_are_rejected_cleanly(
    server: ServerProcess, channel: grpc.Channel, stub: Stub, snapshot: Snapshot, parent: str
) -> None:
    """Property 1 for request bytes (random, mangled valid requests, Structs nested past protobuf's
    depth limit of 100): bytes the server cannot decode are bad input like any other, so the answer
    is INVALID_ARGUMENT with details, not gRPC's UNKNOWN with the decoder's exception text. Then
    properties 2 and 3."""
    wait_until_serving(server)
    world = build_world(stub, parent, snapshot)
    methods = st.sampled_from(sorted(gen.METHODS))

    @st.composite
    def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
        method = draw(methods)
        how = draw(st.sampled_from(["random", "mangled", "deep"]))
        if how == "deep":
            method = draw(st.sampled_from(DEEP_STRUCT_METHODS))
            depth = draw(st.integers(min_value=30, max_value=120))
            field = draw(st.sampled_from(["content", "state_delta"]))
            return method, deeply_nested_state(world.sessions[3], depth, method, field)
        if how == "mangled":
            return method, draw(_mangled(gen.VALID[method](world)))
        return method, draw(st.binary(max_size=128))

    @settings(SETTINGS, max_examples=UNDECODABLE_EXAMPLES)
    @given(payload=payloads())
    def property_holds(payload: tuple[str, bytes]) -> None:
        method, data = payload
        assume(_decodes_to_a_safe_request(method, data, world))
        check_call(server, channel, stub, method, data)

    property_holds()
    assert_server_healthy(server)
    assert_snapshot_intact(stub, snapshot)
