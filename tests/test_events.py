"""Events (DESIGN.md "Event", issue 11): one AppendEvent per message, gapless sequences,
state deltas as merge patches, activity, membership, reading, deleting, purging and
request ids, on SQLite and PostgreSQL through the shipped client."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from tests.support.databases import libpq_url
from tests.support.errors import expect_error
from tests.support.server import ServerFactory, ServerProcess
from tests.support.tools import wait_until
from tether.client import (
    AgentPair,
    AsyncSessionsClient,
    AuthorKey,
    Event,
    ExternalConversation,
    Participant,
    Reason,
    Session,
    SessionsClient,
)

USER, AGENT = Participant.KIND_USER, Participant.KIND_AGENT


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _event(text: str = "hi", **fields: Any) -> Event:
    event = Event(content=_struct({"text": text}))
    for key, value in fields.items():
        if key == "state_delta":
            event.state_delta.CopyFrom(_struct(value))
        else:
            setattr(event, key, value)
    return event


def _participant(client: SessionsClient, parent: str, kind: Participant.Kind.ValueType) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=kind)).name


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return _participant(client, parent, AGENT)


@pytest.fixture
def user(client: SessionsClient, parent: str) -> str:
    return _participant(client, parent, USER)


def _session(
    client: SessionsClient, parent: str, kind: Session.Kind.ValueType, agent: str, **fields: Any
) -> Session:
    return client.create_session(parent=parent, session=Session(kind=kind, agent=agent, **fields))


def _sequences(client: SessionsClient, session: str, **kwargs: Any) -> list[int]:
    return [e.sequence for e in client.list_events(parent=session, **kwargs)]


# 1. One call per message ------------------------------------------------------------------


async def test_concurrent_first_messages_make_one_session_and_one_author(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str, agent: str
) -> None:
    conversation = ExternalConversation(agent=agent, channel="slack", conversation_id=f"c-{uuid.uuid4()}")
    author = AuthorKey(kind=USER, external_id=f"u-{uuid.uuid4()}")
    results = await asyncio.gather(
        *[
            aclient.append_event(
                parent=parent, external_conversation=conversation, author_key=author, event=_event(f"m{i}")
            )
            for i in range(64)
        ]
    )
    assert len({r.session.name for r in results}) == 1
    assert len({r.event.author for r in results}) == 1
    assert sorted(r.event.sequence for r in results) == list(range(1, 65))
    assert sum(r.session_created for r in results) == 1
    assert sum(r.author_created for r in results) == 1
    session = client.get_session(name=results[0].session.name)
    assert (session.event_count, session.kind, session.auto_created) == (64, Session.KIND_GROUP, True)
    assert _sequences(client, session.name) == list(range(1, 65))
    # The author joined the group once: the agent and the author.
    assert session.member_count == 2
    assert [p.name for p in client.list_participants(parent=parent, filter="kind = USER")] == [
        results[0].event.author
    ]


def test_a_direct_message_makes_its_author_the_user(client: SessionsClient, parent: str, agent: str) -> None:
    conversation = ExternalConversation(agent=agent, channel="slack", conversation_id=f"d-{uuid.uuid4()}")
    author = AuthorKey(kind=USER, external_id=f"u-{uuid.uuid4()}", participant=Participant(display_name="Al"))
    template = Session(kind=Session.KIND_DIRECT, display_name="DM")
    calls = [
        client.append_event(
            parent=parent,
            external_conversation=conversation,
            session=template,
            author_key=author,
            event=_event(),
        )
        for _ in range(2)
    ]
    first, second = calls
    assert (first.session_created, first.author_created, second.session_created) == (True, True, False)
    assert first.session.user == first.event.author == second.event.author
    assert client.get_participant(name=first.session.user).display_name == "Al"
    assert (second.session.kind, second.session.member_count, second.event.sequence) == (
        Session.KIND_DIRECT,
        2,
        2,
    )
    # Another sender in that DM is not its user: refused.
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.NOT_A_MEMBER):
        client.append_event(
            parent=parent,
            external_conversation=conversation,
            session=template,
            author_key=AuthorKey(kind=USER, external_id=f"u-{uuid.uuid4()}"),
            event=_event(),
        )


def test_a_key_into_a_missing_namespace_is_not_found(client: SessionsClient, agent: str) -> None:
    missing = f"namespaces/gone-{uuid.uuid4().hex[:8]}"
    conversation = ExternalConversation(agent=f"{missing}/participants/bot", conversation_id="c")
    for template in (Session(), Session(kind=Session.KIND_DIRECT)):
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
            client.append_event(
                parent=missing,
                external_conversation=conversation,
                session=template,
                author_key=AuthorKey(kind=USER, external_id="u"),
                event=_event(),
            )
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.append_event(parent=f"{missing}/sessions/s", event=_event(author=f"{missing}/participants/p"))


def test_by_agent_pair_and_by_name(client: SessionsClient, parent: str, agent: str) -> None:
    peer = _participant(client, parent, AGENT)
    first = client.append_event(
        parent=parent, agent_pair=AgentPair(agent=agent, peer_agent=peer), event=_event(author=peer)
    )
    assert first.session_created
    assert first.session.kind == Session.KIND_AGENT_TO_AGENT
    again = client.append_event(
        parent=parent, agent_pair=AgentPair(agent=peer, peer_agent=agent), event=_event(author=agent)
    )
    assert (again.session.name, again.event.sequence, again.session_created) == (first.session.name, 2, False)
    named = client.append_event(parent=first.session.name, event=_event("system"))
    assert (named.event.sequence, named.event.author) == (3, "")


def test_a_key_template_that_contradicts_the_session_is_refused(
    client: SessionsClient, parent: str, agent: str, user: str
) -> None:
    conversation = ExternalConversation(agent=agent, conversation_id=f"c-{uuid.uuid4()}")
    client.append_event(parent=parent, external_conversation=conversation, event=_event())
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.TEMPLATE_MISMATCH):
        client.append_event(
            parent=parent,
            external_conversation=conversation,
            session=Session(kind=Session.KIND_DIRECT, user=user),
            event=_event(),
        )


# 2. Order ---------------------------------------------------------------------------------


async def test_sequences_are_gapless_under_concurrency(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str, agent: str
) -> None:
    sessions = [_session(client, parent, Session.KIND_TRIGGER, agent).name for _ in range(3)]
    calls = [aclient.append_event(parent=s, event=_event()) for _ in range(20) for s in sessions]
    results = await asyncio.gather(*calls)
    for session in sessions:
        got = sorted(r.event.sequence for r in results if r.session.name == session)
        assert got == list(range(1, 21))
        assert _sequences(client, session) == list(range(1, 21))


def test_a_stale_writer_is_aborted(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent).name
    assert client.append_event(parent=session, event=_event(), expected_last_sequence=0).event.sequence == 1
    assert client.append_event(parent=session, event=_event(), expected_last_sequence=1).event.sequence == 2
    with expect_error(grpc.StatusCode.ABORTED, Reason.STALE_SEQUENCE) as caught:
        client.append_event(parent=session, event=_event(), expected_last_sequence=1)
    assert caught.value.metadata["last_sequence"] == "2"
    assert client.get_session(name=session).event_count == 2


@pytest.mark.pg_only
def test_appends_to_another_session_do_not_wait(server_factory: ServerFactory) -> None:
    """A session whose row is locked holds up its own appends only."""
    server = server_factory(server_factory.new_database())
    client = SessionsClient(server.target, retry=False)
    parent = "namespaces/default"
    agent = _participant(client, parent, AGENT)
    busy, free = (_session(client, parent, Session.KIND_TRIGGER, agent).name for _ in range(2))
    with psycopg.connect(libpq_url(server.database_url)) as blocker, ThreadPoolExecutor(1) as pool:
        blocker.execute("SELECT 1 FROM sessions WHERE session = %s FOR UPDATE", (busy.rsplit("/", 1)[1],))
        waiting = pool.submit(client.append_event, parent=busy, event=_event("waits"))
        wait_until(lambda: _lock_waiters(server) == 1, "the append to wait on the busy session")
        assert client.append_event(parent=free, event=_event("goes")).event.sequence == 1
        assert not waiting.done()
        blocker.rollback()
        assert waiting.result(timeout=30).event.sequence == 1
    client.close()


def _lock_waiters(server: ServerProcess) -> int:
    with psycopg.connect(libpq_url(server.database_url), autocommit=True) as observer:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


# 3. State ---------------------------------------------------------------------------------


def test_state_delta_is_a_merge_patch(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(
        client,
        parent,
        Session.KIND_TRIGGER,
        agent,
        session_state=_struct({"keep": 1, "drop": 2, "n": {"a": 1}}),
    )
    delta = {"drop": None, "n": {"b": 2, "a": None}, "new": [1, "x"], "keep": 1}
    after = client.append_event(parent=session.name, event=_event(state_delta=delta)).session
    assert dict(after.session_state) == {"keep": 1, "n": {"b": 2}, "new": [1, "x"]}
    assert after.etag != session.etag
    assert after.update_time != session.update_time
    assert client.get_session(name=session.name) == after
    replaced = client.append_event(parent=session.name, event=_event(state_delta={"n": "flat"})).session
    assert dict(replaced.session_state)["n"] == "flat"


def test_the_etag_moves_only_when_the_state_changes(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent, session_state=_struct({"a": 1}))
    plain = client.append_event(parent=session.name, event=_event()).session
    same = client.append_event(parent=session.name, event=_event(state_delta={"a": 1, "gone": None})).session
    assert plain.etag == same.etag == session.etag
    assert (plain.update_time, same.event_count) == (session.update_time, 2)
    # An etag-guarded update still succeeds after messages arrived.
    client.update_session(session=Session(name=session.name, display_name="t", etag=same.etag))


def test_a_state_over_the_limit_appends_nothing(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(
        client, parent, Session.KIND_TRIGGER, agent, session_state=_struct({"a": "x" * 200_000})
    )
    with expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED, fields=["event.state_delta"]
    ):
        client.append_event(parent=session.name, event=_event(state_delta={"b": "y" * 100_000}))
    after = client.get_session(name=session.name)
    assert (after.event_count, after.etag, _sequences(client, session.name)) == (0, session.etag, [])
    assert (
        client.append_event(parent=session.name, event=_event(state_delta={"b": "small"})).event.sequence == 1
    )


# 4. Activity ------------------------------------------------------------------------------


def test_activity_moves_forward_only(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent)
    created = session.last_activity_time.ToDatetime(tzinfo=UTC)
    past, future = created - timedelta(days=1), created + timedelta(hours=1)
    old = Event(content=_struct({"t": "old"}))
    old.event_time.FromDatetime(past)
    after_old = client.append_event(parent=session.name, event=old)
    assert after_old.session.last_activity_time == session.last_activity_time
    assert after_old.event.event_time.ToDatetime(tzinfo=UTC) == past
    new = Event()
    new.event_time.FromDatetime(future)
    assert (
        client.append_event(parent=session.name, event=new).session.last_activity_time.ToDatetime(tzinfo=UTC)
        == future
    )
    assert client.get_session(name=session.name).event_count == 2


def test_deleted_and_disabled_sessions_refuse_appends(
    client: SessionsClient, parent: str, agent: str
) -> None:
    disabled = _session(client, parent, Session.KIND_TRIGGER, agent, enabled=False).name
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DISABLED):
        client.append_event(parent=disabled, event=_event())
    deleted = _session(client, parent, Session.KIND_TRIGGER, agent).name
    client.append_event(parent=deleted, event=_event())
    client.delete_session(name=deleted)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DELETED):
        client.append_event(parent=deleted, event=_event())
    # Its events stay readable.
    assert _sequences(client, deleted) == [1]
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.append_event(parent=f"{parent}/sessions/missing", event=_event())


# 5. Membership ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Session.KIND_GROUP, Session.KIND_TRIGGER])
def test_a_new_author_joins_groups_and_triggers(
    client: SessionsClient, parent: str, agent: str, user: str, kind: Session.Kind.ValueType
) -> None:
    session = _session(client, parent, kind, agent)
    first = client.append_event(parent=session.name, event=_event(author=user))
    assert (first.session.member_count, first.event.author) == (2, user)
    assert first.session.etag != session.etag  # membership changed
    members = {m.participant: m.role for m in client.list_members(parent=session.name)}
    assert members[user] == 2  # ROLE_MEMBER
    second = client.append_event(parent=session.name, event=_event(author=user))
    assert (second.session.member_count, second.session.etag) == (2, first.session.etag)


def test_direct_and_agent_to_agent_authors_must_be_members(
    client: SessionsClient, parent: str, agent: str, user: str
) -> None:
    direct = _session(client, parent, Session.KIND_DIRECT, agent, user=user).name
    assert client.append_event(parent=direct, event=_event(author=user)).event.author == user
    stranger = _participant(client, parent, USER)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.NOT_A_MEMBER) as caught:
        client.append_event(parent=direct, event=_event(author=stranger))
    assert caught.value.metadata["resource_name"] == stranger
    peer = _participant(client, parent, AGENT)
    pair = _session(client, parent, Session.KIND_AGENT_TO_AGENT, agent, peer_agent=peer).name
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.NOT_A_MEMBER):
        client.append_event(parent=pair, event=_event(author=_participant(client, parent, AGENT)))
    assert client.get_session(name=direct).event_count == 1


def test_the_author_must_be_usable(
    client: SessionsClient, parent: str, other_parent: str, agent: str, user: str
) -> None:
    session = _session(client, parent, Session.KIND_GROUP, agent).name
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.PARTICIPANT_NOT_FOUND):
        client.append_event(parent=session, event=_event(author=f"{parent}/participants/nobody"))
    foreign = _participant(client, other_parent, USER)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["event.author"]):
        client.append_event(parent=session, event=_event(author=foreign))
    client.delete_participant(name=user)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.PARTICIPANT_DELETED):
        client.append_event(parent=session, event=_event(author=user))
    assert client.get_session(name=session).event_count == 0


# 6. Reading, deleting, purging ------------------------------------------------------------


def test_list_pages_filters_and_newest_first(
    client: SessionsClient, parent: str, agent: str, user: str
) -> None:
    session = _session(client, parent, Session.KIND_GROUP, agent).name
    for i in range(7):
        author = user if i % 2 else agent
        event = _event(f"m{i}", author=author, invocation_id=f"turn-{i // 3}", branch="root.sub")
        event.labels["n"] = str(i)
        client.append_event(parent=session, event=event)
    assert _sequences(client, session, page_size=2) == list(range(1, 8))
    assert _sequences(client, session, newest_first=True, page_size=3) == list(range(7, 0, -1))
    last = client.list_events_page(parent=session, newest_first=True, page_size=3)
    assert [e.sequence for e in last.events] == [7, 6, 5]
    assert last.next_page_token
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN):
        client.list_events_page(parent=session, page_token=last.next_page_token, page_size=3)
    assert _sequences(client, session, filter=f'author = "{user}"') == [2, 4, 6]
    assert _sequences(client, session, filter='invocation_id = "turn-1" AND sequence > 4') == [5, 6]
    assert _sequences(client, session, filter="labels.n = 3 OR sequence >= 7") == [4, 7]
    assert _sequences(client, session, filter='branch = "root.sub" AND NOT sequence <= 5') == [6, 7]
    cutoff = datetime.now(UTC) + timedelta(minutes=1)
    assert len(_sequences(client, session, filter=f"event_time < {cutoff.isoformat()}")) == 7
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER):
        client.list_events_page(parent=session, filter="content = 1")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ORDER_BY):
        client.list_events_page(parent=session, order_by="create_time")
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.list_events_page(parent=f"{parent}/sessions/missing")


def test_get_and_delete_leave_sequences_unused(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent).name
    events = [client.append_event(parent=session, event=_event(f"m{i}")).event for i in range(3)]
    assert client.get_event(name=events[1].name) == events[1]
    client.delete_event(name=events[2].name)  # the OpenAI Agents SDK's pop_item
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.EVENT_NOT_FOUND):
        client.get_event(name=events[2].name)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.EVENT_NOT_FOUND):
        client.delete_event(name=events[2].name)
    assert client.get_session(name=session).event_count == 2
    assert client.append_event(parent=session, event=_event()).event.sequence == 4
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.EVENT_ALREADY_EXISTS):
        client.append_event(parent=session, event_id=events[0].name.rsplit("/", 1)[1], event=_event())
    assert _sequences(client, session) == [1, 2, 4]


def test_purge_events_counts_then_purges(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent).name
    names = [client.append_event(parent=session, event=_event(f"m{i}")).event.name for i in range(5)]
    dry = client.purge_events(parent=session, filter="sequence <= 3")
    assert (dry.purge_count, list(dry.purge_sample)) == (3, names[:3])
    assert _sequences(client, session) == [1, 2, 3, 4, 5]
    done = client.purge_events(parent=session, filter="sequence <= 3", force=True)
    assert done.purge_count == 3
    assert (_sequences(client, session), client.get_session(name=session).event_count) == ([4, 5], 2)
    assert client.purge_events(parent=session, filter="*", force=True).purge_count == 2  # clear_session
    assert client.get_session(name=session).event_count == 0
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["filter"]):
        client.purge_events(parent=session, filter="")


def test_purging_the_session_or_namespace_takes_its_events(
    client: SessionsClient, agent: str, parent: str
) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent).name
    event = client.append_event(parent=session, event=_event()).event.name
    client.purge_sessions(parent=parent, filter="*", force=True)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.EVENT_NOT_FOUND):
        client.get_event(name=event)
    namespace = f"namespaces/ev-{uuid.uuid4().hex[:8]}"
    client.create_namespace(namespace_id=namespace.rsplit("/", 1)[1])
    other_agent = _participant(client, namespace, AGENT)
    other = client.append_event(
        parent=namespace,
        external_conversation=ExternalConversation(agent=other_agent, conversation_id="c"),
        event=_event(),
    ).event.name
    client.delete_namespace(name=namespace, force=True)
    client.create_namespace(namespace_id=namespace.rsplit("/", 1)[1])
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.EVENT_NOT_FOUND):
        client.get_event(name=other)


# 7. Retries -------------------------------------------------------------------------------


async def test_a_request_id_appends_once(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str, agent: str
) -> None:
    conversation = ExternalConversation(agent=agent, conversation_id=f"c-{uuid.uuid4()}")
    author = AuthorKey(kind=USER, external_id=f"u-{uuid.uuid4()}")
    rid = str(uuid.uuid4())
    first = await aclient.append_event(
        parent=parent, external_conversation=conversation, author_key=author, event=_event(), request_id=rid
    )
    assert first.session_created
    assert first.author_created
    repeats = await asyncio.gather(
        *[
            aclient.append_event(
                parent=parent,
                external_conversation=conversation,
                author_key=author,
                event=_event(),
                request_id=rid,
            )
            for _ in range(16)
        ]
    )
    for again in repeats:
        assert (again.event, again.session_created, again.author_created) == (first.event, True, True)
    assert _sequences(client, first.session.name) == [1]
    # A later message with a new id is the common path: nothing created.
    later = await aclient.append_event(
        parent=parent, external_conversation=conversation, author_key=author, event=_event()
    )
    assert (later.event.sequence, later.session_created, later.author_created) == (2, False, False)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.REQUEST_ID_CONFLICT):
        await aclient.append_event(parent=first.session.name, event=_event("other"), request_id=rid)


def test_a_replay_survives_a_restart(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    server = server_factory(url)
    client = SessionsClient(server.target)
    agent = _participant(client, "namespaces/default", AGENT)
    session = _session(client, "namespaces/default", Session.KIND_TRIGGER, agent).name
    rid = str(uuid.uuid4())
    first = client.append_event(parent=session, event=_event(), request_id=rid)
    client.close()
    assert server.stop() == 0, server.log_text()
    again_server = server_factory(url)
    again = SessionsClient(again_server.target)
    replay = again.append_event(parent=session, event=_event(), request_id=rid)
    assert (replay.event, replay.session.event_count) == (first.event, 1)
    again.close()


# 8. Bad input (the property tests cover more) ---------------------------------------------


def test_bad_events_are_refused_whole(client: SessionsClient, parent: str, agent: str) -> None:
    session = _session(client, parent, Session.KIND_TRIGGER, agent).name
    bad = Event(invocation_id="x" * 129, branch="not a path")
    bad.content.update({"n": float("nan")})
    bad.labels["Bad Key"] = "v"
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=[
            "event_id",
            "event.invocation_id",
            "event.branch",
            "event.labels['Bad Key']",
            "event.content",
        ],
    ):
        client.append_event(parent=session, event_id="Not_An_Id", event=bad)
    huge = Event(content=_struct({"blob": "z" * (1024 * 1024)}))
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SIZE_LIMIT_EXCEEDED):
        client.append_event(parent=session, event=huge)
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["expected_last_sequence"]
    ):
        client.append_event(parent=session, event=_event(), expected_last_sequence=-1)
    assert client.get_session(name=session).event_count == 0
