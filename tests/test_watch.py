"""WatchSessions (DESIGN.md "WatchSessions"): the change stream of a namespace, through the
shipped client against real servers, on SQLite and PostgreSQL.

Nothing here waits for time to pass: a test reads a stream until the changes it caused have
arrived (with a generous deadline as a safety net only), and shows that nothing else came by
writing a last "sentinel" change and checking that it is the very next one delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import struct_pb2

from tests.support.errors import expect_error
from tests.support.server import ServerProcess
from tests.support.tools import DEADLINE_SECONDS
from tether.client import (
    AsyncSessionsClient,
    ChangeType,
    Event,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
    WatchSessionsResponse,
)
from tether.v1 import session_service_pb2 as pb
from tether.v1 import session_service_pb2_grpc

Change = WatchSessionsResponse
CREATED, UPDATED = ChangeType.CHANGE_TYPE_CREATED, ChangeType.CHANGE_TYPE_UPDATED
DELETED, UNDELETED = ChangeType.CHANGE_TYPE_DELETED, ChangeType.CHANGE_TYPE_UNDELETED
PURGED, ACTIVITY = ChangeType.CHANGE_TYPE_PURGED, ChangeType.CHANGE_TYPE_ACTIVITY
MEMBER_ADDED, MEMBER_REMOVED = ChangeType.CHANGE_TYPE_MEMBER_ADDED, ChangeType.CHANGE_TYPE_MEMBER_REMOVED
EVENT_APPENDED, EVENT_DELETED = ChangeType.CHANGE_TYPE_EVENT_APPENDED, ChangeType.CHANGE_TYPE_EVENT_DELETED
REVISION_METADATA = "tether-revision"
AGENT, USER = Participant.KIND_AGENT, Participant.KIND_USER


# --- helpers ------------------------------------------------------------------------------------


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _participant(client: SessionsClient, parent: str, kind: Participant.Kind.ValueType) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=kind)).name


def _trigger(client: SessionsClient, parent: str, agent: str, **fields: Any) -> Session:
    return client.create_session(
        parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent, **fields)
    )


def _rename(client: SessionsClient, session: str, display_name: str) -> Session:
    return client.update_session(session=Session(name=session, display_name=display_name))


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def head_revision(target: str, parent: str, token: str | None = None) -> int:
    """The revision a watch "from now" starts after (its `tether-revision` initial metadata),
    read with the raw stub: every change made after this returns is delivered after it."""
    with grpc.insecure_channel(target) as channel:
        call = session_service_pb2_grpc.SessionServiceStub(channel).WatchSessions(
            pb.WatchSessionsRequest(parent=parent), metadata=_metadata(token), timeout=DEADLINE_SECONDS
        )
        try:
            return _start_of(call)
        finally:
            call.cancel()


def _start_of(call: Any) -> int:
    revisions = [int(value) for key, value in call.initial_metadata() if key == REVISION_METADATA]
    assert len(revisions) == 1, f"initial metadata without one {REVISION_METADATA}: {call.initial_metadata()}"
    return revisions[0]


async def take(stream: AsyncIterator[Change], count: int, within: float = DEADLINE_SECONDS) -> list[Change]:
    """The next `count` changes of `stream` (the deadline is a safety net, not a measurement)."""
    taken: list[Change] = []
    try:
        async with asyncio.timeout(within):
            while len(taken) < count:
                taken.append(await anext(stream))
    except TimeoutError:
        got = [(c.revision, ChangeType.Name(c.type), resource(c)) for c in taken]
        raise AssertionError(f"{len(taken)} of {count} changes within {within:.0f}s: {got}") from None
    return taken


@contextlib.asynccontextmanager
async def watching(client: AsyncSessionsClient, **kwargs: Any) -> AsyncIterator[AsyncIterator[Change]]:
    stream = client.watch_sessions(**kwargs)
    try:
        yield stream
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def replay(
    client: AsyncSessionsClient, parent: str, start: int, count: int, **kwargs: Any
) -> list[Change]:
    """`count` changes after `start`, from a watch of its own."""
    async with watching(client, parent=parent, start_revision=start, **kwargs) as stream:
        return await take(stream, count)


class SyncWatch:
    """The blocking client's watch iterator, run in a thread of its own so a test can read
    it with a deadline; its own client, so closing it ends the stream."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._client = SessionsClient(target)
        self._queue: queue.Queue[Change | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True, name="sync-watch")
        self._closing = False
        self._thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            for change in self._client.watch_sessions(**kwargs):
                self._queue.put(change)
        except BaseException as error:  # handed to the test (unless it is closing the watch)
            if not self._closing:
                self._queue.put(error)

    def take(self, count: int, timeout: float = DEADLINE_SECONDS) -> list[Change]:
        taken: list[Change] = []
        for _ in range(count):
            item = self._queue.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise AssertionError(f"the watch failed after {len(taken)} changes") from item
            taken.append(item)
        return taken

    def close(self) -> None:
        self._closing = True
        self._client.close()
        self._thread.join(DEADLINE_SECONDS)


def resource(change: Change) -> str:
    """The name of what a change is about: its event, its member's participant, or its session."""
    if change.type in (EVENT_APPENDED, EVENT_DELETED):
        return change.event.name
    if change.type in (MEMBER_ADDED, MEMBER_REMOVED):
        return f"{change.session.name}|{change.member.participant}"
    return change.session.name


def _fields(message: Any) -> dict[str, Any]:
    """A message's set fields, for assertions whose failure shows what differs."""
    return {field.name: value for field, value in message.ListFields()}


def _stateless(session: Session) -> Session:
    copy = Session()
    copy.CopyFrom(session)
    copy.ClearField("session_state")
    return copy


def triples(changes: Sequence[Change]) -> list[tuple[int, int, str]]:
    return [(c.revision, c.type, resource(c)) for c in changes]


def assert_increasing(changes: Sequence[Change]) -> None:
    revisions = [c.revision for c in changes]
    assert all(a < b for a, b in itertools.pairwise(revisions)), revisions


# --- 1. every change type, and the session as of each change -------------------------------------


async def test_every_change_type_with_its_session(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    user, joiner = _participant(client, parent, USER), _participant(client, parent, USER)
    # A change before the start: on a fresh SQLite database the head would be 0, which is
    # "from now" (test_a_watch_from_an_empty_log_resumes_without_loss).
    _trigger(client, parent, agent)
    start = head_revision(server.target, parent)
    assert start > 0

    direct = client.create_session(
        parent=parent, session=Session(kind=Session.KIND_DIRECT, agent=agent, user=user)
    )
    one = _rename(client, direct.name, "one")
    two = _rename(client, direct.name, "two")
    appended = client.append_event(
        parent=direct.name,
        event=Event(content=_struct({"text": "hi"}), state_delta=_struct({"mood": "fine"})),
    )
    later = datetime.now(UTC) + timedelta(hours=1)
    moved = client.record_activity(name=direct.name, activity_time=later)
    client.record_activity(name=direct.name, activity_time=later - timedelta(minutes=1))  # does not move it
    group = client.create_session(
        parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, labels={"doomed": "yes"})
    )
    added = client.add_member(parent=group.name, member=Member(participant=joiner, role=Member.ROLE_OBSERVER))
    client.remove_member(name=added.name)
    client.delete_event(name=appended.event.name)
    deleted = client.delete_session(name=direct.name)
    undeleted = client.undelete_session(name=direct.name)
    client.delete_session(name=group.name)
    purged = client.purge_sessions(parent=parent, filter='labels.doomed = "yes"', force=True)
    assert purged.purge_count == 1
    sentinel = _rename(client, direct.name, "sentinel")

    async with watching(aclient, parent=parent, start_revision=start) as stream:
        first = await take(stream, 3)
        # The members a session is created with follow its CREATED, each reported once.
        assert [c.type for c in first] == [CREATED, MEMBER_ADDED, MEMBER_ADDED]
        assert first[0].session == direct
        assert {c.member.participant for c in first[1:]} == {agent, user}
        assert all(c.session.name == direct.name for c in first)

        changes = await take(stream, 13)
    assert_increasing(first + changes)
    assert all(c.revision > start for c in first)
    assert [c.type for c in changes] == [
        UPDATED,
        UPDATED,
        EVENT_APPENDED,
        ACTIVITY,  # the second RecordActivity went back in time: no change
        CREATED,
        MEMBER_ADDED,  # the group's agent
        MEMBER_ADDED,
        MEMBER_REMOVED,
        EVENT_DELETED,
        DELETED,
        UNDELETED,
        DELETED,
        PURGED,
    ], [ChangeType.Name(c.type) for c in changes]
    (upd1, upd2, app, act, gcreated, gagent, gadded, gremoved, edel, sdel, sundel, gdel, gpurge) = changes

    # Each change carries the session as it was right after it, with the write's etag.
    assert (upd1.session.display_name, upd1.session.etag) == ("one", one.etag)
    assert (upd2.session.display_name, upd2.session.etag) == ("two", two.etag)
    assert upd1.session == one
    assert upd2.session == two
    # The event was deleted since: its EVENT_APPENDED has only its keys now (the whole event
    # "while it exists": test_read_mask_decides_the_session_fields).
    assert app.event == Event(name=appended.event.name, sequence=appended.event.sequence)
    assert app.session.etag == appended.session.etag
    assert app.session.event_count == 1
    assert not app.session.HasField("session_state")  # left out unless the read mask asks for it
    assert act.session.last_activity_time == moved.last_activity_time
    assert gcreated.session.name == group.name
    assert gcreated.session.kind == Session.KIND_GROUP
    assert gagent.member.participant == agent
    assert (gadded.member.participant, gadded.member.role) == (joiner, Member.ROLE_OBSERVER)
    assert gadded.member.name == added.name
    assert gremoved.member.participant == joiner
    assert gremoved.session.name == group.name
    assert edel.event.name == appended.event.name
    assert edel.event.sequence == appended.event.sequence
    assert not edel.event.HasField("content")  # the event is gone: only its keys
    # The same sessions as the writes returned, but for the state (not asked for).
    assert _fields(sdel.session) == _fields(_stateless(deleted))
    assert sdel.session.HasField("delete_time")
    assert _fields(sundel.session) == _fields(_stateless(undeleted))
    assert not sundel.session.HasField("delete_time")
    assert gdel.session.name == group.name
    assert gdel.session.HasField("delete_time")
    assert gpurge.session == Session(name=group.name)  # PURGED: the name only
    assert all(c.HasField("change_time") for c in changes)

    # Nothing else came: the next change is the sentinel.
    [last] = await replay(aclient, parent, changes[-1].revision, 1)
    assert (last.type, last.session.etag) == (UPDATED, sentinel.etag)


async def test_read_mask_decides_the_session_fields(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    session = _trigger(client, parent, agent)
    start = head_revision(server.target, parent)
    appended = client.append_event(parent=session.name, event=Event(state_delta=_struct({"step": 1})))
    client.append_event(parent=session.name, event=Event(state_delta=_struct({"step": 2, "done": True})))

    plain = await replay(aclient, parent, start, 2)
    everything = await replay(aclient, parent, start, 2, read_mask=["*"])
    state_only = await replay(aclient, parent, start, 2, read_mask=["session_state"])
    some = await replay(aclient, parent, start, 2, read_mask=["name", "display_name", "session_state"])

    assert next(c.event.name for c in plain) == appended.event.name
    assert not any(c.session.HasField("session_state") for c in plain)
    assert plain[0].session.etag == appended.session.etag
    # "*": every field, the state as of each change.
    assert [dict(c.session.session_state) for c in everything] == [{"step": 1}, {"step": 2, "done": True}]
    assert everything[0].session.etag == appended.session.etag
    assert everything[0].session.name == session.name
    # A list: those fields only.
    assert [c.session for c in state_only] == [
        Session(session_state=_struct({"step": 1})),
        Session(session_state=_struct({"step": 2, "done": True})),
    ]
    assert [(c.session.name, c.session.etag, dict(c.session.session_state)) for c in some] == [
        (session.name, "", {"step": 1}),
        (session.name, "", {"step": 2, "done": True}),
    ]
    # The mask shapes `session` only: the event comes whole.
    assert state_only[0].event == appended.event == everything[0].event


async def test_a_read_mask_of_non_session_fields_is_invalid(
    aclient: AsyncSessionsClient, parent: str
) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["read_mask"]):
        async with watching(aclient, parent=parent, read_mask=["name", "no_such_field"]) as stream:
            await take(stream, 1)


# --- 2. resuming ---------------------------------------------------------------------------------


async def test_resume_after_a_revision_delivers_exactly_the_changes_after_it(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    session = _trigger(client, parent, agent)
    start = head_revision(server.target, parent)
    written = [_rename(client, session.name, f"n{i}") for i in range(5)]

    first = await replay(aclient, parent, start, 3)
    assert [c.session.etag for c in first] == [s.etag for s in written[:3]]
    resumed = await replay(aclient, parent, first[-1].revision, 2)
    assert [c.session.etag for c in resumed] == [s.etag for s in written[3:]]
    assert first[-1].revision < resumed[0].revision
    # Every revision delivered once, in one order, whether read in one go or resumed.
    whole = await replay(aclient, parent, start, 5)
    assert triples(whole) == triples(first + resumed)
    # Resuming from the last one waits for what comes next, and nothing before it.
    sentinel = _rename(client, session.name, "sentinel")
    [after] = await replay(aclient, parent, whole[-1].revision, 1)
    assert after.session.etag == sentinel.etag


def test_start_revision_zero_starts_from_now(
    client: SessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    session = _trigger(client, parent, agent)
    before = _rename(client, session.name, "before")
    with grpc.insecure_channel(server.target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        call = stub.WatchSessions(pb.WatchSessionsRequest(parent=parent), timeout=DEADLINE_SECONDS)
        try:
            now = _start_of(call)  # the stream is open: "now" is fixed
            after = _rename(client, session.name, "after")
            change = next(call)
        finally:
            call.cancel()
        # The initial metadata says where the stream started: resuming from it is the same.
        resumed = stub.WatchSessions(
            pb.WatchSessionsRequest(parent=parent, start_revision=now), timeout=DEADLINE_SECONDS
        )
        try:
            assert _start_of(resumed) == now
            again = next(resumed)
        finally:
            resumed.cancel()
    assert change.session.etag == after.etag != before.etag
    assert change.revision > now
    assert again == change


async def test_start_revision_beyond_the_newest_is_revision_ahead(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    _trigger(client, parent, agent)
    head = head_revision(server.target, parent)
    ahead = head + (1 << 40)
    with expect_error(grpc.StatusCode.OUT_OF_RANGE, Reason.REVISION_AHEAD) as info:
        await replay(aclient, parent, ahead, 1)
    assert head <= int(info.value.metadata["head_revision"]) < ahead
    # The head itself is accepted (its stream waits for the next change).
    fresh = _trigger(client, parent, agent)  # CREATED, MEMBER_ADDED (its agent)
    sentinel = _rename(client, fresh.name, "sentinel")
    changes = await replay(aclient, parent, head, 3)
    assert [c.type for c in changes] == [CREATED, MEMBER_ADDED, UPDATED]
    assert changes[-1].session.etag == sentinel.etag


async def test_negative_start_revision_is_invalid(aclient: AsyncSessionsClient, parent: str) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["start_revision"]):
        await replay(aclient, parent, -1, 1)


# --- 3. filters ----------------------------------------------------------------------------------


async def test_a_filter_keeps_the_changes_of_matching_sessions_as_of_each_change(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    other_agent = _participant(client, parent, AGENT)
    start = head_revision(server.target, parent)
    red = _trigger(client, parent, agent, labels={"team": "red"})
    blue = _trigger(client, parent, agent, labels={"team": "blue"})
    _rename(client, blue.name, "still blue")
    client.append_event(parent=red.name, event=Event(content=_struct({"text": "to red"})))
    client.append_event(parent=blue.name, event=Event(content=_struct({"text": "to blue"})))
    client.update_session(session=Session(name=blue.name, labels={"team": "red"}), update_mask=["labels"])
    _rename(client, blue.name, "red now")
    client.update_session(session=Session(name=red.name, labels={"team": "blue"}), update_mask=["labels"])
    _rename(client, red.name, "blue now")
    other = _trigger(client, parent, other_agent, labels={"team": "red"})
    sentinel = _rename(client, other.name, "sentinel")

    everything = await replay(aclient, parent, start, 14)
    assert everything[-1].session.etag == sentinel.etag  # all 14 are this test's writes

    def red_team(c: Change) -> bool:
        return c.session.labels.get("team") == "red"

    def by_agent(c: Change) -> bool:
        return c.session.agent == other_agent

    for filter, keep in ((' labels.team = "red"', red_team), (f'agent = "{other_agent}"', by_agent)):
        expected = [c for c in everything if keep(c)]
        got = await replay(aclient, parent, start, len(expected), filter=filter)
        assert triples(got) == triples(expected), filter
        assert got[-1].session.etag == sentinel.etag  # the last one: nothing after it matched
    red_types = [(c.session.name, c.type) for c in everything if red_team(c)]
    # The relabelling itself is the first change of blue's the filter lets through, and the
    # one that relabelled red is the first it no longer does.
    assert (blue.name, UPDATED) in red_types
    assert red_types.count((red.name, UPDATED)) == 0
    assert [t for n, t in red_types if n == red.name] == [CREATED, MEMBER_ADDED, EVENT_APPENDED]


async def test_a_bad_filter_is_invalid_filter(aclient: AsyncSessionsClient, parent: str) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER):
        async with watching(aclient, parent=parent, filter='kind = "') as stream:
            await take(stream, 1)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER):
        async with watching(aclient, parent=parent, filter="no_such_field = 1") as stream:
            await take(stream, 1)
