"""FindOrCreateSession and FindOrCreateParticipant: keys, templates, soft-deleted
matches, and atomicity under concurrency (also across two server processes)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.support.errors import expect_error
from tether.client import (
    AsyncSessionsClient,
    FindOrCreateSessionRequest,
    Participant,
    Reason,
    Session,
    SessionsClient,
)

Conversation = FindOrCreateSessionRequest.ExternalConversation
AgentPair = FindOrCreateSessionRequest.AgentPair
CONCURRENCY = 64


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


@pytest.fixture
def peer(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT)).name


@pytest.fixture
def user(client: SessionsClient, parent: str) -> str:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_USER)).name


def test_conversation_key_creates_then_finds(
    client: SessionsClient, parent: str, agent: str, user: str
) -> None:
    key = Conversation(agent=agent, channel="feishu", conversation_id="oc_123")
    first = client.find_or_create_session(
        parent=parent, external_conversation=key, session=Session(user=user, display_name="Chat")
    )
    assert first.created is True
    s = first.session
    assert (s.kind, s.agent, s.user, s.channel, s.external_conversation_id) == (
        Session.KIND_DIRECT,
        agent,
        user,
        "feishu",
        "oc_123",
    )
    assert s.auto_created is True
    assert s.member_count == 2
    again = client.find_or_create_session(parent=parent, external_conversation=key)
    assert again.created is False
    assert again.session == s
    group = client.find_or_create_session(
        parent=parent, external_conversation=Conversation(agent=agent, conversation_id="g1")
    )
    assert group.session.kind == Session.KIND_GROUP
    assert group.session.channel == "web"


def test_template_contradicting_key_is_invalid(
    client: SessionsClient, parent: str, agent: str, peer: str
) -> None:
    key = Conversation(agent=agent, channel="slack", conversation_id="c")
    contradictions = [
        (Session(agent=peer), "session.agent"),
        (Session(channel="web"), "session.channel"),
        (Session(external_conversation_id="other"), "session.external_conversation_id"),
    ]
    for template, field in contradictions:
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=[field]):
            client.find_or_create_session(parent=parent, external_conversation=key, session=template)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.kind"]):
        client.find_or_create_session(
            parent=parent,
            agent_pair=AgentPair(agent=agent, peer_agent=peer),
            session=Session(kind=Session.KIND_GROUP),
        )
    with pytest.raises(ValueError, match="exactly one"):  # the client checks the oneof itself
        client.find_or_create_session(parent=parent)


def test_agent_pair_is_unordered(client: SessionsClient, parent: str, agent: str, peer: str) -> None:
    ab = client.find_or_create_session(parent=parent, agent_pair=AgentPair(agent=agent, peer_agent=peer))
    assert ab.created is True
    assert ab.session.kind == Session.KIND_AGENT_TO_AGENT
    ba = client.find_or_create_session(parent=parent, agent_pair=AgentPair(agent=peer, peer_agent=agent))
    assert ba.created is False
    assert ba.session.name == ab.session.name
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["agent_pair.peer_agent"]
    ):
        client.find_or_create_session(parent=parent, agent_pair=AgentPair(agent=agent, peer_agent=agent))


def test_soft_deleted_match(client: SessionsClient, parent: str, agent: str) -> None:
    key = Conversation(agent=agent, conversation_id="c-del")
    old = client.find_or_create_session(parent=parent, external_conversation=key).session
    client.delete_session(name=old.name)
    fresh = client.find_or_create_session(parent=parent, external_conversation=key)
    assert fresh.created is True
    assert fresh.session.name != old.name
    assert client.get_session(name=old.name).HasField("delete_time")  # left alone
    client.delete_session(name=fresh.session.name)
    restored = client.find_or_create_session(
        parent=parent, external_conversation=key, undelete_if_deleted=True
    )
    assert restored.session.name == fresh.session.name
    assert not restored.session.HasField("delete_time")


async def _race_sessions(
    clients: list[AsyncSessionsClient], parent: str, agent: str, user: str
) -> list[object]:
    key = Conversation(agent=agent, channel="slack", conversation_id="race")
    calls = [
        clients[i % len(clients)].find_or_create_session(
            parent=parent, external_conversation=key, session=Session(user=user)
        )
        for i in range(CONCURRENCY)
    ]
    return list(await asyncio.gather(*calls))


async def test_concurrent_find_or_create_session_gives_one_session(
    aclient: AsyncSessionsClient, parent: str, agent: str, user: str
) -> None:
    results = await _race_sessions([aclient], parent, agent, user)
    _assert_one_winner(results)


async def test_concurrent_find_or_create_participant_gives_one_participant(
    aclient: AsyncSessionsClient, parent: str
) -> None:
    calls = [
        aclient.find_or_create_participant(parent=parent, kind=Participant.KIND_USER, external_id="slack:U1")
        for _ in range(CONCURRENCY)
    ]
    results = await asyncio.gather(*calls)
    assert sum(r.created for r in results) == 1
    assert len({r.participant.SerializeToString(deterministic=True) for r in results}) == 1


def _assert_one_winner(results: list[object]) -> None:
    assert len(results) == CONCURRENCY
    assert sum(r.created for r in results) == 1  # type: ignore[attr-defined]
    # Every caller got the same session, byte for byte.
    assert len({r.session.SerializeToString(deterministic=True) for r in results}) == 1  # type: ignore[attr-defined]
