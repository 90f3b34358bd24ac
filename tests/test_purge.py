"""PurgeSessions (AIP-165) through the server: a dry run counts and samples, `force`
removes exactly the matches (soft-deleted ones too) with their members."""

from __future__ import annotations

import pytest

from tether.client import (
    InvalidArgumentError,
    Member,
    NotFoundError,
    Participant,
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
        with pytest.raises(NotFoundError):
            client.get_session(name=name)
    assert client.get_session(name=kept).name == kept
    assert client.get_participant(name=user).name == user  # participants stay
    assert client.purge_sessions(parent=parent, filter="*").purge_count == 1


def test_purge_needs_a_filter_and_a_namespace(client: SessionsClient, parent: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.purge_sessions(parent=parent, filter="")
    assert [v.field for v in info.value.violations] == ["filter"]
    with pytest.raises(InvalidArgumentError) as bad:
        client.purge_sessions(parent=parent, filter="kind = NOPE")
    assert bad.value.reason == "INVALID_FILTER"
    with pytest.raises(NotFoundError):
        client.purge_sessions(parent="namespaces/no-such-namespace", filter="*")
