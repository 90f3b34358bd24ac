"""Namespaces: the default one, standard methods, and DeleteNamespace with force."""

from __future__ import annotations

import uuid

import pytest

from tether.client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    Namespace,
    NotFoundError,
    Participant,
    Session,
    SessionsClient,
)


def test_default_namespace_exists(client: SessionsClient) -> None:
    default = client.get_namespace(name="namespaces/default")
    assert default.name == "namespaces/default"
    assert default.uid
    assert default.etag


def test_create_get_list_delete(client: SessionsClient) -> None:
    ns_id = f"ns-{uuid.uuid4().hex[:8]}"
    created = client.create_namespace(
        namespace_id=ns_id, namespace=Namespace(display_name="Team", labels={"a": "b"})
    )
    assert created.name == f"namespaces/{ns_id}"
    assert created.display_name == "Team"
    assert client.get_namespace(name=created.name) == created
    assert created.name in [n.name for n in client.list_namespaces(page_size=1)]
    with pytest.raises(AlreadyExistsError):
        client.create_namespace(namespace_id=ns_id)
    client.delete_namespace(name=created.name)
    with pytest.raises(NotFoundError):
        client.get_namespace(name=created.name)


def test_validate_only_creates_nothing(client: SessionsClient) -> None:
    ns_id = f"ns-{uuid.uuid4().hex[:8]}"
    answer = client.create_namespace(namespace_id=ns_id, validate_only=True)
    assert answer.name == f"namespaces/{ns_id}"
    with pytest.raises(NotFoundError):
        client.get_namespace(name=answer.name)


def test_bad_namespace_id(client: SessionsClient) -> None:
    for bad in ("", "UPPER", "-lead", "a" * 64, "with_underscore"):
        with pytest.raises(InvalidArgumentError) as info:
            client.create_namespace(namespace_id=bad)
        assert [v.field for v in info.value.violations] == ["namespace_id"]
    with pytest.raises(InvalidArgumentError):
        client.get_namespace(name="namespace/x")


def test_delete_non_empty_needs_force(client: SessionsClient) -> None:
    ns = client.create_namespace(namespace_id=f"ns-{uuid.uuid4().hex[:8]}").name
    agent = client.create_participant(parent=ns, participant=Participant(kind=Participant.KIND_AGENT)).name
    session = client.create_session(parent=ns, session=Session(kind=Session.KIND_TRIGGER, agent=agent)).name
    with pytest.raises(FailedPreconditionError) as info:
        client.delete_namespace(name=ns)
    assert info.value.reason == "NAMESPACE_NOT_EMPTY"
    assert client.get_session(name=session).name == session
    client.delete_namespace(name=ns, force=True)
    with pytest.raises(NotFoundError):
        client.get_session(name=session)
