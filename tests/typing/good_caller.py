"""How a caller outside this repo uses the client: type-checked with `mypy --strict` against
the installed wheel by tests/test_typing.py (never run). Every line must pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
from google.protobuf import struct_pb2

from tether.client import (
    AbortedError,
    AgentPair,
    AlreadyExistsError,
    AppendEventResponse,
    AsyncSessionsClient,
    AuthorKey,
    ChangeType,
    Event,
    ExternalConversation,
    FailedPreconditionError,
    FieldViolation,
    FindOrCreateParticipantResponse,
    InvalidArgumentError,
    Member,
    NotFoundError,
    Participant,
    Reason,
    Session,
    SessionsClient,
    TetherError,
)
from tether.v1 import session_service_pb2


def open_direct_session(client: SessionsClient, agent: str, external_user: str) -> Session:
    user: FindOrCreateParticipantResponse = client.find_or_create_participant(
        parent="namespaces/default",
        kind=Participant.KIND_USER,
        external_id=external_user,
        participant=Participant(display_name="Ada"),
    )
    found = client.find_or_create_session(
        parent="namespaces/default",
        external_conversation=ExternalConversation(agent=agent, channel="slack", conversation_id="C042"),
        session=Session(kind=Session.KIND_DIRECT, user=user.participant.name, display_name="Support"),
    )
    session: Session = found.session
    if found.created:
        client.record_activity(name=session.name, activity_time=datetime.now(UTC))
    return session


def rename(client: SessionsClient, name: str, display_name: str) -> Session | None:
    try:
        current = client.get_session(name=name)
        return client.update_session(
            session=Session(name=current.name, display_name=display_name, etag=current.etag),
            update_mask=["display_name"],
        )
    except NotFoundError as error:
        if error.reason == Reason.SESSION_NOT_FOUND:
            return None
        raise
    except InvalidArgumentError as error:
        bad: list[str] = [violation.field for violation in error.violations]
        first: FieldViolation | None = error.violations[0] if error.violations else None
        print(bad, first.description if first else "")
        raise
    except TetherError as error:
        code: grpc.StatusCode = error.code
        print(code.name, error.reason, error.metadata.get("resource_name", ""))
        raise


def group_members(client: SessionsClient, agent: str, users: list[str]) -> list[Member.Role.ValueType]:
    group = client.create_session(
        parent="namespaces/default",
        session=Session(kind=Session.KIND_GROUP, agent=agent, group_name="ops"),
    )
    for user in users:
        try:
            client.add_member(parent=group.name, member=Member(participant=user, role=Member.ROLE_MEMBER))
        except (AlreadyExistsError, FailedPreconditionError):
            continue
    return [member.role for member in client.list_members(parent=group.name)]


def direct_sessions(client: SessionsClient) -> list[str]:
    sessions = client.list_sessions(parent="namespaces/default", filter='kind = "DIRECT"', page_size=50)
    page = client.list_sessions_page(parent="namespaces/default", page_size=1)
    return [session.name for session in sessions] + [page.next_page_token]


def incoming_message(client: SessionsClient, agent: str, user_id: str, text: str) -> int:
    content = struct_pb2.Struct()
    content.update({"role": "user", "text": text})
    try:
        appended: AppendEventResponse = client.append_event(
            parent="namespaces/default",
            external_conversation=ExternalConversation(agent=agent, channel="slack", conversation_id="C042"),
            session=Session(kind=Session.KIND_GROUP, group_name="ops"),
            author_key=AuthorKey(kind=Participant.KIND_USER, external_id=user_id),
            event=Event(content=content, invocation_id="turn-1"),
            expected_last_sequence=0,
        )
    except AbortedError:
        return -1
    sequence: int = appended.event.sequence
    print(appended.session_created, appended.author_created, appended.session.event_count)
    name = appended.session.name
    last: list[Event] = list(client.list_events(parent=name, page_size=20, newest_first=True))
    page = client.list_events_page(parent=name, filter=f"sequence > {sequence}")
    purged = client.purge_events(parent=name, filter="*")
    client.delete_event(name=appended.event.name)
    return len(last) + len(page.events) + purged.purge_count


async def reply(client: AsyncSessionsClient, session: str, agent: str) -> list[str]:
    appended = await client.append_event(parent=session, event=Event(author=agent, branch="root.planner"))
    event: Event = await client.get_event(name=appended.event.name)
    print(event.create_time.ToDatetime(), event.labels.get("lang", ""))
    return [e.author async for e in client.list_events(parent=session, filter=f'author = "{agent}"')]


async def pair_agents(client: AsyncSessionsClient, first: str, second: str) -> str:
    found = await client.find_or_create_session(
        parent="namespaces/default", agent_pair=AgentPair(agent=first, peer_agent=second)
    )
    batch = await client.batch_get_sessions(parent="namespaces/default", names=[found.session.name])
    kinds: list[Session.Kind.ValueType] = [session.kind for session in batch.sessions]
    print(kinds == [Session.KIND_AGENT_TO_AGENT])
    async for participant in client.list_participants(parent="namespaces/default", filter="kind = AGENT"):
        print(participant.display_name, participant.kind == Participant.KIND_AGENT)
    return found.session.name


async def watch(client: AsyncSessionsClient) -> int:
    revision = 0
    async for change in client.watch_sessions(parent="namespaces/default"):
        kind: ChangeType.ValueType = change.type
        if kind == ChangeType.CHANGE_TYPE_DELETED:
            return change.revision
        revision = change.revision
    return revision


async def main() -> None:
    async with AsyncSessionsClient("127.0.0.1:50051", token="secret", timeout=5.0) as client:
        try:
            session = await client.get_session(name="namespaces/default/sessions/s1")
            print(session.display_name, session.member_count, session.create_time.ToDatetime())
        except NotFoundError as error:
            print(error.code is grpc.StatusCode.NOT_FOUND, error.reason)
    with SessionsClient(token="secret") as sync_client:
        request = session_service_pb2.GetSessionRequest(name="namespaces/default/sessions/s1")
        print(request.name, rename(sync_client, request.name, "Renamed"))


if __name__ == "__main__":
    asyncio.run(main())
