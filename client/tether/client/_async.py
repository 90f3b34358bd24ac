"""The asyncio client."""

# `timeout` parameters are gRPC deadlines handed to the call, as in grpc.aio itself.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from tether.client._common import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    CallSettings,
    ChannelOptions,
    FieldMaskLike,
    ItemT,
    Metadata,
    PageT,
    RequestT,
    ResponseT,
    TimestampLike,
    WatchResumer,
    append_event_request,
    channel_credentials,
    channel_options,
    events_order_by,
    find_or_create_session_request,
    new_request_id,
    to_field_mask,
    to_timestamp,
)
from tether.client.errors import from_rpc_error
from tether.v1 import session_service_pb2 as pb
from tether.v1 import session_service_pb2_grpc
from tether.v1.event_pb2 import Event
from tether.v1.namespace_pb2 import Namespace
from tether.v1.participant_pb2 import Participant
from tether.v1.session_pb2 import Member, Session

if TYPE_CHECKING:
    from tether.v1.session_service_pb2_grpc import SessionServiceAsyncStub


class AsyncSessionsClient:
    """Asyncio client for `tether.v1.SessionService`, the twin of `SessionsClient`.

    Unary methods are coroutines; `list_*` and `watch_sessions` return async iterators.
    Create it inside the event loop that uses it.

        async with AsyncSessionsClient("127.0.0.1:50051", token="...") as client:
            session = await client.get_session(name="namespaces/default/sessions/s1")
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        tls: bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: bool = True,
        options: ChannelOptions = (),
    ) -> None:
        """Open a channel to `target`.

        Args:
            target: the server address, `host:port`.
            token: bearer token sent as `authorization` metadata on every call.
            root_certificates: PEM CA certificates to verify the server (TLS).
            private_key: PEM client key, for mutual TLS (with `certificate_chain`).
            certificate_chain: PEM client certificate chain, for mutual TLS.
            tls: force TLS on (with system roots) or off; by default TLS is on when a
                certificate option is given.
            timeout: default deadline in seconds of unary calls; None for none.
            retry: ride over restarts and outages (gRPC service config): a call waits
                for a server to answer at `target` within its deadline (wait-for-ready),
                UNAVAILABLE is retried with exponential backoff, and so is CANCELLED for
                the calls that are safe to repeat (reads, RecordActivity and the creating
                calls, which carry a request id). False: every call fails at once.
            options: extra gRPC channel options.
        """
        credentials = channel_credentials(
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        channel_opts = channel_options(retry=retry, extra=options)
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, channel_opts)
        else:
            channel = grpc.aio.secure_channel(target, credentials, channel_opts)
        self._setup(channel, CallSettings(token=token, timeout=timeout), owns_channel=True)

    @classmethod
    def from_channel(
        cls, channel: grpc.aio.Channel, *, token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Self:
        """A client over an existing channel, which stays the caller's to close."""
        client = cls.__new__(cls)
        client._setup(channel, CallSettings(token=token, timeout=timeout), owns_channel=False)
        return client

    def _setup(self, channel: grpc.aio.Channel, settings: CallSettings, *, owns_channel: bool) -> None:
        self._channel = channel
        self._settings = settings
        self._owns_channel = owns_channel
        self._stub: SessionServiceAsyncStub = session_service_pb2_grpc.SessionServiceStub(channel)

    async def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> ResponseT:
        try:
            return await rpc(
                request, timeout=self._settings.timeout(timeout), metadata=self._settings.metadata(metadata)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    # Namespaces

    async def create_namespace(
        self,
        *,
        namespace_id: str,
        namespace: Namespace | None = None,
        request_id: str = "",
        validate_only: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Namespace:
        """Create the namespace `namespaces/{namespace_id}`. Admin only."""
        request = pb.CreateNamespaceRequest(
            namespace_id=namespace_id,
            namespace=namespace,
            request_id=new_request_id(request_id),
            validate_only=validate_only,
        )
        return await self._call(self._stub.CreateNamespace, request, timeout, metadata)

    async def get_namespace(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Namespace:
        """Get a namespace."""
        return await self._call(self._stub.GetNamespace, pb.GetNamespaceRequest(name=name), timeout, metadata)

    def list_namespaces(
        self, *, page_size: int = 0, timeout: float | None = None, metadata: Metadata | None = None
    ) -> AsyncIterator[Namespace]:
        """Iterate over the namespaces the caller may see, by name, fetching pages lazily."""
        return _follow_pages(
            lambda token: self.list_namespaces_page(
                page_size=page_size, page_token=token, timeout=timeout, metadata=metadata
            ),
            lambda page: page.namespaces,
        )

    async def list_namespaces_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListNamespacesResponse:
        """One page of `list_namespaces`."""
        request = pb.ListNamespacesRequest(page_size=page_size, page_token=page_token)
        return await self._call(self._stub.ListNamespaces, request, timeout, metadata)

    async def delete_namespace(
        self,
        *,
        name: str,
        force: bool = False,
        etag: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """Delete a namespace for good; a non-empty one needs `force`. Admin only."""
        request = pb.DeleteNamespaceRequest(name=name, force=force, etag=etag)
        await self._call(self._stub.DeleteNamespace, request, timeout, metadata)

    # Participants

    async def create_participant(
        self,
        *,
        parent: str,
        participant_id: str = "",
        participant: Participant,
        request_id: str = "",
        validate_only: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Participant:
        """Create a participant (a user or an agent; `participant.kind` is required)."""
        request = pb.CreateParticipantRequest(
            parent=parent,
            participant_id=participant_id,
            participant=participant,
            request_id=new_request_id(request_id),
            validate_only=validate_only,
        )
        return await self._call(self._stub.CreateParticipant, request, timeout, metadata)

    async def get_participant(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Participant:
        """Get a participant, also a soft-deleted one."""
        return await self._call(
            self._stub.GetParticipant, pb.GetParticipantRequest(name=name), timeout, metadata
        )

    def list_participants(
        self,
        *,
        parent: str,
        page_size: int = 0,
        filter: str = "",
        order_by: str = "",
        show_deleted: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Participant]:
        """Iterate over a namespace's participants, fetching pages lazily."""
        return _follow_pages(
            lambda token: self.list_participants_page(
                parent=parent,
                page_size=page_size,
                page_token=token,
                filter=filter,
                order_by=order_by,
                show_deleted=show_deleted,
                timeout=timeout,
                metadata=metadata,
            ),
            lambda page: page.participants,
        )

    async def list_participants_page(
        self,
        *,
        parent: str,
        page_size: int = 0,
        page_token: str = "",
        filter: str = "",
        order_by: str = "",
        show_deleted: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListParticipantsResponse:
        """One page of `list_participants`."""
        request = pb.ListParticipantsRequest(
            parent=parent,
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            order_by=order_by,
            show_deleted=show_deleted,
        )
        return await self._call(self._stub.ListParticipants, request, timeout, metadata)

    async def update_participant(
        self,
        *,
        participant: Participant,
        update_mask: FieldMaskLike | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Participant:
        """Update a participant; without `update_mask`, the fields set in `participant`."""
        request = pb.UpdateParticipantRequest(participant=participant, update_mask=to_field_mask(update_mask))
        return await self._call(self._stub.UpdateParticipant, request, timeout, metadata)

    async def delete_participant(
        self, *, name: str, etag: str = "", timeout: float | None = None, metadata: Metadata | None = None
    ) -> Participant:
        """Soft-delete a participant; returns it with `delete_time` set."""
        request = pb.DeleteParticipantRequest(name=name, etag=etag)
        return await self._call(self._stub.DeleteParticipant, request, timeout, metadata)

    async def undelete_participant(
        self, *, name: str, etag: str = "", timeout: float | None = None, metadata: Metadata | None = None
    ) -> Participant:
        """Restore a soft-deleted participant."""
        request = pb.UndeleteParticipantRequest(name=name, etag=etag)
        return await self._call(self._stub.UndeleteParticipant, request, timeout, metadata)

    async def find_or_create_participant(
        self,
        *,
        parent: str,
        kind: Participant.Kind.ValueType,
        external_id: str,
        participant: Participant | None = None,
        request_id: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.FindOrCreateParticipantResponse:
        """The live participant with this kind and external id, created from the
        `participant` template if there is none (atomic); `created` says which."""
        request = pb.FindOrCreateParticipantRequest(
            parent=parent,
            kind=kind,
            external_id=external_id,
            participant=participant,
            request_id=new_request_id(request_id),
        )
        return await self._call(self._stub.FindOrCreateParticipant, request, timeout, metadata)

    # Sessions

    async def create_session(
        self,
        *,
        parent: str,
        session_id: str = "",
        session: Session,
        request_id: str = "",
        validate_only: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Session:
        """Create a session (`session.kind` and `session.agent` are required)."""
        request = pb.CreateSessionRequest(
            parent=parent,
            session_id=session_id,
            session=session,
            request_id=new_request_id(request_id),
            validate_only=validate_only,
        )
        return await self._call(self._stub.CreateSession, request, timeout, metadata)

    async def get_session(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Session:
        """Get a session, also a soft-deleted one."""
        return await self._call(self._stub.GetSession, pb.GetSessionRequest(name=name), timeout, metadata)

    async def batch_get_sessions(
        self,
        *,
        parent: str,
        names: Sequence[str],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.BatchGetSessionsResponse:
        """Get several sessions in request order; NOT_FOUND unless all exist."""
        request = pb.BatchGetSessionsRequest(parent=parent, names=names)
        return await self._call(self._stub.BatchGetSessions, request, timeout, metadata)

    def list_sessions(
        self,
        *,
        parent: str,
        page_size: int = 0,
        filter: str = "",
        order_by: str = "",
        show_deleted: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Session]:
        """Iterate over a namespace's sessions (AIP-160 `filter`, `order_by`), fetching
        pages lazily."""
        return _follow_pages(
            lambda token: self.list_sessions_page(
                parent=parent,
                page_size=page_size,
                page_token=token,
                filter=filter,
                order_by=order_by,
                show_deleted=show_deleted,
                timeout=timeout,
                metadata=metadata,
            ),
            lambda page: page.sessions,
        )

    async def list_sessions_page(
        self,
        *,
        parent: str,
        page_size: int = 0,
        page_token: str = "",
        filter: str = "",
        order_by: str = "",
        show_deleted: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListSessionsResponse:
        """One page of `list_sessions`."""
        request = pb.ListSessionsRequest(
            parent=parent,
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            order_by=order_by,
            show_deleted=show_deleted,
        )
        return await self._call(self._stub.ListSessions, request, timeout, metadata)

    async def update_session(
        self,
        *,
        session: Session,
        update_mask: FieldMaskLike | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Session:
        """Update a session; without `update_mask`, the fields set in `session`."""
        request = pb.UpdateSessionRequest(session=session, update_mask=to_field_mask(update_mask))
        return await self._call(self._stub.UpdateSession, request, timeout, metadata)

    async def delete_session(
        self, *, name: str, etag: str = "", timeout: float | None = None, metadata: Metadata | None = None
    ) -> Session:
        """Soft-delete a session; returns it with `delete_time` and `purge_time` set."""
        request = pb.DeleteSessionRequest(name=name, etag=etag)
        return await self._call(self._stub.DeleteSession, request, timeout, metadata)

    async def undelete_session(
        self, *, name: str, etag: str = "", timeout: float | None = None, metadata: Metadata | None = None
    ) -> Session:
        """Restore a soft-deleted session."""
        request = pb.UndeleteSessionRequest(name=name, etag=etag)
        return await self._call(self._stub.UndeleteSession, request, timeout, metadata)

    async def purge_sessions(
        self,
        *,
        parent: str,
        filter: str,
        force: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.PurgeSessionsResponse:
        """Purge the sessions matching `filter` for good (`*`: all); without `force`
        only count them. Admin only."""
        request = pb.PurgeSessionsRequest(parent=parent, filter=filter, force=force)
        return await self._call(self._stub.PurgeSessions, request, timeout, metadata)

    async def find_or_create_session(
        self,
        *,
        parent: str,
        external_conversation: pb.FindOrCreateSessionRequest.ExternalConversation | None = None,
        agent_pair: pb.FindOrCreateSessionRequest.AgentPair | None = None,
        session: Session | None = None,
        undelete_if_deleted: bool = False,
        request_id: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.FindOrCreateSessionResponse:
        """The live session for a key, created from the `session` template if there is
        none (atomic); `created` says which. Pass exactly one key: `external_conversation`
        or `agent_pair`."""
        request = find_or_create_session_request(
            parent=parent,
            external_conversation=external_conversation,
            agent_pair=agent_pair,
            session=session,
            undelete_if_deleted=undelete_if_deleted,
            request_id=request_id,
        )
        return await self._call(self._stub.FindOrCreateSession, request, timeout, metadata)

    async def record_activity(
        self,
        *,
        name: str,
        activity_time: TimestampLike | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Session:
        """Move the session's `last_activity_time` forward (never back) to
        `activity_time`, default now."""
        request = pb.RecordActivityRequest(name=name, activity_time=to_timestamp(activity_time))
        return await self._call(self._stub.RecordActivity, request, timeout, metadata)

    # Members

    async def add_member(
        self,
        *,
        parent: str,
        member: Member,
        request_id: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Member:
        """Add a participant of the session's namespace to the session `parent`."""
        request = pb.AddMemberRequest(parent=parent, member=member, request_id=new_request_id(request_id))
        return await self._call(self._stub.AddMember, request, timeout, metadata)

    async def update_member(
        self,
        *,
        member: Member,
        update_mask: FieldMaskLike | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Member:
        """Change a member's role."""
        request = pb.UpdateMemberRequest(member=member, update_mask=to_field_mask(update_mask))
        return await self._call(self._stub.UpdateMember, request, timeout, metadata)

    async def remove_member(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        """Remove a member (not the session's agent, user or peer agent)."""
        await self._call(self._stub.RemoveMember, pb.RemoveMemberRequest(name=name), timeout, metadata)

    def list_members(
        self,
        *,
        parent: str,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Member]:
        """Iterate over a session's members in join order, fetching pages lazily."""
        return _follow_pages(
            lambda token: self.list_members_page(
                parent=parent, page_size=page_size, page_token=token, timeout=timeout, metadata=metadata
            ),
            lambda page: page.members,
        )

    async def list_members_page(
        self,
        *,
        parent: str,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListMembersResponse:
        """One page of `list_members`."""
        request = pb.ListMembersRequest(parent=parent, page_size=page_size, page_token=page_token)
        return await self._call(self._stub.ListMembers, request, timeout, metadata)

    # Events

    async def append_event(
        self,
        *,
        parent: str,
        event: Event | None = None,
        event_id: str = "",
        external_conversation: pb.FindOrCreateSessionRequest.ExternalConversation | None = None,
        agent_pair: pb.FindOrCreateSessionRequest.AgentPair | None = None,
        session: Session | None = None,
        author_key: pb.AppendEventRequest.AuthorKey | None = None,
        expected_last_sequence: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.AppendEventResponse:
        """Append `event` to a session's log: the chat hot path, one call per message.

        The session is `parent` (a session name), or, given one key
        (`external_conversation` or `agent_pair`), the one found or created in the
        namespace `parent` as `find_or_create_session` does, from the `session` template.
        The author is `event.author`, or found or created by `author_key`; neither: a
        system event. With `expected_last_sequence`, the append is refused (ABORTED)
        unless that is the session's last sequence (0: no event yet).
        """
        request = append_event_request(
            parent=parent,
            event=event,
            event_id=event_id,
            external_conversation=external_conversation,
            agent_pair=agent_pair,
            session=session,
            author_key=author_key,
            expected_last_sequence=expected_last_sequence,
            request_id=request_id,
        )
        return await self._call(self._stub.AppendEvent, request, timeout, metadata)

    async def get_event(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Event:
        """Get an event, also one of a soft-deleted session."""
        return await self._call(self._stub.GetEvent, pb.GetEventRequest(name=name), timeout, metadata)

    def list_events(
        self,
        *,
        parent: str,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        newest_first: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Event]:
        """Iterate over a session's events (AIP-160 `filter`) by `sequence`, oldest first,
        or newest first with `newest_first` (`order_by="sequence desc"`), fetching pages
        lazily."""
        order_by = events_order_by(order_by=order_by, newest_first=newest_first)
        return _follow_pages(
            lambda token: self.list_events_page(
                parent=parent,
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                metadata=metadata,
            ),
            lambda page: page.events,
        )

    async def list_events_page(
        self,
        *,
        parent: str,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
        newest_first: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListEventsResponse:
        """One page of `list_events`."""
        request = pb.ListEventsRequest(
            parent=parent,
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            order_by=events_order_by(order_by=order_by, newest_first=newest_first),
        )
        return await self._call(self._stub.ListEvents, request, timeout, metadata)

    async def delete_event(
        self, *, name: str, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        """Remove an event for good (a correction); its sequence is not reused."""
        await self._call(self._stub.DeleteEvent, pb.DeleteEventRequest(name=name), timeout, metadata)

    async def purge_events(
        self,
        *,
        parent: str,
        filter: str,
        force: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.PurgeEventsResponse:
        """Purge a session's events matching `filter` for good (`*`: all); without
        `force` only count them. Admin only."""
        request = pb.PurgeEventsRequest(parent=parent, filter=filter, force=force)
        return await self._call(self._stub.PurgeEvents, request, timeout, metadata)

    # Watch

    async def watch_sessions(
        self,
        *,
        parent: str,
        filter: str = "",
        start_revision: int = 0,
        read_mask: Sequence[str] | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.WatchSessionsResponse]:
        """Iterate over the changes to a namespace's sessions, without a deadline.

        Starts after `start_revision` (0: from now). Each change's `session` is the
        session as it was right after the change, without `session_state` unless
        `read_mask` asks for it (`["*"]`: every field; or a list of Session fields).
        `filter` is a ListSessions filter. When the stream breaks with UNAVAILABLE or CANCELLED (a
        server restart, a lost replica) it is reopened after the last revision
        delivered, with backoff, so no change is missed or repeated; other errors (e.g.
        OutOfRangeError for a compacted revision) are raised. Stop early
        with `break` or `aclose()`.
        """
        resumer = WatchResumer(
            parent=parent, filter=filter, start_revision=start_revision, read_mask=read_mask
        )
        while True:
            call = self._stub.WatchSessions(resumer.request(), metadata=self._settings.metadata(metadata))
            try:
                resumer.opened(await call.initial_metadata())
                async for change in call:
                    resumer.seen(change)
                    yield change
                return
            except grpc.RpcError as error:
                delay = resumer.failed(error)
            finally:
                call.cancel()
            await asyncio.sleep(delay)


async def _follow_pages(
    fetch: Callable[[str], Awaitable[PageT]], items: Callable[[PageT], Iterable[ItemT]]
) -> AsyncIterator[ItemT]:
    """The items of every page, fetching each page (by its token) only when needed."""
    token = ""
    while True:
        page = await fetch(token)
        for item in items(page):
            yield item
        token = page.next_page_token
        if not token:
            return
