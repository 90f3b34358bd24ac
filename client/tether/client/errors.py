"""Typed errors: every failed call raises a `TetherError` subclass chosen by status code.

The server sends a rich `google.rpc.Status` (AIP-193) in the `grpc-status-details-bin`
trailer; its `ErrorInfo` and `BadRequest` details become attributes, so callers branch on
`reason` or read `violations` without decoding protos themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Reason",
    "ResourceExhaustedError",
    "TetherError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_rpc_error",
]

STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


class Reason(StrEnum):
    """Every `ErrorInfo.reason` the server answers with (docs/errors.md has the table of
    codes and meanings). A `TetherError.reason` compares equal to these members:
    `if error.reason == Reason.SESSION_DELETED: ...`."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    IMMUTABLE_FIELD = "IMMUTABLE_FIELD"
    WRONG_PARTICIPANT_KIND = "WRONG_PARTICIPANT_KIND"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_ORDER_BY = "INVALID_ORDER_BY"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    SIZE_LIMIT_EXCEEDED = "SIZE_LIMIT_EXCEEDED"
    NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
    PARTICIPANT_NOT_FOUND = "PARTICIPANT_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    MEMBER_NOT_FOUND = "MEMBER_NOT_FOUND"
    EVENT_NOT_FOUND = "EVENT_NOT_FOUND"
    NAMESPACE_ALREADY_EXISTS = "NAMESPACE_ALREADY_EXISTS"
    PARTICIPANT_ALREADY_EXISTS = "PARTICIPANT_ALREADY_EXISTS"
    SESSION_ALREADY_EXISTS = "SESSION_ALREADY_EXISTS"
    MEMBER_ALREADY_EXISTS = "MEMBER_ALREADY_EXISTS"
    EVENT_ALREADY_EXISTS = "EVENT_ALREADY_EXISTS"
    EXTERNAL_ID_ALREADY_EXISTS = "EXTERNAL_ID_ALREADY_EXISTS"
    CONVERSATION_ALREADY_EXISTS = "CONVERSATION_ALREADY_EXISTS"
    SESSION_DELETED = "SESSION_DELETED"
    SESSION_DISABLED = "SESSION_DISABLED"
    PARTICIPANT_DELETED = "PARTICIPANT_DELETED"
    PARTICIPANT_DISABLED = "PARTICIPANT_DISABLED"
    AUTOMATIC_MEMBER = "AUTOMATIC_MEMBER"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    NAMESPACE_NOT_EMPTY = "NAMESPACE_NOT_EMPTY"
    TEMPLATE_MISMATCH = "TEMPLATE_MISMATCH"
    REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    STALE_SEQUENCE = "STALE_SEQUENCE"
    CONCURRENT_CHANGE = "CONCURRENT_CHANGE"
    REVISION_COMPACTED = "REVISION_COMPACTED"
    REVISION_AHEAD = "REVISION_AHEAD"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    MANAGED_RESOURCE = "MANAGED_RESOURCE"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (from `google.rpc.BadRequest`): its path and what is wrong."""

    field: str
    description: str


class TetherError(Exception):
    """A failed Tether call; the base of every error the clients raise.

    Attributes:
        code: the gRPC status code.
        message: the human-readable status message.
        reason: the `ErrorInfo` reason (UPPER_SNAKE, e.g. `SESSION_NOT_FOUND`), "" if absent.
        domain: the `ErrorInfo` domain (`tether` for errors from the server), "" if absent.
        metadata: the `ErrorInfo` metadata, e.g. `resource_name`.
        violations: the `BadRequest` field violations, for INVALID_ARGUMENT.

    The original `grpc.RpcError`, if any, is the exception's `__cause__`.
    """

    grpc_code: ClassVar[grpc.StatusCode | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: grpc.StatusCode = code or self.grpc_code or grpc.StatusCode.UNKNOWN
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: list[FieldViolation] = list(violations)

    def __str__(self) -> str:
        head = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{head}: {self.message}"


class InvalidArgumentError(TetherError):
    """Bad input; `violations` names every bad field."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TetherError):
    """The resource does not exist (or is in a namespace the caller may not see)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TetherError):
    """A resource with this name or key already exists."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(TetherError):
    """The resource is in the wrong state (disabled, deleted, wrong kind, request_id reuse)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(TetherError):
    """A concurrency conflict, e.g. a stale etag: re-read and try again."""

    grpc_code = grpc.StatusCode.ABORTED


class OutOfRangeError(TetherError):
    """Out of range, e.g. a watch resume point that was compacted away."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDeniedError(TetherError):
    """The caller may see the resource but not do this to it."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(TetherError):
    """No valid bearer token."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(TetherError):
    """A size limit was exceeded."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(TetherError):
    """The server or its database is unreachable; safe to retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(TetherError):
    """The call's deadline passed before it finished."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(TetherError):
    """The server does not implement this method."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(TetherError):
    """A server bug; the server log has the details."""

    grpc_code = grpc.StatusCode.INTERNAL


_BY_CODE: Final[dict[grpc.StatusCode, type[TetherError]]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnimplementedError,
        InternalError,
    )
    if cls.grpc_code is not None
}


def from_rpc_error(error: grpc.RpcError) -> TetherError:
    """The typed error for a failed call (sync or asyncio), with its rich status parsed."""
    code = _ask(error, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = str(_ask(error, "details") or "")
    status = _rich_status(error)
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldViolation] = []
    if status is not None:
        message = status.message or message
        info, violations = _unpack_details(status)
    cls = _BY_CODE.get(code, TetherError)
    return cls(
        message,
        code=code,
        reason=info.reason,
        domain=info.domain,
        metadata=info.metadata,
        violations=violations,
    )


def _ask(error: grpc.RpcError, accessor: str) -> Any:
    # Not every RpcError carries a status: grpc.aio.UsageError has no code() or details().
    method = getattr(error, accessor, None)
    return method() if callable(method) else None


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    # Sync errors give a tuple of pairs, asyncio ones a grpc.aio.Metadata; both iterate as pairs.
    pairs = cast(Iterable[tuple[str, str | bytes]], _ask(error, "trailing_metadata") or ())
    for key, value in pairs:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _unpack_details(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo, list[FieldViolation]]:
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
    return info, violations
