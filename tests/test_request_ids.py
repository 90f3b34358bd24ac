"""Request ids (AIP-155, DESIGN.md "Writes"): a repeat gets what the first call created
(as it is now), even after a restart and from another replica; a reuse with another
payload is REQUEST_ID_CONFLICT; concurrent duplicates make one effect; a failed call is
not remembered; a find-or-create that finds writes nothing."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from tests.support.errors import expect_error
from tests.support.rows import claims, columns
from tests.support.server import ServerFactory, ServerProcess
from tether.client import (
    AsyncSessionsClient,
    ExternalConversation,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
)


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


def _rid() -> str:
    return str(uuid.uuid4())


def _session_names(client: SessionsClient, parent: str) -> list[str]:
    return [s.name for s in client.list_sessions(parent=parent)]


def test_repeat_returns_what_the_first_call_created(client: SessionsClient, parent: str, agent: str) -> None:
    rid = _rid()
    template = Session(kind=Session.KIND_TRIGGER, agent=agent, display_name="once")
    first = client.create_session(parent=parent, session=template, request_id=rid)
    changed = client.update_session(session=Session(name=first.name, display_name="changed since"))
    again = client.create_session(parent=parent, session=template, request_id=rid)
    # The same session, as it is now (only its name is kept per request id, not the response).
    assert again == changed
    assert (again.uid, again.display_name) == (first.uid, "changed since")
    assert _session_names(client, parent) == [first.name]


def test_reuse_with_another_payload_is_a_conflict(client: SessionsClient, parent: str, agent: str) -> None:
    rid = _rid()
    client.create_session(
        parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent), request_id=rid
    )
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.REQUEST_ID_CONFLICT):
        client.create_session(
            parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent), request_id=rid
        )
    # Another method, same id.
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.REQUEST_ID_CONFLICT):
        client.create_participant(
            parent=parent, participant=Participant(kind=Participant.KIND_USER), request_id=rid
        )


def test_request_id_must_be_a_uuid(client: SessionsClient, parent: str, agent: str) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["request_id"]):
        client.create_session(
            parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent), request_id="retry-1"
        )


def test_every_creating_rpc_replays(client: SessionsClient, parent: str, agent: str) -> None:
    rid = _rid()
    ns_id = f"r-{uuid.uuid4().hex[:8]}"
    assert client.create_namespace(namespace_id=ns_id, request_id=rid) == client.create_namespace(
        namespace_id=ns_id, request_id=rid
    )
    p = Participant(kind=Participant.KIND_USER)
    rid = _rid()
    assert client.create_participant(
        parent=parent, participant=p, request_id=rid
    ) == client.create_participant(parent=parent, participant=p, request_id=rid)
    rid = _rid()
    first = client.find_or_create_participant(
        parent=parent, kind=Participant.KIND_USER, external_id="e", request_id=rid
    )
    assert first.created
    assert (
        client.find_or_create_participant(
            parent=parent, kind=Participant.KIND_USER, external_id="e", request_id=rid
        )
        == first
    )  # `created` stays true on the replay
    rid = _rid()
    key = ExternalConversation(agent=agent, conversation_id="c1")
    made = client.find_or_create_session(parent=parent, external_conversation=key, request_id=rid)
    assert client.find_or_create_session(parent=parent, external_conversation=key, request_id=rid) == made
    rid = _rid()
    member = Member(participant=first.participant.name)
    added = client.add_member(parent=made.session.name, member=member, request_id=rid)
    assert client.add_member(parent=made.session.name, member=member, request_id=rid) == added
    # A new request id is a new call.
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.MEMBER_ALREADY_EXISTS):
        client.add_member(parent=made.session.name, member=member, request_id=_rid())


def test_a_failed_call_is_not_remembered(client: SessionsClient, parent: str) -> None:
    rid = _rid()
    agent = f"{parent}/participants/late"
    session = Session(kind=Session.KIND_TRIGGER, agent=agent)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.PARTICIPANT_NOT_FOUND):
        client.create_session(parent=parent, session=session, request_id=rid)
    client.create_participant(
        parent=parent, participant_id="late", participant=Participant(kind=Participant.KIND_AGENT)
    )
    assert client.create_session(parent=parent, session=session, request_id=rid).agent == agent


async def test_concurrent_duplicates_make_one_effect(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str, agent: str
) -> None:
    rid = _rid()
    template = Session(kind=Session.KIND_TRIGGER, agent=agent)
    results = await asyncio.gather(
        *[aclient.create_session(parent=parent, session=template, request_id=rid) for _ in range(32)]
    )
    assert len({r.SerializeToString(deterministic=True) for r in results}) == 1
    assert _session_names(client, parent) == [results[0].name]


def test_replay_survives_a_restart(server_factory: ServerFactory) -> None:
    database = server_factory.new_database()
    rid = _rid()
    template = Participant(kind=Participant.KIND_AGENT, display_name="bot")
    first_server = server_factory(database)
    with SessionsClient(first_server.target) as client:
        first = client.create_participant(parent="namespaces/default", participant=template, request_id=rid)
    assert first_server.stop() == 0
    with SessionsClient(server_factory(database).target) as client:
        assert (
            client.create_participant(parent="namespaces/default", participant=template, request_id=rid)
            == first
        )
        assert len(list(client.list_participants(parent="namespaces/default"))) == 1


@pytest.mark.pg_only
async def test_duplicates_across_replicas_make_one_effect(server_factory: ServerFactory) -> None:
    database = server_factory.new_database()
    targets = [server_factory(database).target, server_factory(database).target]
    rid = _rid()
    template = Participant(kind=Participant.KIND_USER, display_name="once")
    async with AsyncSessionsClient(targets[0]) as a, AsyncSessionsClient(targets[1]) as b:
        calls = [
            c.create_participant(parent="namespaces/default", participant=template, request_id=rid)
            for c in [a, b] * 16
        ]
        results = await asyncio.gather(*calls)
        assert len({r.SerializeToString(deterministic=True) for r in results}) == 1
        assert [p.name async for p in a.list_participants(parent="namespaces/default")] == [results[0].name]


def test_an_expired_request_id_is_a_new_call(server_factory: ServerFactory) -> None:
    server = server_factory(env={"TETHER_REQUEST_ID_TTL": "0.001s"})
    rid = _rid()
    with SessionsClient(server.target) as client:
        agent = client.create_participant(
            parent="namespaces/default", participant=Participant(kind=Participant.KIND_AGENT)
        ).name
        template = Session(kind=Session.KIND_TRIGGER, agent=agent)
        first = client.create_session(parent="namespaces/default", session=template, request_id=rid)
        second = client.create_session(parent="namespaces/default", session=template, request_id=rid)
    assert second.name != first.name  # the record had expired: the call ran again


# --- what a request id keeps (DESIGN.md "Writes") -----------------------------------------------


def test_a_request_id_keeps_the_created_name_not_the_response(
    server: ServerProcess, client: SessionsClient, parent: str, namespace: str, agent: str
) -> None:
    rid = _rid()
    made = client.create_session(
        parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent), request_id=rid
    )
    assert claims(server.database_url, namespace)[-1] == (rid, "CreateSession", made.name)
    assert "response" not in columns(server.database_url, "idempotency")


def test_a_find_that_finds_writes_nothing(
    server: ServerProcess, client: SessionsClient, parent: str, namespace: str, agent: str
) -> None:
    key = ExternalConversation(agent=agent, channel="slack", conversation_id="C1")
    created_by = _rid()
    made = client.find_or_create_session(parent=parent, external_conversation=key, request_id=created_by)
    user = client.find_or_create_participant(
        parent=parent, kind=Participant.KIND_USER, external_id="U1", request_id=_rid()
    )
    before = claims(server.database_url, namespace)
    for _ in range(3):
        found = client.find_or_create_session(parent=parent, external_conversation=key, request_id=_rid())
        assert (found.session.name, found.created) == (made.session.name, False)
        again = client.find_or_create_participant(
            parent=parent, kind=Participant.KIND_USER, external_id="U1", request_id=_rid()
        )
        assert (again.participant.name, again.created) == (user.participant.name, False)
    assert claims(server.database_url, namespace) == before
    assert [(method, name) for _, method, name in before if method.startswith("FindOrCreate")] == [
        ("FindOrCreateSession", made.session.name),
        ("FindOrCreateParticipant", user.participant.name),
    ]
    # The call that created, retried, still says it created.
    retried = client.find_or_create_session(parent=parent, external_conversation=key, request_id=created_by)
    assert (retried.session.name, retried.created) == (made.session.name, True)


async def test_concurrent_find_or_create_duplicates_make_one_session(
    aclient: AsyncSessionsClient, client: SessionsClient, parent: str, agent: str
) -> None:
    key = ExternalConversation(agent=agent, conversation_id="new-1")
    rid = _rid()
    same = await asyncio.gather(
        *[
            aclient.find_or_create_session(parent=parent, external_conversation=key, request_id=rid)
            for _ in range(32)
        ]
    )
    assert {(r.session.name, r.created) for r in same} == {
        (same[0].session.name, True)
    }  # all retries of one call
    key = ExternalConversation(agent=agent, conversation_id="new-2")
    distinct = await asyncio.gather(
        *[
            aclient.find_or_create_session(parent=parent, external_conversation=key, request_id=_rid())
            for _ in range(32)
        ]
    )
    assert len({r.session.name for r in distinct}) == 1
    assert sum(r.created for r in distinct) == 1  # 32 calls: one created, 31 found
    assert len(_session_names(client, parent)) == 2


def test_a_retry_answers_the_created_session_even_once_it_is_deleted(
    client: SessionsClient, parent: str, agent: str
) -> None:
    key = ExternalConversation(agent=agent, conversation_id="gone")
    rid = _rid()
    made = client.find_or_create_session(parent=parent, external_conversation=key, request_id=rid)
    client.delete_session(name=made.session.name)
    retried = client.find_or_create_session(parent=parent, external_conversation=key, request_id=rid)
    assert (retried.session.name, retried.created) == (made.session.name, True)
    assert retried.session.HasField("delete_time")  # as it is now
    fresh = client.find_or_create_session(parent=parent, external_conversation=key, request_id=_rid())
    assert fresh.created
    assert fresh.session.name != made.session.name
