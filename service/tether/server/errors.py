"""Errors: the one place where failures become gRPC statuses (AIP-193).

Domain code raises `ApiError`; the servicer wrapper turns it into a
`google.rpc.Status` with `ErrorInfo` (domain `tether`) and, for bad input,
`BadRequest` field violations. Database exceptions are mapped here too, so no
SQL or stack trace ever reaches a caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import exc as sa_exc

DOMAIN = "tether"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in proto names (e.g. `session.labels`) and why."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """An error meant for the caller: status code, ErrorInfo reason, message."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata))
        details = [info]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        packed = []
        for detail in details:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((STATUS_DETAILS_KEY, self.to_status().SerializeToString()),)


def invalid_argument(violations: Sequence[FieldViolation], reason: str = "INVALID_ARGUMENT") -> ApiError:
    """Bad input: names every bad field at once."""
    message = "; ".join(f"{v.field}: {v.description}" for v in violations) or "invalid argument"
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, violations=violations)


def bad_field(field_path: str, description: str, reason: str = "INVALID_ARGUMENT") -> ApiError:
    """Bad input in a single field."""
    violation = FieldViolation(field_path, description)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, reason, f"{field_path}: {description}", violations=[violation]
    )


def not_found(resource_name: str, what: str = "resource") -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{what.upper()}_NOT_FOUND",
        f"{what} {resource_name!r} not found",
        metadata={"resource_name": resource_name},
    )


def already_exists(resource_name: str, what: str = "resource", message: str | None = None) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"{what.upper()}_ALREADY_EXISTS",
        message or f"{what} {resource_name!r} already exists",
        metadata={"resource_name": resource_name},
    )


def failed_precondition(reason: str, message: str, **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata=metadata)


def aborted(reason: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, reason, message)


def unimplemented(method: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", message, metadata={"method": method})


def unavailable(message: str = "the database is unreachable; retry later") -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", message)


def internal() -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error; see the server log")


# SQLSTATE classes that mean "the database cannot be reached right now".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P")


def from_database_error(error: Exception) -> ApiError | None:
    """Map a database exception to an ApiError, or None when it is a bug.

    Constraint violations are mapped where the statement is issued (only the
    caller of the statement knows which resource collided); what reaches here
    is connectivity trouble (UNAVAILABLE, safe to retry) or a bug.
    """
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return unavailable()
        orig = error.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return unavailable()
        if isinstance(error, sa_exc.OperationalError):
            # SQLite "database is locked" after busy_timeout, disk I/O, or a
            # dropped PostgreSQL connection: transient from the caller's view.
            return unavailable()
    if isinstance(error, (ConnectionError, TimeoutError, OSError, sa_exc.TimeoutError)):
        return unavailable()
    return None
