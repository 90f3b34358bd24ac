"""Typed Python client for `tether.v1.SessionService`.

`SessionsClient` (blocking) and `AsyncSessionsClient` (asyncio) have one method per RPC
with keyword arguments; failures raise `TetherError` subclasses. The message types
callers pass and get back are re-exported here, so `tether.v1` rarely needs importing.

    from tether.client import Participant, SessionsClient

    with SessionsClient(token="...") as client:
        agent = client.create_participant(
            parent="namespaces/default", participant=Participant(kind=Participant.KIND_AGENT)
        )
"""

from tether.client._async import AsyncSessionsClient
from tether.client._common import ChannelOptions, FieldMaskLike, Metadata, TimestampLike
from tether.client._sync import SessionsClient
from tether.client.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    Reason,
    ResourceExhaustedError,
    TetherError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from tether.v1.event_pb2 import Event
from tether.v1.namespace_pb2 import Namespace
from tether.v1.participant_pb2 import Participant
from tether.v1.session_pb2 import Member, Session
from tether.v1.session_service_pb2 import (
    AppendEventRequest,
    AppendEventResponse,
    BatchGetSessionsResponse,
    FindOrCreateParticipantResponse,
    FindOrCreateSessionRequest,
    FindOrCreateSessionResponse,
    ListEventsResponse,
    ListMembersResponse,
    ListNamespacesResponse,
    ListParticipantsResponse,
    ListSessionsResponse,
    PurgeEventsResponse,
    PurgeSessionsResponse,
    WatchSessionsResponse,
)

ExternalConversation = FindOrCreateSessionRequest.ExternalConversation
"""The `external_conversation=` key of `find_or_create_session`: agent, channel, conversation id."""
AgentPair = FindOrCreateSessionRequest.AgentPair
"""The `agent_pair=` key of `find_or_create_session`: two agents, in either order."""
AuthorKey = AppendEventRequest.AuthorKey
"""The `author_key=` of `append_event`: the author found or created by kind and external id."""
ChangeType = WatchSessionsResponse.ChangeType
"""What a `WatchSessionsResponse` reports: CHANGE_TYPE_CREATED, ..._UPDATED, and so on."""

__all__ = [
    "AbortedError",
    "AgentPair",
    "AlreadyExistsError",
    "AppendEventRequest",
    "AppendEventResponse",
    "AsyncSessionsClient",
    "AuthorKey",
    "BatchGetSessionsResponse",
    "ChangeType",
    "ChannelOptions",
    "DeadlineExceededError",
    "Event",
    "ExternalConversation",
    "FailedPreconditionError",
    "FieldMaskLike",
    "FieldViolation",
    "FindOrCreateParticipantResponse",
    "FindOrCreateSessionRequest",
    "FindOrCreateSessionResponse",
    "InternalError",
    "InvalidArgumentError",
    "ListEventsResponse",
    "ListMembersResponse",
    "ListNamespacesResponse",
    "ListParticipantsResponse",
    "ListSessionsResponse",
    "Member",
    "Metadata",
    "Namespace",
    "NotFoundError",
    "OutOfRangeError",
    "Participant",
    "PermissionDeniedError",
    "PurgeEventsResponse",
    "PurgeSessionsResponse",
    "Reason",
    "ResourceExhaustedError",
    "Session",
    "SessionsClient",
    "TetherError",
    "TimestampLike",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchSessionsResponse",
]
