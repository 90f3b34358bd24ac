"""Etags (AIP-154): every write moves the etag, activity alone does not; a write with a stale
etag is ABORTED, and the check is atomic with the write (of two racing writers with one etag,
one wins)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest

from tests.support.errors import expect_error
from tether.client import (
    AbortedError,
    AsyncSessionsClient,
    Member,
    Namespace,
    Participant,
    Reason,
    Session,
    SessionsClient,
)


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> Participant:
    return client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_AGENT))


def _assert_mismatch(call: Callable[[], object]) -> None:
    with expect_error(grpc.StatusCode.ABORTED, Reason.ETAG_MISMATCH) as info:
        call()
    assert info.value.metadata["etag"]


def test_session_writes_check_the_etag(client: SessionsClient, parent: str, agent: Participant) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent.name))
    fresh = client.update_session(session=Session(name=s.name, display_name="a", etag=s.etag))
    assert fresh.etag != s.etag
    _assert_mismatch(
        lambda: client.update_session(session=Session(name=s.name, display_name="b", etag=s.etag))
    )
    _assert_mismatch(lambda: client.update_session(session=Session(name=s.name, etag='"garbage"')))
    _assert_mismatch(lambda: client.delete_session(name=s.name, etag=s.etag))
    assert client.get_session(name=s.name).display_name == "a"  # nothing written
    deleted = client.delete_session(name=s.name, etag=fresh.etag)
    _assert_mismatch(lambda: client.undelete_session(name=s.name, etag=fresh.etag))
    restored = client.undelete_session(name=s.name, etag=deleted.etag)
    # Without an etag, writes are unconditional.
    assert client.update_session(session=Session(name=s.name, display_name="c")).etag != restored.etag


def test_activity_leaves_the_etag_alone(client: SessionsClient, parent: str, agent: Participant) -> None:
    """A message landing (RecordActivity) does not refuse a guarded update of the conversation."""
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent.name))
    moved = client.record_activity(name=s.name)
    assert moved.last_activity_time.ToDatetime() > s.last_activity_time.ToDatetime()
    assert moved.etag == s.etag
    assert client.get_session(name=s.name).etag == s.etag
    labelled = client.update_session(session=Session(name=s.name, labels={"stage": "triage"}, etag=s.etag))
    assert labelled.etag != s.etag
    assert dict(labelled.labels) == {"stage": "triage"}


def test_participant_writes_check_the_etag(client: SessionsClient, agent: Participant) -> None:
    _assert_mismatch(
        lambda: client.update_participant(participant=Participant(name=agent.name, etag='"00000000-1"'))
    )
    updated = client.update_participant(
        participant=Participant(name=agent.name, display_name="x", etag=agent.etag)
    )
    _assert_mismatch(lambda: client.delete_participant(name=agent.name, etag=agent.etag))
    deleted = client.delete_participant(name=agent.name, etag=updated.etag)
    _assert_mismatch(lambda: client.undelete_participant(name=agent.name, etag=updated.etag))
    client.undelete_participant(name=agent.name, etag=deleted.etag)


def test_member_and_namespace_writes_check_the_etag(
    client: SessionsClient, parent: str, agent: Participant
) -> None:
    s = client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent.name))
    (member,) = client.list_members(parent=s.name)
    changed = client.update_member(
        member=Member(name=member.name, role=Member.ROLE_OBSERVER, etag=member.etag)
    )
    _assert_mismatch(
        lambda: client.update_member(
            member=Member(name=member.name, role=Member.ROLE_OWNER, etag=member.etag)
        )
    )
    assert (
        client.update_member(member=Member(name=member.name, role=Member.ROLE_OWNER, etag=changed.etag)).role
        == 1
    )
    ns: Namespace = client.create_namespace(namespace_id=f"e-{uuid.uuid4().hex[:8]}")
    _assert_mismatch(lambda: client.delete_namespace(name=ns.name, etag='"00000000-9"'))
    client.delete_namespace(name=ns.name, etag=ns.etag)


async def test_racing_writers_with_one_etag_one_wins(
    aclient: AsyncSessionsClient, parent: str, agent: Participant
) -> None:
    s = await aclient.create_session(
        parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent.name)
    )
    writers = [
        aclient.update_session(session=Session(name=s.name, display_name=f"w{i}", etag=s.etag))
        for i in range(16)
    ]
    results = await asyncio.gather(*writers, return_exceptions=True)
    winners = [r for r in results if isinstance(r, Session)]
    losers = [r for r in results if isinstance(r, AbortedError)]
    assert len(winners) == 1
    assert len(losers) == 15
    assert (await aclient.get_session(name=s.name)).display_name == winners[0].display_name
