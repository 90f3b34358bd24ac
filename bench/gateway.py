"""A Slack-style gateway written against `AsyncSessionsClient`, the workload of issue 10:
100 conversations (60 DMs, 40 channels) of 20 users with one agent, messages in a seeded
random order. Per message: find-or-create the sender, find-or-create the conversation's
session (a DM is a DIRECT session of the sender, a channel a GROUP session), record
activity, and in a channel add the sender as a member (the server answers ALREADY_EXISTS,
reason MEMBER_ALREADY_EXISTS, when they already are one: tolerated, and counted apart).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tether.client import (
    AlreadyExistsError,
    AsyncSessionsClient,
    ExternalConversation,
    Member,
    Participant,
    Reason,
    Session,
)

CHANNEL = "slack"


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    direct: bool
    user: int  # a DM's one user; -1 for a channel


class Gateway:
    def __init__(
        self,
        parent: str,
        prefix: str,
        *,
        dms: int = 60,
        channels: int = 40,
        users: int = 20,
        messages: int = 20_000,
        seed: int = 10,
    ) -> None:
        self.parent = parent
        self.prefix = prefix  # keeps ids of two runs on one database apart
        self.users = users
        self.conversations = [Conversation(f"{prefix}D{i:02d}", True, i % users) for i in range(dms)] + [
            Conversation(f"{prefix}C{i:02d}", False, -1) for i in range(channels)
        ]
        rng = random.Random(seed)
        self.messages: list[tuple[int, int]] = []  # (conversation, sender)
        for _ in range(messages):
            index = rng.randrange(len(self.conversations))
            conversation = self.conversations[index]
            self.messages.append((index, conversation.user if conversation.direct else rng.randrange(users)))
        self.agent = ""
        self.rpcs = 0  # calls sent
        self.already_members = 0  # AddMember answered MEMBER_ALREADY_EXISTS (tolerated)

    def describe(self) -> str:
        dms = sum(1 for c in self.conversations if c.direct)
        return (
            f"{len(self.conversations)} conversations ({dms} DMs, {len(self.conversations) - dms} channels), "
            f"{self.users} users, 1 agent, {len(self.messages):,} messages in a seeded random order"
        )

    def counts(self) -> dict[str, int]:
        return {"rpcs": self.rpcs, "already_member": self.already_members}

    async def setup(self, client: AsyncSessionsClient) -> None:
        """The gateway's agent (found or created once, as a gateway does at start)."""
        response = await client.find_or_create_participant(
            parent=self.parent,
            kind=Participant.KIND_AGENT,
            external_id=f"{self.prefix}agent",
            participant=Participant(display_name="gateway agent"),
        )
        self.agent = response.participant.name

    async def message(self, client: AsyncSessionsClient, sequence: int) -> None:
        """One incoming message: what the gateway does before handing it to the agent."""
        index, sender = self.messages[sequence % len(self.messages)]
        conversation = self.conversations[index]
        self.rpcs += 1
        user = (
            await client.find_or_create_participant(
                parent=self.parent,
                kind=Participant.KIND_USER,
                external_id=f"{self.prefix}U{sender:02d}",
                participant=Participant(display_name=f"user {sender}"),
            )
        ).participant
        template = (
            Session(kind=Session.KIND_DIRECT, user=user.name)
            if conversation.direct
            else Session(kind=Session.KIND_GROUP, group_name=f"#{conversation.conversation_id}")
        )
        self.rpcs += 1
        session = (
            await client.find_or_create_session(
                parent=self.parent,
                external_conversation=ExternalConversation(
                    agent=self.agent, channel=CHANNEL, conversation_id=conversation.conversation_id
                ),
                session=template,
            )
        ).session
        self.rpcs += 1
        await client.record_activity(name=session.name)
        if not conversation.direct:
            self.rpcs += 1
            try:
                await client.add_member(
                    parent=session.name, member=Member(participant=user.name, role=Member.ROLE_MEMBER)
                )
            except AlreadyExistsError as error:
                if error.reason != Reason.MEMBER_ALREADY_EXISTS:
                    raise
                self.already_members += 1
