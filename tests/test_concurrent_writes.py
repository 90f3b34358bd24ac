"""Many concurrent writers: every call succeeds and every write lands. On SQLite the
writes of one process queue inside it (tether.server.db.sqlite_runner) instead of
meeting on SQLite's lock, so no caller sees "database is locked", even with the
client's retries switched off."""

from __future__ import annotations

import asyncio

from tests.support.server import ServerProcess
from tether.client import AsyncSessionsClient, ExternalConversation, Member, Participant, Session

WRITERS = 64


async def test_64_concurrent_writers_all_succeed(server: ServerProcess, parent: str) -> None:
    async with AsyncSessionsClient(server.target, retry=False) as client:
        agent = (
            await client.create_participant(
                parent=parent, participant=Participant(kind=Participant.KIND_AGENT)
            )
        ).name
        group = (
            await client.create_session(parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent))
        ).name

        async def writer(index: int) -> None:
            made = await client.create_session(
                parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent)
            )
            await client.record_activity(name=made.name)
            user = await client.find_or_create_participant(
                parent=parent, kind=Participant.KIND_USER, external_id=f"u{index}"
            )
            key = ExternalConversation(agent=agent, channel="slack", conversation_id=f"dm-{index}")
            await client.find_or_create_session(
                parent=parent,
                external_conversation=key,
                session=Session(kind=Session.KIND_DIRECT, user=user.participant.name),
            )
            await client.add_member(parent=group, member=Member(participant=user.participant.name))
            await client.update_session(session=Session(name=made.name, display_name=f"writer {index}"))

        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        sessions = [s async for s in client.list_sessions(parent=parent, page_size=1000)]
        names = sorted(s.display_name for s in sessions if s.kind == Session.KIND_TRIGGER)
        assert names == sorted(f"writer {i}" for i in range(WRITERS))
        assert sum(s.kind == Session.KIND_DIRECT for s in sessions) == WRITERS
        assert (await client.get_session(name=group)).member_count == 1 + WRITERS
