"""Small setups that several test modules share."""

from __future__ import annotations

from tether.client import Participant, Session, SessionsClient


def new_trigger_session(client: SessionsClient, parent: str = "namespaces/default") -> Session:
    """A TRIGGER session of a new agent: the cheapest live session to call."""
    agent = client.create_participant(
        parent=parent, participant=Participant(kind=Participant.KIND_AGENT)
    ).name
    return client.create_session(parent=parent, session=Session(kind=Session.KIND_TRIGGER, agent=agent))
