"""Namespaces: the default one, standard methods, and DeleteNamespace with force."""

from __future__ import annotations

import uuid

import grpc

from tests.support.errors import expect_error
from tether.client import (
    Namespace,
    Participant,
    Reason,
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
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.NAMESPACE_ALREADY_EXISTS):
        client.create_namespace(namespace_id=ns_id)
    client.delete_namespace(name=created.name)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
        client.get_namespace(name=created.name)


def test_validate_only_creates_nothing(client: SessionsClient) -> None:
    ns_id = f"ns-{uuid.uuid4().hex[:8]}"
    answer = client.create_namespace(namespace_id=ns_id, validate_only=True)
    assert answer.name == f"namespaces/{ns_id}"
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
        client.get_namespace(name=answer.name)


def test_bad_namespace_id(client: SessionsClient) -> None:
    for bad in ("", "UPPER", "-lead", "a" * 64, "with_underscore"):
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["namespace_id"]):
            client.create_namespace(namespace_id=bad)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["name"]):
        client.get_namespace(name="namespace/x")


def test_delete_non_empty_needs_force(client: SessionsClient) -> None:
    ns = client.create_namespace(namespace_id=f"ns-{uuid.uuid4().hex[:8]}").name
    agent = client.create_participant(parent=ns, participant=Participant(kind=Participant.KIND_AGENT)).name
    session = client.create_session(parent=ns, session=Session(kind=Session.KIND_TRIGGER, agent=agent)).name
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.NAMESPACE_NOT_EMPTY):
        client.delete_namespace(name=ns)
    assert client.get_session(name=session).name == session
    client.delete_namespace(name=ns, force=True)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.get_session(name=session)
