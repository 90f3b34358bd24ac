"""A Slack-style gateway written against `AsyncSessionsClient`, the workload of issue 10:
100 conversations (60 DMs, 40 channels) of 20 users with one agent, messages in a seeded
random order. One op is one incoming message, handled as a gateway does before it hands
the message to the agent, in one of two ways:

- `Gateway` (issue 11, the headline): one AppendEvent per message, the session by its
  conversation key (`external_conversation`: agent, channel, conversation id; a DM is a
  DIRECT session, whose template leaves `user` to the author, a channel a GROUP
  session) and the sender by `author_key` (USER + the sender's Slack id). The first
  message of a conversation creates the session, the first of a sender the participant,
  the first of a sender in a channel adds them as a member: all in that one call.
- `MultiCallGateway` (issue 10's gateway, kept for comparison): per message
  find-or-create the sender, find-or-create the conversation's session, record activity,
  and in a channel add the sender as a member (the server answers ALREADY_EXISTS,
  reason MEMBER_ALREADY_EXISTS, when they already are one: tolerated, and counted apart).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from google.protobuf import struct_pb2

from tether.client import (
    AlreadyExistsError,
    AsyncSessionsClient,
    AuthorKey,
    Event,
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


def chat_message(text: str, role: str = "user") -> struct_pb2.Struct:
    """An event's `content` as a chat framework shapes a message (ADK's Content)."""
    content = struct_pb2.Struct()
    content.update({"role": role, "parts": [{"text": text}]})
    return content


class _Workload:
    """The conversations, users and seeded message order that both gateways share."""

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
        self.prefix = prefix  # keeps ids of two runs (and of two gateways) on one database apart
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

    def describe(self) -> str:
        dms = sum(1 for c in self.conversations if c.direct)
        return (
            f"{len(self.conversations)} conversations ({dms} DMs, {len(self.conversations) - dms} channels), "
            f"{self.users} users, 1 agent, {len(self.messages):,} messages in a seeded random order"
        )

    def counts(self) -> dict[str, int]:
        return {"rpcs": self.rpcs}

    async def setup(self, client: AsyncSessionsClient) -> None:
        """The gateway's agent (found or created once, as a gateway does at start)."""
        response = await client.find_or_create_participant(
            parent=self.parent,
            kind=Participant.KIND_AGENT,
            external_id=f"{self.prefix}agent",
            participant=Participant(display_name="gateway agent"),
        )
        self.agent = response.participant.name

    def sender_id(self, sender: int) -> str:
        return f"{self.prefix}U{sender:02d}"

    def sender_template(self, sender: int) -> Participant:
        return Participant(display_name=f"user {sender}")


class Gateway(_Workload):
    """One AppendEvent per message (see the module's docstring)."""

    def __init__(self, parent: str, prefix: str, **kwargs: int) -> None:
        super().__init__(parent, prefix, **kwargs)
        self.sessions_created = 0
        self.authors_created = 0

    def counts(self) -> dict[str, int]:
        return {
            "rpcs": self.rpcs,
            "sessions_created": self.sessions_created,
            "authors_created": self.authors_created,
        }

    async def message(self, client: AsyncSessionsClient, sequence: int) -> None:
        index, sender = self.messages[sequence % len(self.messages)]
        conversation = self.conversations[index]
        template = (
            Session(kind=Session.KIND_DIRECT)  # its user: the author
            if conversation.direct
            else Session(kind=Session.KIND_GROUP, group_name=f"#{conversation.conversation_id}")
        )
        self.rpcs += 1
        response = await client.append_event(
            parent=self.parent,
            external_conversation=ExternalConversation(
                agent=self.agent, channel=CHANNEL, conversation_id=conversation.conversation_id
            ),
            session=template,
            author_key=AuthorKey(
                kind=Participant.KIND_USER,
                external_id=self.sender_id(sender),
                participant=self.sender_template(sender),
            ),
            event=Event(content=chat_message(f"message {sequence} in {conversation.conversation_id}")),
        )
        self.sessions_created += response.session_created
        self.authors_created += response.author_created


class MultiCallGateway(_Workload):
    """Issue 10's gateway: 3-4 calls per message (see the module's docstring)."""

    def __init__(self, parent: str, prefix: str, **kwargs: int) -> None:
        super().__init__(parent, prefix, **kwargs)
        self.already_members = 0  # AddMember answered MEMBER_ALREADY_EXISTS (tolerated)

    def counts(self) -> dict[str, int]:
        return {"rpcs": self.rpcs, "already_member": self.already_members}

    async def message(self, client: AsyncSessionsClient, sequence: int) -> None:
        """One incoming message: what the gateway does before handing it to the agent."""
        index, sender = self.messages[sequence % len(self.messages)]
        conversation = self.conversations[index]
        self.rpcs += 1
        user = (
            await client.find_or_create_participant(
                parent=self.parent,
                kind=Participant.KIND_USER,
                external_id=self.sender_id(sender),
                participant=self.sender_template(sender),
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
