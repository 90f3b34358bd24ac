"""Mistakes a caller makes, each of which `mypy --strict` must report against the installed
wheel (tests/test_typing.py). Each line ending in `# expect: CODE` must get exactly that
error code, and no other line any; the repo's own ruff and mypy skip this file."""

from __future__ import annotations

import grpc

from tether.client import (
    AsyncSessionsClient,
    Member,
    NotFoundError,
    Participant,
    Session,
    SessionsClient,
)


def mistakes(client: SessionsClient) -> None:
    # The kind as a string, not the enum value.
    Session(kind="KIND_DIRECT")  # expect: arg-type
    # A misspelt field.
    Session(display_nmae="Support")  # expect: call-arg
    # A session kind where a participant kind is wanted.
    client.find_or_create_participant(parent="namespaces/default", kind=Session.KIND_DIRECT, external_id="u1")  # expect: arg-type
    # A participant kind where a member role is wanted.
    Member(participant="namespaces/default/participants/p1", role=Participant.KIND_USER)  # expect: arg-type
    # The client takes keyword arguments only.
    client.get_session("namespaces/default/sessions/s1")  # expect: call-arg
    # A misspelt attribute of a response.
    found = client.find_or_create_participant(parent="namespaces/default", kind=Participant.KIND_USER, external_id="u1")
    print(found.participant.display_nmae)  # expect: attr-defined
    # A field of the wrong type.
    created: str = found.created  # expect: assignment
    print(created)
    # A misspelt field of the listed messages.
    for session in client.list_sessions(parent="namespaces/default"):
        print(session.user_id)  # expect: attr-defined
    try:
        client.delete_session(name="namespaces/default/sessions/s1")
    except NotFoundError as error:
        # A misspelt error attribute, and a status code compared with a string.
        print(error.resaon)  # expect: attr-defined
        print(error.code == "NOT_FOUND")  # expect: comparison-overlap
        print(error.code == grpc.StatusCode.NOT_FOUND)


async def async_mistakes(client: AsyncSessionsClient) -> None:
    # A forgotten await: the coroutine has no `name`.
    session = client.get_session(name="namespaces/default/sessions/s1")
    print(session.name)  # expect: attr-defined
    # A blocking-style for over an async iterator.
    for participant in client.list_participants(parent="namespaces/default"):  # expect: attr-defined
        print(participant)
