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
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2

from tests.support.databases import DatabaseBackend, libpq_url
from tests.support.errors import expect_error
from tests.support.security import Credential, write_auth_file
from tests.support.server import ServerFactory, ServerProcess
from tests.support.tools import DEADLINE_SECONDS
from tether.client import (
    AsyncSessionsClient,
    ChangeType,
    Event,
    Member,
    OutOfRangeError,
    Participant,
    Reason,
    Session,
    SessionsClient,
    WatchSessionsResponse,
)
from tether.server.db.base import Database
from tether.server.db.changes import compact
from tether.server.db.engine import create_engine
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


def watch_start(client: SessionsClient, target: str, parent: str) -> int:
    """`head_revision`, made non-zero first if need be: a test on the shared server may be the
    first to write, and start_revision 0 would mean "from now"
    (test_a_watch_from_an_empty_log_resumes_without_loss). The warm-up change goes to a
    namespace of its own."""
    head = head_revision(target, parent)
    if head == 0:
        warm = f"w-{uuid.uuid4().hex[:8]}"
        client.create_namespace(namespace_id=warm)
        _trigger(client, f"namespaces/{warm}", _participant(client, f"namespaces/{warm}", AGENT))
        head = head_revision(target, parent)
    assert head > 0
    return head


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
    start = watch_start(client, server.target, parent)

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
        first = await take(stream, 1)
        # The members a session is created with come with its CREATED (member_count).
        assert [c.type for c in first] == [CREATED]
        assert first[0].session == direct
        assert first[0].session.member_count == 2

        changes = await take(stream, 12)
    assert_increasing(first + changes)
    assert all(c.revision > start for c in first)
    assert [c.type for c in changes] == [
        UPDATED,
        UPDATED,
        EVENT_APPENDED,
        ACTIVITY,  # the second RecordActivity went back in time: no change
        CREATED,  # the group, with its agent as its member
        MEMBER_ADDED,
        MEMBER_REMOVED,
        EVENT_DELETED,
        DELETED,
        UNDELETED,
        DELETED,
        PURGED,
    ], [ChangeType.Name(c.type) for c in changes]
    (upd1, upd2, app, act, gcreated, gadded, gremoved, edel, sdel, sundel, gdel, gpurge) = changes

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
    assert gcreated.session.member_count == 1
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
    start = watch_start(client, server.target, parent)
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
    start = watch_start(client, server.target, parent)
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
    head = watch_start(client, server.target, parent)
    ahead = head + (1 << 40)
    with expect_error(grpc.StatusCode.OUT_OF_RANGE, Reason.REVISION_AHEAD) as info:
        await replay(aclient, parent, ahead, 1)
    assert head <= int(info.value.metadata["head_revision"]) < ahead
    # The head itself is accepted (its stream waits for the next change).
    fresh = _trigger(client, parent, agent)  # CREATED (its agent comes with it)
    sentinel = _rename(client, fresh.name, "sentinel")
    changes = await replay(aclient, parent, head, 2)
    assert [c.type for c in changes] == [CREATED, UPDATED]
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
    start = watch_start(client, server.target, parent)
    red = _trigger(client, parent, agent, labels={"team": "red"})
    blue = _trigger(client, parent, agent, labels={"team": "blue"})
    _rename(client, blue.name, "still blue")
    client.append_event(parent=red.name, event=Event(content=_struct({"text": "to red"})))
    client.append_event(parent=blue.name, event=Event(content=_struct({"text": "to blue"})))
    client.update_session(session=Session(name=blue.name, labels={"team": "red"}), update_mask=["labels"])
    _rename(client, blue.name, "red now")
    client.update_session(session=Session(name=red.name, labels={"team": "blue"}), update_mask=["labels"])
    _rename(client, red.name, "blue now")
    doomed = _trigger(client, parent, agent, labels={"team": "red", "doomed": "yes"})
    client.delete_session(name=doomed.name)
    assert client.purge_sessions(parent=parent, filter='labels.doomed = "yes"', force=True).purge_count == 1
    other = _trigger(client, parent, other_agent, labels={"team": "red"})
    sentinel = _rename(client, other.name, "sentinel")

    everything = await replay(aclient, parent, start, 14)
    assert everything[-1].session.etag == sentinel.etag  # all 14 are this test's writes
    assert [c.type for c in everything if c.session.name == doomed.name][-1] == PURGED

    def red_team(c: Change) -> bool:
        # PURGED carries only the name, but the filter sees the session as it was before.
        return c.session.labels.get("team") == "red" or (c.type == PURGED and c.session.name == doomed.name)

    def by_agent(c: Change) -> bool:
        return c.session.agent == other_agent

    for filter, keep in (('labels.team = "red"', red_team), (f'agent = "{other_agent}"', by_agent)):
        expected = [c for c in everything if keep(c)]
        got = await replay(aclient, parent, start, len(expected), filter=filter)
        assert triples(got) == triples(expected), filter
        assert got[-1].session.etag == sentinel.etag  # the last one: nothing after it matched
    red_types = [(c.session.name, c.type) for c in everything if red_team(c)]
    # The relabelling itself is the first change of blue's the filter lets through, and the
    # one that relabelled red is the first it no longer does.
    assert (blue.name, UPDATED) in red_types
    assert red_types.count((red.name, UPDATED)) == 0
    assert [t for n, t in red_types if n == red.name] == [CREATED, EVENT_APPENDED]


async def test_a_bad_filter_is_invalid_filter(aclient: AsyncSessionsClient, parent: str) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER):
        async with watching(aclient, parent=parent, filter='kind = "') as stream:
            await take(stream, 1)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER):
        async with watching(aclient, parent=parent, filter="no_such_field = 1") as stream:
            await take(stream, 1)


# --- 4. compaction ---------------------------------------------------------------------------------

KEPT = 5
COMPACTING = {"TETHER_WATCH_MAX_CHANGES": str(KEPT), "TETHER_SWEEP_INTERVAL": "0.1"}


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition that a server process makes true, up to a deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_compaction_turns_old_resume_points_out_of_range(server_factory: ServerFactory) -> None:
    server = server_factory(env=COMPACTING)
    parent = "namespaces/default"
    with SessionsClient(server.target) as client:
        agent = _participant(client, parent, AGENT)
        session = _trigger(client, parent, agent)
        renames = [_rename(client, session.name, f"r{i}") for i in range(2 * KEPT)]
    newest = [s.etag for s in renames[-KEPT:]]
    outcome: dict[str, Any] = {}

    async with AsyncSessionsClient(server.target) as aclient:

        async def compacted_to_the_newest() -> bool:
            try:
                await replay(aclient, parent, 1, 1)  # the first revision there could be
            except OutOfRangeError as caught:
                outcome["error"] = caught
            else:
                return False  # not compacted yet
            resume_from = int(outcome["error"].metadata["resume_revision"])
            try:
                kept = await replay(aclient, parent, resume_from, KEPT)
            except OutOfRangeError:
                return False  # compacted further meanwhile
            outcome["kept"] = kept
            return [c.session.etag for c in kept] == newest

        # The sweeper compacts while the renames are written: wait until it has caught up.
        await eventually(compacted_to_the_newest, f"compaction down to the newest {KEPT} changes")
        error, kept = outcome["error"], outcome["kept"]
        assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.REVISION_COMPACTED)
        oldest, resume = int(error.metadata["oldest_revision"]), int(error.metadata["resume_revision"])
        # resume_revision: the smallest start accepted; oldest_revision: the first change held.
        assert resume < oldest == kept[0].revision
        assert_increasing(kept)
        with expect_error(grpc.StatusCode.OUT_OF_RANGE, Reason.REVISION_COMPACTED) as again:
            await replay(aclient, parent, resume - 1, 1)
        assert again.value.metadata == error.metadata
        # A watch from a held revision is unaffected.
        assert triples(await replay(aclient, parent, kept[1].revision, KEPT - 2)) == triples(kept[2:])
    compaction = server.wait_for_event("changes_compacted", timeout=DEADLINE_SECONDS)
    assert compaction is not None, server.log_tail()
    assert "sweep_failed" not in server.log_text()


# --- 5. a server restart under a watch -------------------------------------------------------------


RESTART_WATCHERS = 4  # of each client: a reopen racing the server's stop is not a rare case


async def test_both_clients_watch_through_a_restart_without_gap_or_duplicate(
    server_factory: ServerFactory,
) -> None:
    """Watches of both clients, reading while the server is stopped (SIGTERM) and a new one
    is started on the same database and port: each continues after its last revision."""
    first = server_factory()
    port = first.target.rpartition(":")[2]
    parent = "namespaces/default"
    with SessionsClient(first.target) as client:
        agent = _participant(client, parent, AGENT)
        session = _trigger(client, parent, agent)
        start = head_revision(first.target, parent)
        sync_watches = [
            SyncWatch(first.target, parent=parent, start_revision=start) for _ in range(RESTART_WATCHERS)
        ]
        seen_async: list[list[Change]] = [[] for _ in range(RESTART_WATCHERS)]
        try:
            async with AsyncSessionsClient(first.target) as aclient:

                async def follow(into: list[Change]) -> None:
                    async with watching(aclient, parent=parent, start_revision=start) as stream:
                        async with asyncio.timeout(DEADLINE_SECONDS):
                            while len(into) < 6:
                                into.append(await anext(stream))

                followers = [asyncio.create_task(follow(into)) for into in seen_async]
                before = [_rename(client, session.name, f"before {i}") for i in range(3)]
                seen_sync = [await asyncio.to_thread(w.take, 3) for w in sync_watches]

                async def async_watchers_have_read_them() -> bool:
                    return all(len(into) >= 3 for into in seen_async)

                await eventually(async_watchers_have_read_them, "the async watchers' first changes")

                # The loop keeps running meanwhile: the async watchers reopen as they would.
                assert await asyncio.to_thread(first.stop) == 0
                second = await asyncio.to_thread(
                    server_factory, first.database_url, env={"TETHER_LISTEN": f"127.0.0.1:{port}"}
                )
                assert second.target == first.target  # the clients' target is unchanged

                after = [_rename(client, session.name, f"after {i}") for i in range(3)]
                broken: list[str] = []
                for w, seen in zip(sync_watches, seen_sync, strict=True):
                    try:
                        seen += await asyncio.to_thread(w.take, 3)
                    except AssertionError as error:
                        broken.append(f"sync: {error.__cause__!r}")
                for outcome in await asyncio.gather(*followers, return_exceptions=True):
                    if outcome is not None:
                        broken.append(f"async: {outcome!r}")
                # Each one kept going (a reopen that met the stopping server was retried).
                assert not broken, f"{len(broken)} of {2 * RESTART_WATCHERS} watches ended: {broken}"
                replayed = await replay(aclient, parent, start, 6)
        finally:
            for w in sync_watches:
                w.close()
    etags = [s.etag for s in before + after]
    assert [c.session.etag for c in replayed] == etags
    for seen in seen_sync + seen_async:
        assert triples(seen) == triples(replayed)
    assert_increasing(replayed)
    # The first server ended the streams as it shut down (the clients reopened them).
    assert "Traceback" not in first.log_text()


# --- 6. access ---------------------------------------------------------------------------------------


def test_a_reader_watches_its_own_namespace_only(
    server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own, theirs = f"w-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    reader = Credential.new("reader-own", "reader", [own])
    admin = Credential.new("admin", "admin", ["*"])
    auth_file = write_auth_file(tmp_path_factory.mktemp("auth") / "auth.toml", [reader, admin])
    server = server_factory(env={"TETHER_AUTH_FILE": str(auth_file)})
    with (
        SessionsClient(server.target, token=admin.token) as as_admin,
        SessionsClient(server.target, token=reader.token) as as_reader,
    ):
        for namespace in (own, theirs):
            as_admin.create_namespace(namespace_id=namespace)
            _trigger(
                as_admin, f"namespaces/{namespace}", _participant(as_admin, f"namespaces/{namespace}", AGENT)
            )

        # Another tenant's namespace looks exactly like one that does not exist.
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND) as denied:
            next(iter(as_reader.watch_sessions(parent=f"namespaces/{theirs}")))
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND) as missing:
            next(iter(as_admin.watch_sessions(parent="namespaces/w-missing")))
        assert denied.value.metadata["resource_name"] == f"namespaces/{theirs}"
        assert missing.value.metadata["resource_name"] == "namespaces/w-missing"
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
            start = head_revision(server.target, f"namespaces/{own}", reader.token)
            next(iter(as_reader.watch_sessions(parent=f"namespaces/{theirs}", start_revision=start)))

        # Its own: watched like any other caller would.
        own_parent = f"namespaces/{own}"
        start = head_revision(server.target, own_parent, reader.token)
        created = _trigger(as_admin, own_parent, _participant(as_admin, own_parent, AGENT))
        stream = as_reader.watch_sessions(parent=own_parent, start_revision=start)
        try:
            change = next(stream)
        finally:
            stream.close()  # type: ignore[attr-defined]
        assert (change.type, change.session) == (CREATED, created)


# --- a watch from an empty log -----------------------------------------------------------------------


async def test_a_watch_from_an_empty_log_resumes_without_loss(server_factory: ServerFactory) -> None:
    """The first watch of a fresh database is told (`tether-revision`) that it starts after
    some revision; resuming from exactly that revision, as the client's iterators do after a
    break, must deliver every change made since: none may be skipped as "before now"."""
    server = server_factory()
    parent = "namespaces/default"
    with SessionsClient(server.target) as client:
        agent = _participant(client, parent, AGENT)  # participants are not in the change log
        handed_out = head_revision(server.target, parent)  # the watch, then it broke
        missed = _trigger(client, parent, agent)  # written while the watcher was away
        with grpc.insecure_channel(server.target) as channel:
            call = session_service_pb2_grpc.SessionServiceStub(channel).WatchSessions(
                pb.WatchSessionsRequest(parent=parent, start_revision=handed_out), timeout=DEADLINE_SECONDS
            )
            try:
                _start_of(call)  # the resumed stream is open
                sentinel = _rename(client, missed.name, "sentinel")
                resumed = next(call)
            finally:
                call.cancel()
    assert (resumed.type, resumed.session.name) == (CREATED, missed.name), (
        f"resuming from the handed-out revision {handed_out} skipped {missed.name}'s CREATED "
        f"(first change delivered: {ChangeType.Name(resumed.type)} {resumed.session.etag}, "
        f"the sentinel's etag is {sentinel.etag})"
    )


# --- 8. a slow watcher -------------------------------------------------------------------------------

SLOW_EVENTS = 600
BIG_TEXT = "x" * 8000  # ~5 MB of changes in all: far beyond gRPC's flow-control windows


async def test_a_watcher_that_does_not_read_loses_nothing_and_holds_up_no_one(
    client: SessionsClient, aclient: AsyncSessionsClient, server: ServerProcess, parent: str
) -> None:
    agent = _participant(client, parent, AGENT)
    session = _trigger(client, parent, agent)
    start = watch_start(client, server.target, parent)
    opener = _rename(client, session.name, "open")
    async with watching(aclient, parent=parent, start_revision=start) as stream:
        [first] = await take(stream, 1)  # the stream is open; now it is not read for a while
        assert first.session.etag == opener.etag

        limit = asyncio.Semaphore(8)

        async def append(i: int) -> pb.AppendEventResponse:
            async with limit:
                event = Event(content=_struct({"text": BIG_TEXT, "i": i}))
                return await aclient.append_event(parent=session.name, event=event)

        appended = await asyncio.gather(*(append(i) for i in range(SLOW_EVENTS)))
        # Other calls are served as usual meanwhile.
        assert (await aclient.get_session(name=session.name)).event_count == SLOW_EVENTS
        assert [s.name async for s in aclient.list_sessions(parent=parent)] == [session.name]

        changes = await take(stream, SLOW_EVENTS)
    assert {c.type for c in changes} == {EVENT_APPENDED}
    assert_increasing(changes)
    by_sequence = {r.event.sequence: r.event for r in appended}
    assert [c.event.sequence for c in changes] == list(range(1, SLOW_EVENTS + 1))
    assert all(c.event == by_sequence[c.event.sequence] for c in changes)  # each whole, as appended


# --- 7. PostgreSQL: concurrent writers on two servers, a late commit, three watchers ---------------

WRITERS = 16
WRITES_EACH = 24
SHARED_SESSIONS = 4
SLOW_COMMITS_AFTER = 96  # acknowledged writes of the others before the slow transaction commits

WriteKey = tuple[Any, ...]


def write_key(change: Change) -> WriteKey:
    """Which acknowledged write a change reports (each write of the test is unique by this)."""
    session = change.session.name
    if change.type == EVENT_APPENDED:
        return ("event", change.event.name)
    if change.type == UPDATED:
        return ("update", session, change.session.display_name)
    if change.type == ACTIVITY:
        return ("activity", session, change.session.last_activity_time.ToMicroseconds())
    if change.type == MEMBER_ADDED:
        return ("member", session, change.member.participant)
    return ("unexpected", ChangeType.Name(change.type), session)


@pytest.mark.pg_only
async def test_writers_on_two_servers_and_a_late_commit_make_one_gap_free_order(
    server_factory: ServerFactory, database_backend: DatabaseBackend
) -> None:
    assert database_backend.name == "postgresql"
    database = server_factory.new_database()
    servers = [server_factory(database), server_factory(database)]
    parent = "namespaces/default"
    with SessionsClient(servers[0].target) as setup:
        agent = _participant(setup, parent, AGENT)
        shared = [_trigger(setup, parent, agent).name for _ in range(SHARED_SESSIONS)]
        own = [_trigger(setup, parent, agent).name for _ in range(WRITERS)]  # RecordActivity's
        slow_session = _trigger(setup, parent, agent).name  # the slow transaction's alone
        joiners = [
            [_participant(setup, parent, USER) for _ in range(WRITES_EACH // 4)] for _ in range(WRITERS)
        ]
    start = head_revision(servers[0].target, parent)
    total = WRITERS * WRITES_EACH + 1

    acked: list[WriteKey] = []
    enough = asyncio.Event()
    slow_started = asyncio.Event()

    def ack(key: WriteKey) -> None:
        acked.append(key)
        if len(acked) >= SLOW_COMMITS_AFTER:
            enough.set()

    async with (
        AsyncSessionsClient(servers[0].target) as first,
        AsyncSessionsClient(servers[1].target) as second,
    ):
        clients = [first, second]

        async def writer(w: int) -> None:
            client = clients[w % 2]
            later = datetime.now(UTC) + timedelta(days=1)
            await slow_started.wait()
            for j in range(WRITES_EACH):
                target = shared[(w + j) % SHARED_SESSIONS]
                if j % 4 == 0:
                    appended = await client.append_event(
                        parent=target, event=Event(content=_struct({"w": w}))
                    )
                    ack(("event", appended.event.name))
                elif j % 4 == 1:
                    await client.update_session(session=Session(name=target, display_name=f"w{w}-{j}"))
                    ack(("update", target, f"w{w}-{j}"))
                elif j % 4 == 2:
                    moved = await client.record_activity(
                        name=own[w], activity_time=later + timedelta(seconds=j)
                    )
                    ack(("activity", own[w], moved.last_activity_time.ToMicroseconds()))
                else:
                    joiner = Member(participant=joiners[w][j // 4], role=Member.ROLE_OBSERVER)
                    added = await client.add_member(parent=target, member=joiner)
                    ack(("member", target, added.participant))

        async def slow_writer() -> list[WriteKey]:
            """One UPDATE in a transaction that commits only after many later ones did."""
            connection = await asyncpg.connect(libpq_url(database))
            try:
                transaction = connection.transaction()
                await transaction.start()
                await connection.execute(
                    "UPDATE sessions SET display_name = 'slow', version = version + 1 "
                    "WHERE namespace = $1 AND session = $2",
                    "default",
                    slow_session.rpartition("/")[2],
                )
                slow_started.set()  # its transaction id is taken: every writer's is larger
                await enough.wait()
                committed_before = list(acked)
                await transaction.commit()
            finally:
                await connection.close()
            ack(("update", slow_session, "slow"))
            return committed_before

        async def watcher(client: AsyncSessionsClient) -> list[Change]:
            async with watching(client, parent=parent, start_revision=start) as stream:
                return await take(stream, total)

        async def hopping_watcher() -> list[Change]:
            """Closed and reopened twice (from the last revision seen), on alternating servers."""
            seen: list[Change] = []
            for hop, until in enumerate((total // 3, 2 * total // 3, total)):
                after = seen[-1].revision if seen else start
                async with watching(clients[hop % 2], parent=parent, start_revision=after) as stream:
                    seen += await take(stream, until - len(seen))
            return seen

        watchers = [
            asyncio.create_task(watcher(first)),
            asyncio.create_task(watcher(second)),
            asyncio.create_task(hopping_watcher()),
        ]
        slow = asyncio.create_task(slow_writer())
        await asyncio.gather(*(writer(w) for w in range(WRITERS)))
        committed_before = await slow
        streams = await asyncio.gather(*watchers)
        fresh = await replay(first, parent, start, total)

    # Every write succeeded (refusals for revision order were retried by the servers) and is
    # reported exactly once, by every watcher, in one strictly increasing order.
    assert len(acked) == total == len(set(acked))
    assert Counter(write_key(c) for c in fresh) == Counter(acked)
    assert_increasing(fresh)
    for stream in streams:
        assert triples(stream) == triples(fresh)
    assert all(c.revision > start for c in fresh)

    # The late commit is delivered in its place: before changes that committed before it.
    revision = {write_key(c): c.revision for c in fresh}
    slow_revision = revision[("update", slow_session, "slow")]
    assert len(committed_before) >= SLOW_COMMITS_AFTER
    assert all(revision[key] > slow_revision for key in committed_before), "the slow change is not older"
    assert [c.type for c in fresh if c.session.name == slow_session] == [UPDATED]


async def test_compaction_by_age_can_drop_every_change(
    server_factory: ServerFactory,
) -> None:
    """`compact` called directly (the sweeper's call, with a chosen `now`): by age every
    change may go; each namespace's resume point follows, and its next change is held."""
    server = server_factory()  # its sweeper's first round is a minute away
    own, other = "namespaces/default", "namespaces/other"
    with SessionsClient(server.target) as client:
        client.create_namespace(namespace_id="other")
        client.create_namespace(namespace_id="first")  # its change: a start before the rest
        _trigger(client, "namespaces/first", _participant(client, "namespaces/first", AGENT))
        start = head_revision(server.target, own)
        sessions = {
            parent: _trigger(client, parent, _participant(client, parent, AGENT)) for parent in (own, other)
        }
        for i in range(3):
            for parent, session in sessions.items():
                _rename(client, session.name, f"{parent} {i}")
        async with AsyncSessionsClient(server.target) as aclient:
            logs = {parent: await replay(aclient, parent, start, 4) for parent in (own, other)}

            engine = create_engine(server.database_url)
            try:
                db = Database(engine, timedelta(days=30))
                later = datetime.now(UTC) + timedelta(minutes=1)
                dropped = await compact(db, timedelta(0), 1_000_000, now=later)
            finally:
                await engine.dispose()
            assert dropped == 1 + 8  # everything

            for parent in (own, other):
                # Nothing is left: each resumes after its last change.
                last = str(logs[parent][-1].revision)
                with expect_error(grpc.StatusCode.OUT_OF_RANGE, Reason.REVISION_COMPACTED) as info:
                    await replay(aclient, parent, logs[parent][0].revision, 1)
                assert info.value.metadata["resume_revision"] == last, parent
                assert info.value.metadata["oldest_revision"] == last, parent
            # A watch from the resume point loses nothing: the next change is there.
            async with watching(aclient, parent=own, start_revision=logs[own][-1].revision) as stream:
                sentinel = _rename(client, sessions[own].name, "after compaction")
                [change] = await take(stream, 1)
            assert change.session.etag == sentinel.etag
