"""PurgeSessions (AIP-165) through the server: a dry run counts and samples, `force`
removes exactly the matches (soft-deleted ones too) with their members."""

from __future__ import annotations

import grpc

from tests.support.errors import expect_error
from tether.client import (
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
)


def test_purge_dry_run_then_force(client: SessionsClient, parent: str) -> None:
    agent = client.create_participant(
        parent=parent, participant=Participant(kind=Participant.KIND_AGENT)
    ).name
    user = client.create_participant(parent=parent, participant=Participant(kind=Participant.KIND_USER)).name
    doomed = [
        client.create_session(
            parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent, labels={"purge": "yes"})
        ).name
        for _ in range(3)
    ]
    client.add_member(parent=doomed[0], member=Member(participant=user))
    client.delete_session(name=doomed[1])  # soft-deleted sessions match too
    kept = client.create_session(parent=parent, session=Session(kind=Session.KIND_GROUP, agent=agent)).name

    dry = client.purge_sessions(parent=parent, filter="labels.purge = yes")
    assert dry.purge_count == 3
    assert sorted(dry.purge_sample) == sorted(doomed)
    assert client.get_session(name=doomed[0]).name == doomed[0]  # nothing deleted

    done = client.purge_sessions(parent=parent, filter="labels.purge = yes", force=True)
    assert done.purge_count == 3
    for name in doomed:
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
            client.get_session(name=name)
    assert client.get_session(name=kept).name == kept
    assert client.get_participant(name=user).name == user  # participants stay
    assert client.purge_sessions(parent=parent, filter="*").purge_count == 1


def test_purge_needs_a_filter_and_a_namespace(client: SessionsClient, parent: str) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["filter"]):
        client.purge_sessions(parent=parent, filter="")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_FILTER, fields=["filter"]):
        client.purge_sessions(parent=parent, filter="kind = NOPE")
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
        client.purge_sessions(parent="namespaces/no-such-namespace", filter="*")
