"""One way for tests to expect a failed call: its gRPC code, its ErrorInfo reason and, for bad
input, exactly which fields were named.

    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.get_session(name=missing)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.kind"]):
        client.create_session(parent=parent, session=Session(agent=agent))

It takes the typed client's `TetherError`s and the raw `grpc.RpcError`s of hand-made stubs (whose
rich status, in the `grpc-status-details-bin` trailer, is decoded by the client's own code).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc

from tether.client import TetherError
from tether.client.errors import from_rpc_error


class CaughtError:
    """What `expect_error` caught: `value` is the typed error (as with `pytest.raises`), and
    `rpc_error` the raw `grpc.RpcError` when a raw stub raised it."""

    value: TetherError
    rpc_error: grpc.RpcError | None = None


@contextmanager
def expect_error(
    code: grpc.StatusCode, reason: str, *, fields: Iterable[str] | None = None
) -> Iterator[CaughtError]:
    """Fail unless the block raises an RPC error with this code and reason (`""` for errors
    that carry no ErrorInfo, e.g. from the transport) and, when `fields` is given, names exactly
    these fields in its field violations (in any order; a field named twice counts twice)."""
    caught = CaughtError()
    try:
        yield caught
    except TetherError as error:
        caught.value = error
    except grpc.RpcError as error:
        caught.value = from_rpc_error(error)
        caught.rpc_error = error
    else:
        raise AssertionError(f"expected {code.name} {reason}, but the call succeeded")
    got = caught.value
    assert (got.code, got.reason) == (code, reason), f"expected {code.name} {reason}, got {got}"
    if fields is not None:
        expected = sorted(fields)
        named = Counter(violation.field for violation in got.violations)
        assert named == Counter(expected), f"expected violations of {expected}, got {got.violations}"
