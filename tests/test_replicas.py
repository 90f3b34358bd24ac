"""Two server processes on one database (PostgreSQL, or one SQLite file): find-or-create
stays atomic across them, because the database (not the process) enforces the key, and
no call fails on the other process's write lock."""

from __future__ import annotations

import asyncio

from tests.support.server import ServerFactory
from tether.client import (
    AsyncSessionsClient,
    ExternalConversation,
    FindOrCreateParticipantResponse,
    FindOrCreateSessionResponse,
    Participant,
    Session,
)

CALLS = 64


async def test_find_or_create_is_atomic_across_two_servers(server_factory: ServerFactory) -> None:
    database = server_factory.new_database()
    first, second = server_factory(database), server_factory(database)
    async with (
        AsyncSessionsClient(first.target, retry=False) as a,
        AsyncSessionsClient(second.target, retry=False) as b,
    ):
        clients = [a, b]
        parent = "namespaces/default"
        participant_calls = [
            clients[i % 2].find_or_create_participant(
                parent=parent, kind=Participant.KIND_AGENT, external_id="agent:bot"
            )
            for i in range(CALLS)
        ]
        participants: list[FindOrCreateParticipantResponse] = list(await asyncio.gather(*participant_calls))
        assert sum(r.created for r in participants) == 1
        assert len({r.participant.SerializeToString(deterministic=True) for r in participants}) == 1
        agent = participants[0].participant.name

        key = ExternalConversation(agent=agent, channel="slack", conversation_id="C42")
        session_calls = [
            clients[i % 2].find_or_create_session(
                parent=parent, external_conversation=key, session=Session(kind=Session.KIND_GROUP)
            )
            for i in range(CALLS)
        ]
        sessions: list[FindOrCreateSessionResponse] = list(await asyncio.gather(*session_calls))
    assert sum(r.created for r in sessions) == 1
    assert len({r.session.SerializeToString(deterministic=True) for r in sessions}) == 1
    # Both servers answered some of the calls, and both see the one session.
    listed = [s.name async for s in AsyncSessionsClient(second.target).list_sessions(parent=parent)]
    assert listed == [sessions[0].session.name]
