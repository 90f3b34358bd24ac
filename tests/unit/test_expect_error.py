"""The tests' `expect_error` helper: it passes only on the expected code, reason and fields."""

from __future__ import annotations

import grpc
import pytest

from tests.support.errors import expect_error
from tests.unit.test_client import rich_status
from tether.client import FieldViolation, InvalidArgumentError, NotFoundError, Reason

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _bad_kind() -> InvalidArgumentError:
    return InvalidArgumentError(
        "session.kind: required",
        reason=Reason.INVALID_ARGUMENT,
        violations=[FieldViolation("session.kind", "required")],
    )


def test_matching_error_passes_and_is_kept() -> None:
    error = _bad_kind()
    with expect_error(INVALID, Reason.INVALID_ARGUMENT, fields=["session.kind"]) as caught:
        raise error
    assert caught.value is error
    assert caught.rpc_error is None


@pytest.mark.parametrize(
    ("code", "reason", "fields"),
    [
        (grpc.StatusCode.NOT_FOUND, Reason.INVALID_ARGUMENT, None),
        (INVALID, Reason.IMMUTABLE_FIELD, None),
        (INVALID, Reason.INVALID_ARGUMENT, []),
        (INVALID, Reason.INVALID_ARGUMENT, ["session.kind", "session.kind"]),
        (INVALID, Reason.INVALID_ARGUMENT, ["session.agent"]),
    ],
    ids=["code", "reason", "no-fields", "field-twice", "other-field"],
)
def test_any_difference_fails(code: grpc.StatusCode, reason: str, fields: list[str] | None) -> None:
    with pytest.raises(AssertionError, match="expected"), expect_error(code, reason, fields=fields):
        raise _bad_kind()


def test_no_error_fails() -> None:
    with pytest.raises(AssertionError, match="the call succeeded"), expect_error(INVALID, ""):
        pass


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), expect_error(INVALID, Reason.INVALID_ARGUMENT):
        raise KeyError("not an RPC error")


def test_raw_rpc_error_is_decoded_from_its_trailer() -> None:
    trailers = rich_status(grpc.StatusCode.NOT_FOUND, "gone", "SESSION_NOT_FOUND")
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details="gone"
    )
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND) as caught:
        raise raw
    assert isinstance(caught.value, NotFoundError)
    assert caught.rpc_error is raw
