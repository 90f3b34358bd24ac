"""Managed resources: only system and admin principals may set `managed`, or update,
delete, undelete or change the membership of a managed session or participant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.errors import expect_error
from tests.support.security import Credential, write_auth_file
from tests.support.server import ServerFactory
from tether.client import (
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
)

NS = "default"
PARENT = f"namespaces/{NS}"


@pytest.fixture
def clients(server_factory: ServerFactory, tmp_path: Path) -> Iterator[dict[str, SessionsClient]]:
    """A writer and a system principal of one server with an auth file."""
    writer = Credential.new("svc-writer", "writer", [NS])
    system = Credential.new("svc-system", "system", [NS])
    auth_file = write_auth_file(tmp_path / "auth.toml", [writer, system])
    server = server_factory(env={"TETHER_AUTH_FILE": str(auth_file)})
    made = {
        "writer": SessionsClient(server.target, token=writer.token),
        "system": SessionsClient(server.target, token=system.token),
    }
    yield made
    for client in made.values():
        client.close()


def _refused(call: Callable[[], object]) -> None:
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, Reason.MANAGED_RESOURCE):
        call()


def test_only_system_sets_managed(clients: dict[str, SessionsClient]) -> None:
    writer, system = clients["writer"], clients["system"]
    agent = Participant(kind=Participant.KIND_AGENT, managed=True)
    _refused(lambda: writer.create_participant(parent=PARENT, participant=agent))
    _refused(
        lambda: writer.find_or_create_participant(
            parent=PARENT, kind=Participant.KIND_AGENT, external_id="bot", participant=agent
        )
    )
    managed = system.create_participant(parent=PARENT, participant=agent)
    assert managed.managed
    plain = writer.create_participant(parent=PARENT, participant=Participant(kind=Participant.KIND_AGENT))
    _refused(lambda: writer.update_participant(participant=Participant(name=plain.name, managed=True)))
    _refused(
        lambda: writer.create_session(
            parent=PARENT, session=Session(kind=Session.KIND_TRIGGER, agent=plain.name, managed=True)
        )
    )


def test_writers_cannot_change_managed_resources(clients: dict[str, SessionsClient]) -> None:
    writer, system = clients["writer"], clients["system"]
    bot = system.create_participant(
        parent=PARENT, participant=Participant(kind=Participant.KIND_AGENT, managed=True)
    )
    user = writer.create_participant(parent=PARENT, participant=Participant(kind=Participant.KIND_USER))
    session = system.create_session(
        parent=PARENT, session=Session(kind=Session.KIND_DIRECT, agent=bot.name, user=user.name, managed=True)
    )
    guest = writer.create_participant(parent=PARENT, participant=Participant(kind=Participant.KIND_USER)).name

    _refused(lambda: writer.update_participant(participant=Participant(name=bot.name, display_name="x")))
    _refused(lambda: writer.delete_participant(name=bot.name))
    _refused(lambda: writer.update_session(session=Session(name=session.name, display_name="x")))
    _refused(lambda: writer.delete_session(name=session.name))
    _refused(lambda: writer.add_member(parent=session.name, member=Member(participant=guest)))
    member_name = f"{session.name}/members/{user.name.rsplit('/', 1)[1]}"
    _refused(lambda: writer.update_member(member=Member(name=member_name, role=Member.ROLE_OWNER)))
    # Nothing changed.
    assert system.get_session(name=session.name).member_count == 2
    assert system.get_participant(name=bot.name).display_name == ""

    # Reads and activity stay open to writers.
    assert writer.get_session(name=session.name).managed
    assert writer.record_activity(name=session.name).name == session.name

    # A system principal may do all of it.
    system.add_member(parent=session.name, member=Member(participant=guest))
    system.update_session(session=Session(name=session.name, display_name="ok"))
    deleted = system.delete_session(name=session.name)
    _refused(lambda: writer.undelete_session(name=session.name))
    assert system.undelete_session(name=session.name, etag=deleted.etag).display_name == "ok"


def test_managed_participant_membership(clients: dict[str, SessionsClient]) -> None:
    writer, system = clients["writer"], clients["system"]
    agent = writer.create_participant(
        parent=PARENT, participant=Participant(kind=Participant.KIND_AGENT)
    ).name
    session = writer.create_session(parent=PARENT, session=Session(kind=Session.KIND_GROUP, agent=agent)).name
    vip = system.create_participant(
        parent=PARENT, participant=Participant(kind=Participant.KIND_USER, managed=True)
    ).name
    _refused(lambda: writer.add_member(parent=session, member=Member(participant=vip)))
    added = system.add_member(parent=session, member=Member(participant=vip))
    _refused(lambda: writer.remove_member(name=added.name))
    system.remove_member(name=added.name)
