"""The call guard: access control, one log line per RPC, audit, and the error safety net.

`CallGuard.service_handler` builds the SessionService's method handlers from
its descriptor and wraps each handler's behaviour once, at registration, so
the wrapper sees the request and the outcome of every call, unary or
streaming. (A `grpc.aio.ServerInterceptor` would do the same through an
interceptor pipeline that runs several coroutines per call, on the hot path.)

- before the handler runs, `policy.AccessPolicy` authenticates the caller (bearer
  token), makes it the current principal (`auth.current_principal()`) and
  checks the method's rule: UNAUTHENTICATED, NOT_FOUND (a namespace the caller
  may not see) or PERMISSION_DENIED (role too low) stop the call there;
- `ApiError` becomes its status, message and rich details (AIP-193);
- a database exception that `errors.from_database_error` recognises becomes
  that error (UNAVAILABLE: safe to retry);
- anything else is a bug: logged with its traceback, answered with a generic
  INTERNAL that carries no SQL, no exception text and no stack.

A call whose write was refused by the revision order check of WatchSessions' change log
(SQLSTATE TX001, `errors.is_order_race`; the refused transaction was rolled back whole)
runs again at once, up to 8 times. After every mutating call the guard tells the process's
change hub (`on_write`), which wakes the watchers.

Then it logs `rpc` with `method`, `code` (the status code name), `principal`
and `duration_ms`, and for a mutating method an `audit` line with
`principal`, `method`, `resource` and `code`. Health and reflection are
registered unwrapped (no token needed). Nothing logged ever holds a token.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from tether.server import auth, errors, policy
from tether.server.log import get_logger

# Quoted: grpc's runtime classes are not subscriptable.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
UnaryBehaviour: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"
StreamBehaviour: TypeAlias = "Callable[[Any, Context], AsyncIterator[Any]]"

# Method handler factories by (request streaming, response streaming).
_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
# Codes that mean the server (not the caller) has a problem.
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(context: Context) -> grpc.StatusCode:
    """The code the call ended with; OK when the handler set none."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    # grpcio's aio context reports the raw integer.
    return _CODES_BY_VALUE.get(code, grpc.StatusCode.OK) if isinstance(code, int) else grpc.StatusCode.OK


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not parse (see `_tolerant`)."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A deserializer that never raises: gRPC would answer UNKNOWN with the decoder's
    text; the wrapper answers INVALID_ARGUMENT instead."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or upb's depth and size limits
            return _Undecodable(type(exc).__name__)

    return deserialize


def _reject_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.invalid_argument(
            [errors.FieldViolation("request", "the request bytes are not a valid message of this method")]
        )


# How often a call refused by the revision order check (`errors.is_order_race`) runs
# again: each try is a new transaction with a newer id, so a second try almost always
# succeeds; past this the caller gets ABORTED (CONCURRENT_CHANGE), safe to retry.
_ORDER_RACE_TRIES = 8


def _mutating(method: str) -> bool:
    rule = policy.RULES_BY_PATH.get(method)
    return rule is None or rule.mutating


async def _run(behaviour: UnaryBehaviour, request: Any, context: Context) -> Any:
    """`behaviour(request, context)`, run again when its write lost the revision order race
    (the refused transaction was rolled back whole, so running the call again is safe)."""
    for _ in range(_ORDER_RACE_TRIES - 1):
        try:
            return await behaviour(request, context)
        except Exception as exc:
            if not errors.is_order_race(exc):
                raise
    return await behaviour(request, context)


class CallGuard:
    """Guards, logs and audits every RPC and turns exceptions into statuses; see the module docstring."""

    def __init__(
        self, access: policy.AccessPolicy | None = None, on_write: Callable[[], None] | None = None
    ) -> None:
        # Told after every mutating call (WatchSessions' wake-ups, `tether.server.watch`).
        self._on_write = on_write
        # Without an access policy: no auth file, every caller is the local admin.
        self._access = access or policy.AccessPolicy(auth.Authenticator(None, None))
        # Bound now (after logging is configured), not lazily on every call.
        self._log = get_logger().bind()
        # The `rpc` and `audit` lines are INFO: below that level skip their fields too.
        self._info = self._log.is_enabled_for(logging.INFO)

    def service_handler(self, servicer: object, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
        """The handler of every method of `service`, served by `servicer`'s method of
        the same name, each wrapped by this guard."""
        handlers = {}
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            handlers[method.name] = _FACTORIES[(method.client_streaming, method.server_streaming)](
                self._wrap(getattr(servicer, method.name), path),
                request_deserializer=_tolerant(GetMessageClass(method.input_type).FromString),
                response_serializer=GetMessageClass(method.output_type).SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)

    def _wrap(self, behaviour: Any, method: str) -> Any:
        if inspect.isasyncgenfunction(behaviour):
            return self._wrap_stream(behaviour, method)
        if inspect.iscoroutinefunction(behaviour):
            return self._wrap_unary(behaviour, method)
        # A synchronous behaviour would run unguarded in grpc's thread pool: refuse it.
        return self._wrap_unary(self._unguardable, method)

    def _wrap_unary(self, behaviour: UnaryBehaviour, method: str) -> UnaryBehaviour:
        """For unary responses, and for streaming ones written with `context.write`."""

        # Decided once, at registration: only mutating methods wake the watchers.
        on_write = self._on_write if _mutating(method) else None

        async def wrapped(request: Any, context: Context) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            principal: auth.Principal | None = None
            response = None
            try:
                principal = self._authenticate(context)
                _reject_undecodable(request)
                self._access.authorize(method, request, principal)
                response = await _run(behaviour, request, context)
                code = _status_code(context)
                return response
            except BaseException as exc:
                code = self._code_of(exc, context)
                await self._answer(exc, context, method)
            finally:
                if on_write is not None:
                    on_write()
                self._log_call(method, code, start, principal, request, response)

        return wrapped

    def _wrap_stream(self, behaviour: StreamBehaviour, method: str) -> StreamBehaviour:
        """For streaming responses produced by an async generator."""

        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            principal: auth.Principal | None = None
            try:
                principal = self._authenticate(context)
                _reject_undecodable(request)
                self._access.authorize(method, request, principal)
                async for response in behaviour(request, context):
                    yield response
                code = _status_code(context)
            except BaseException as exc:
                code = self._code_of(exc, context)
                await self._answer(exc, context, method)
            finally:
                self._log_call(method, code, start, principal, request, None)

        return wrapped

    def _authenticate(self, context: Context) -> auth.Principal:
        """The caller's principal, made current for the handler (`auth.current_principal()`).

        Each RPC runs in its own asyncio task, so the context variable never
        leaks from one call into another.
        """
        principal = self._access.authenticate(context.invocation_metadata())
        auth.set_current_principal(principal)
        return principal

    @staticmethod
    async def _unguardable(request: Any, context: Context) -> NoReturn:
        raise errors.internal()

    def _code_of(self, exc: BaseException, context: Context) -> grpc.StatusCode:
        if isinstance(exc, grpc.aio.AbortError):
            return _status_code(context)
        if not isinstance(exc, Exception):
            # CancelledError, or GeneratorExit when a stream is closed early.
            return grpc.StatusCode.CANCELLED
        return self._to_api_error(exc).code

    def _to_api_error(self, exc: BaseException) -> errors.ApiError:
        if isinstance(exc, errors.ApiError):
            return exc
        if isinstance(exc, Exception):
            mapped = errors.from_database_error(exc)
            if mapped is not None:
                return mapped
        return errors.internal()

    async def _answer(self, exc: BaseException, context: Context, method: str) -> NoReturn:
        """Re-raise what gRPC handles itself; abort with the right status otherwise."""
        if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
            raise exc
        err = self._to_api_error(exc)
        if not isinstance(exc, errors.ApiError):
            if err.code in _SERVER_FAULTS:
                self._log.error("rpc_failed", method=method, exc_info=exc)
            else:
                self._log.warning("rpc_database_error", method=method, error=type(exc).__name__)
        await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())

    def _log_call(
        self,
        method: str,
        code: grpc.StatusCode,
        start: float,
        principal: auth.Principal | None,
        request: Any,
        response: Any,
    ) -> None:
        """The `rpc` line of every call, and the `audit` line of a mutating one."""
        if not self._info and code not in _SERVER_FAULTS:
            return
        duration_ms = round((time.perf_counter() - start) * 1000, 3)
        principal_id = principal.id if principal else None
        log = self._log.error if code in _SERVER_FAULTS else self._log.info
        log("rpc", method=method, code=code.name, principal=principal_id, duration_ms=duration_ms)
        if _mutating(method):
            resource = policy.audited_resource(method, request, response)
            self._log.info("audit", principal=principal_id, method=method, resource=resource, code=code.name)
