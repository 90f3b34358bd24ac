"""What the blocking and the asyncio client share: channel settings, call defaults,
conversions of friendly argument types into request fields, and watch backoff."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from datetime import datetime
from time import monotonic
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from tether.client.errors import from_rpc_error
from tether.v1 import event_pb2, session_pb2, session_service_pb2

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)
ItemT = TypeVar("ItemT")


class Page(Protocol):
    """A List response: what the page iterators need of it."""

    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=Page)

Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]
"""Extra per-call metadata: (key, value) pairs; `-bin` keys take bytes."""
ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]
"""Extra gRPC channel options; they override the client's own."""
FieldMaskLike: TypeAlias = Sequence[str] | field_mask_pb2.FieldMask
"""A FieldMask, or its paths (a single string may hold comma-separated paths)."""
TimestampLike: TypeAlias = datetime | timestamp_pb2.Timestamp
"""A Timestamp, or a timezone-aware datetime."""

DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_TIMEOUT: Final = 10.0
SERVICE_NAME: Final = "tether.v1.SessionService"

# gRPC itself retries by this policy, but only before a call has received a response:
# a watch stream that already delivered changes is resumed by the client's own loop.
RETRY_POLICY: Final = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# A server that stops cancels (CANCELLED, grpc/grpc#41785) the calls it had received but
# not yet handed to a handler, and a server cancels a call whose handler outlived the
# shutdown grace, which may have had its effect. So CANCELLED is retried only for the
# calls that are safe to repeat (`repeatable_methods`).
REPEATABLE_RETRY_POLICY: Final = {**RETRY_POLICY, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}


def repeatable_methods() -> list[str]:
    """The unary SessionService methods whose repeat has no second effect: reads,
    RecordActivity (it moves a time to a maximum) and every call with a `request_id`
    (the client always sends one, and the server answers a repeat with the first result)."""
    service = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"]
    return sorted(
        method.name
        for method in service.methods
        if not method.server_streaming
        and (
            method.name.startswith(("Get", "List", "BatchGet"))
            or method.name == "RecordActivity"
            or "request_id" in method.input_type.fields_by_name
        )
    )


# waitForReady: while no server answers at the target (one restarting, or another taking
# over its port), a call waits for one within its deadline instead of failing at once.
SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE_NAME, "method": name} for name in repeatable_methods()],
                "waitForReady": True,
                "retryPolicy": REPEATABLE_RETRY_POLICY,
            },
            {"name": [{"service": SERVICE_NAME}], "waitForReady": True, "retryPolicy": RETRY_POLICY},
        ]
    }
)

# Watch reconnects: the first is immediate (a restarted server or another replica is
# usually there at once), later ones back off with full jitter. When the server has
# been unreachable this long (seconds) since the stream broke, the watch gives up
# with UnavailableError rather than hang forever. A stream that stayed open for
# WATCH_HEALTHY_AFTER seconds had reached a server, so its failure starts a new count.
WATCH_GIVE_UP_AFTER: Final = 60.0
# The initial metadata key that holds the revision a watch stream starts after.
REVISION_METADATA: Final = "tether-revision"
WATCH_HEALTHY_AFTER: Final = 30.0
WATCH_INITIAL_BACKOFF: Final = 0.1
WATCH_MAX_BACKOFF: Final = 5.0


def channel_options(*, retry: bool, extra: ChannelOptions) -> list[tuple[str, Any]]:
    """Channel options: the retry service config (or retries off), then the caller's."""
    own: list[tuple[str, Any]] = (
        [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]
        if retry
        else [("grpc.enable_retries", 0)]
    )
    overridden = {key for key, _ in extra}
    return [option for option in own if option[0] not in overridden] + list(extra)


def channel_credentials(
    *,
    tls: bool | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel.

    TLS is on when `tls` is true or any certificate option is given; a client key and
    certificate chain (mutual TLS) come together.
    """
    certificate_options = (root_certificates, private_key, certificate_chain)
    wants_certificates = any(option is not None for option in certificate_options)
    if tls is False and wants_certificates:
        raise ValueError("certificate options need TLS; do not pass tls=False with them")
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain must be given together (mutual TLS)")
    if not (tls or wants_certificates):
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


class CallSettings:
    """A client's per-call defaults: the deadline and the metadata sent on every call."""

    def __init__(self, *, token: str | None, timeout: float | None) -> None:
        # Plain metadata rather than call credentials, which gRPC only sends over TLS:
        # a token must also work on a plaintext loopback channel.
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout = timeout

    def timeout(self, override: float | None) -> float | None:
        """The deadline of a unary call: the per-call override, else the client default."""
        return self._timeout if override is None else override

    def metadata(self, extra: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
        """The authorization metadata followed by the caller's."""
        return self._metadata + tuple(extra or ())


def new_request_id(request_id: str) -> str:
    """The caller's request id, else a fresh UUID (AIP-155).

    gRPC may retry a creating call whose first attempt reached the server; a request id
    makes the retry answer what the first attempt created instead of creating twice.
    """
    return request_id or str(uuid.uuid4())


def to_field_mask(value: FieldMaskLike | None) -> field_mask_pb2.FieldMask | None:
    """A FieldMask from a FieldMask, a sequence of paths, or one comma-separated string."""
    if value is None or isinstance(value, field_mask_pb2.FieldMask):
        return value
    paths = value.split(",") if isinstance(value, str) else value
    return field_mask_pb2.FieldMask(paths=[path.strip() for path in paths])


def to_timestamp(value: TimestampLike | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp from a Timestamp or a timezone-aware datetime."""
    if not isinstance(value, datetime):
        return value
    if value.utcoffset() is None:
        # A naive datetime is ambiguous (local time or UTC?); refuse rather than guess.
        raise ValueError("datetime arguments must be timezone-aware, e.g. datetime.now(UTC)")
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def find_or_create_session_request(
    *,
    parent: str,
    external_conversation: session_service_pb2.FindOrCreateSessionRequest.ExternalConversation | None,
    agent_pair: session_service_pb2.FindOrCreateSessionRequest.AgentPair | None,
    session: session_pb2.Session | None,
    undelete_if_deleted: bool,
    request_id: str,
) -> session_service_pb2.FindOrCreateSessionRequest:
    """The request, with exactly one key of the `key` oneof set."""
    if (external_conversation is None) == (agent_pair is None):
        raise ValueError("pass exactly one of external_conversation= or agent_pair=")
    return session_service_pb2.FindOrCreateSessionRequest(
        parent=parent,
        external_conversation=external_conversation,
        agent_pair=agent_pair,
        session=session,
        undelete_if_deleted=undelete_if_deleted,
        request_id=new_request_id(request_id),
    )


def append_event_request(
    *,
    parent: str,
    event: event_pb2.Event | None,
    event_id: str,
    external_conversation: session_service_pb2.FindOrCreateSessionRequest.ExternalConversation | None,
    agent_pair: session_service_pb2.FindOrCreateSessionRequest.AgentPair | None,
    session: session_pb2.Session | None,
    author_key: session_service_pb2.AppendEventRequest.AuthorKey | None,
    expected_last_sequence: int | None,
    request_id: str,
) -> session_service_pb2.AppendEventRequest:
    """The request, with at most one key of the `session_key` oneof set (none: `parent`
    names the session) and `expected_last_sequence` present only when given."""
    if external_conversation is not None and agent_pair is not None:
        raise ValueError("pass at most one of external_conversation= or agent_pair=")
    request = session_service_pb2.AppendEventRequest(
        parent=parent,
        external_conversation=external_conversation,
        agent_pair=agent_pair,
        session=session,
        event_id=event_id,
        event=event,
        author_key=author_key,
        request_id=new_request_id(request_id),
    )
    if expected_last_sequence is not None:
        # A proto3 optional: 0 ("no event yet") differs from unset ("don't check").
        request.expected_last_sequence = expected_last_sequence
    return request


def events_order_by(*, order_by: str, newest_first: bool) -> str:
    """ListEvents' `order_by`: the caller's, or `sequence desc` for `newest_first`."""
    if not newest_first:
        return order_by
    if order_by:
        raise ValueError("pass newest_first=True or order_by=, not both")
    return "sequence desc"


class WatchResumer:
    """Where a watch is and whether to reopen it; the sync and async loops only do I/O."""

    def __init__(
        self, *, parent: str, filter: str, start_revision: int, read_mask: Sequence[str] | None = None
    ) -> None:
        self._parent = parent
        self._filter = filter
        self._read_mask = None if read_mask is None else field_mask_pb2.FieldMask(paths=list(read_mask))
        self.revision = start_revision
        self.failures = 0
        self._opened_at = 0.0
        self._broken_since = 0.0

    def request(self) -> session_service_pb2.WatchSessionsRequest:
        """The request that (re)opens the stream just after the last revision seen."""
        self._opened_at = monotonic()
        return session_service_pb2.WatchSessionsRequest(
            parent=self._parent, filter=self._filter, start_revision=self.revision, read_mask=self._read_mask
        )

    def opened(self, initial_metadata: Any) -> None:
        """Record where the server started the stream (`tether-revision`): a watch "from
        now" that breaks before its first change resumes from there, not from a later now."""
        for key, value in initial_metadata or ():
            if key == REVISION_METADATA and self.revision == 0:
                self.revision = int(value)

    def seen(self, change: session_service_pb2.WatchSessionsResponse) -> None:
        """Record a delivered change: a later reopen resumes after it."""
        self.revision = change.revision
        self.failures = 0

    def failed(self, error: grpc.RpcError) -> float:
        """Seconds to wait before reopening after `error`; raises the typed error instead
        when it is not UNAVAILABLE or the server stayed away too long."""
        typed = from_rpc_error(error)
        # CANCELLED here is never the caller's (closing the iterator is not an RpcError):
        # a stopping server cancels the calls that had not reached a handler yet.
        if typed.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            raise typed from error
        now = monotonic()
        if now - self._opened_at >= WATCH_HEALTHY_AFTER:
            self.failures = 0
        self.failures += 1
        if self.failures == 1:
            self._broken_since = now
            return 0.0
        if now - self._broken_since > WATCH_GIVE_UP_AFTER:
            raise typed from error
        ceiling = min(WATCH_MAX_BACKOFF, WATCH_INITIAL_BACKOFF * 2 ** (self.failures - 2))
        return random.uniform(0.0, ceiling)
