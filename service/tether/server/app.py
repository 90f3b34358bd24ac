"""The server assembly: gRPC server, SessionService, health, reflection, lifecycle.

`serve(settings)` is what `tether serve` runs: migrate (unless told not to),
bind, log `serving` with the bound `address` (port 0 picks a free port), run
until SIGTERM/SIGINT, stop as below and return 0. `TetherServer` is the same
without the signal handling, for embedding and in-process tests.

Stopping (SIGTERM or SIGINT), the way a load balancer expects:

1. `stopping`: health turns NOT_SERVING at once (for good), the health monitor
   and the sweeper stop;
2. drain: for `drain_seconds` (`shutdown_drain`; default 0 on a loopback listen
   address, else 5) every call is still answered normally, so that a balancer
   that health-checks the server, or an endpoint update, moves traffic away
   first;
3. `closing`: the port closes and every connection gets GOAWAY (grpc.aio
   `server.stop`); health Watch streams end with UNAVAILABLE; calls in flight
   get `shutdown_grace` seconds to finish, then are cancelled;
4. the database pools are released, `stopped` is logged, and the process ends
   at once (`exit_process`: no interpreter teardown, which took 0.5-1.8 s, and
   no waiting for work stuck in a database driver thread).

Why the drain matters: gRPC C-core cancels (status CANCELLED) the calls that
have reached the server but not yet a handler when `server.stop` starts
(grpc/grpc#41785); under load there always are some. The shipped client retries
those where a repeat is harmless (`tether.client._common.SERVICE_CONFIG`); other
clients see them unless a balancer has moved traffic away first.

Whatever the database does, the process ends `STOP_MARGIN_SECONDS` after drain
plus grace at the latest (`stop_timed_out`, exit code 1). A second SIGTERM or
SIGINT while stopping ends it now: `stopped_now`, exit code 128 + the signal
number (143 for SIGTERM, 130 for SIGINT).

One process binds its port exclusively (`grpc.so_reuseport` 0: a port already
in use is a startup error, never silently shared). With `workers` > 1 the
supervisor in `tether.server.workers` runs `serve` in N processes that bind one
port with SO_REUSEPORT, and the kernel spreads connections over them.

Health (`grpc.health.v1.Health`) answers for "" and "tether.v1.SessionService":
SERVING while the database answers, NOT_SERVING while it does not (a monitor
pings it every `health_interval` seconds on its own connection, so a busy pool
does not make the server look dead), NOT_SERVING for good once shutdown starts.

Expiry and retention: a sweeper task runs `tether.server.db.sweeper.sweep`
every `sweep_interval` seconds (0: never), logs `sweep` with its counts when it
changed anything and `sweep_failed` when it could not (and tries again next
time). Replicas take turns through a database lock (see the sweeper module).

WatchSessions: one change hub per process (`tether.server.watch.ChangeHub`) wakes the
watch streams; stopping ends them with UNAVAILABLE (`SERVER_SHUTTING_DOWN`) once the
drain is over, so their clients resume on another replica. The sweeper task also
compacts the change log (`TETHER_WATCH_RETENTION`, `TETHER_WATCH_MAX_CHANGES`).

Security: every SessionService call passes the call guard (`interceptors.CallGuard`)
(`tether.server.policy`): bearer tokens from the auth file, namespace
isolation, roles. SIGHUP re-reads the auth file (`auth_reloaded`, or
`auth_reload_failed` keeping the old principals). With TLS files configured
the port speaks TLS, with a client CA mutual TLS. `serve` refuses (exit 2) a
malformed auth file or unreadable TLS files, and a listen address beyond
loopback with neither authentication nor TLS unless `allow_insecure`.

Messages: requests up to 4 MiB (`MAX_RECEIVE_MESSAGE_BYTES`, gRPC's usual
limit; the contract's largest field, session_state, is 256 KiB); larger ones
fail with RESOURCE_EXHAUSTED before reaching a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server import auth
from tether.server.config import Settings, is_loopback, is_sqlite_memory, split_host_port
from tether.server.db.base import Database, open_database
from tether.server.db.changes import compact
from tether.server.db.engine import create_engine, ping
from tether.server.db.migrate import migrate
from tether.server.db.sweeper import sweep
from tether.server.interceptors import CallGuard
from tether.server.log import get_logger
from tether.server.policy import AccessPolicy
from tether.server.service import build_servicer
from tether.server.watch import ChangeHub
from tether.v1 import session_service_pb2

SESSION_SERVICE = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"]
SERVICE_NAME: str = SESSION_SERVICE.full_name
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
# protoc --include_source_info --descriptor_set_out, next to the generated code:
# gives reflection the proto comments (`grpcurl describe`), which generated code lacks.
DESCRIPTOR_SET_RESOURCE = ("tether.v1", "descriptor_set.binpb")
# Seconds beyond drain plus grace after which a stopping server ends itself, whatever it waits for.
STOP_MARGIN_SECONDS = 5.0


def server_options(settings: Settings) -> tuple[tuple[str, int], ...]:
    """The gRPC server options: SO_REUSEPORT only for the worker processes of `--workers N`."""
    return (
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        # Without this, a second server on the same fixed port would bind "successfully"
        # and silently share the traffic. Workers share on purpose; their supervisor
        # checked that the port was free (`tether.server.workers`).
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (client certificates required when a
    client CA is set); None for plaintext. OSError when a file cannot be read."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def load_source_info() -> dict[str, descriptor_pb2.SourceCodeInfo]:
    """Proto comments by file name, from `DESCRIPTOR_SET_RESOURCE`; empty when it is absent."""
    package, name = DESCRIPTOR_SET_RESOURCE
    resource = importlib.resources.files(package) / name
    if not resource.is_file():
        return {}
    files = descriptor_pb2.FileDescriptorSet.FromString(resource.read_bytes()).file
    return {f.name: f.source_code_info for f in files if f.HasField("source_code_info")}


def _service_of_method(symbol: str) -> str:
    """`pkg.Service.Method` -> `pkg.Service`; any other symbol as it is. protobuf's pool
    does not index methods, so `grpcurl describe pkg.Service.Method` would be NOT_FOUND."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileContainingSymbol(symbol)
    except KeyError:
        service, _, method = symbol.rpartition(".")
        with contextlib.suppress(KeyError):
            if method in pool.FindServiceByName(service).methods_by_name:
                return service
    return symbol


async def _methods_as_services(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request.HasField("file_containing_symbol"):
            request.file_containing_symbol = _service_of_method(request.file_containing_symbol)
        yield request


class CommentedReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """Server reflection whose file descriptors carry their comments.

    The descriptors themselves still come from the running code (so they always
    match what is served); only `source_code_info` is added from the descriptor set.
    """

    def __init__(self, service_names: tuple[str, ...], source_info: Mapping[str, Any]) -> None:
        super().__init__(service_names, pool=descriptor_pool.Default())
        self._source_info = source_info

    async def ServerReflectionInfo(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        requests = _methods_as_services(request_iterator)
        async for response in super().ServerReflectionInfo(requests, context):
            if self._source_info and response.HasField("file_descriptor_response"):
                protos = response.file_descriptor_response.file_descriptor_proto
                protos[:] = [self._with_comments(serialized) for serialized in protos]
            yield response

    def _with_comments(self, serialized: bytes) -> bytes:
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        info = self._source_info.get(proto.name)
        if info is None:
            return serialized
        proto.source_code_info.CopyFrom(info)
        return proto.SerializeToString()


class ClosingHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health service, whose Watch streams end (UNAVAILABLE) once `close()` is
    called: an open Watch (a balancer's, a client's health check) would otherwise hold the
    server's stop for the whole grace period and then be cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802
        watch = asyncio.ensure_future(super().Watch(request, context))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((watch, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        if not watch.cancelled():
            watch.result()  # the stream ended on its own (or failed: raise that)
            return
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")


class TetherServer:
    """One running server: `await start()` returns the bound address; `await stop(grace)`."""

    def __init__(self, settings: Settings, authenticator: auth.Authenticator | None = None) -> None:
        self.settings = settings
        self.authenticator = authenticator or auth.Authenticator.from_file(settings.auth_file)
        self.address = ""
        self._log = get_logger()
        self._db: Database | None = None
        self._ping_engine: AsyncEngine | None = None
        self._server: grpc.aio.Server | None = None
        self._health = ClosingHealthServicer()
        self._monitor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._hub: ChangeHub | None = None
        self._healthy = False

    async def start(self) -> str:
        """Migrate if configured, bind, start serving; returns `host:port` as bound."""
        settings = self.settings
        self._db = await open_database(settings)
        if settings.migrate_on_start:
            # An in-memory SQLite database exists only in the serving engine: migrate it there.
            memory = is_sqlite_memory(settings.database_url)
            await migrate(settings.database_url, engine=self._db.engine if memory else None)
        self._ping_engine = create_engine(settings, pool_size=1)
        self._hub = ChangeHub(self._db, settings.database_url, settings.watch_poll_interval)
        self._server = self._build_server(self._db)
        host, _ = split_host_port(settings.listen)
        credentials = server_credentials(settings)
        if credentials is None:
            port = self._server.add_insecure_port(settings.listen)
        else:
            port = self._server.add_secure_port(settings.listen, credentials)
        await self._set_health(await ping(self._ping_engine))
        await self._server.start()
        self._hub.start()
        self._monitor = asyncio.create_task(self._watch_database(), name="tether-health-monitor")
        if settings.sweep_interval > 0:
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="tether-sweeper")
        self.address = f"{host}:{port}"
        self._log.info(
            "serving",
            address=self.address,
            tls=settings.tls,
            mutual_tls=settings.tls_client_ca_file is not None,
            authentication=self.authenticator.enabled,
        )
        return self.address

    def _build_server(self, db: Database) -> grpc.aio.Server:
        server = grpc.aio.server(options=server_options(self.settings))
        assert self._hub is not None
        guard = CallGuard(AccessPolicy(self.authenticator), on_write=self._hub.poke)
        servicer = build_servicer(db, self.settings, self._hub)
        server.add_generic_rpc_handlers((guard.service_handler(servicer, SESSION_SERVICE),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            CommentedReflectionServicer(services, load_source_info()), server
        )
        return server

    async def drain(self, seconds: float) -> None:
        """NOT_SERVING for good, then keep answering normally for `seconds` (see the module
        docstring: a balancer moves traffic away meanwhile)."""
        await self._health.enter_graceful_shutdown()
        for task in (self._monitor, self._sweeper):
            if task is not None:
                # A sweep cancelled mid-batch rolls that batch back; the next start redoes it.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, close the port (GOAWAY), let in-flight calls finish within `grace`
        seconds, then release the database."""
        await self.drain(0)
        self._health.close()
        grace = self.settings.shutdown_grace if grace is None else grace
        stopping = asyncio.ensure_future(self._server.stop(grace)) if self._server is not None else None
        if self._hub is not None:
            # Once the port is closed and GOAWAY sent (the stop's first step), end the watch
            # streams (UNAVAILABLE): their clients reopen on a new connection, i.e. another
            # replica or the restarted server, never on this one where gRPC would cancel the
            # call before it reached a handler.
            await asyncio.sleep(0)
            await self._hub.close()
        if stopping is not None:
            await stopping
        if self._db is not None:
            await self._db.close()
        if self._ping_engine is not None:
            await self._ping_engine.dispose()

    async def _set_health(self, healthy: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
        self._healthy = healthy

    async def _watch_database(self) -> None:
        """Flip health when the database stops or starts answering."""
        assert self._ping_engine is not None
        assert self._db is not None
        while True:
            await asyncio.sleep(self.settings.health_interval)
            healthy = await ping(self._ping_engine)
            if healthy == self._healthy:
                continue
            await self._set_health(healthy)
            if healthy:
                # Pooled connections from before the outage are likely dead: start afresh.
                await self._db.reset_connections()
                self._log.info("database_reachable")
            else:
                self._log.warning("database_unreachable")

    async def _sweep_periodically(self) -> None:
        """Expire and purge every `sweep_interval` seconds; an error is logged,
        never fatal: the next round tries again."""
        # The request pool, not one of its own: a sweep holds one connection
        # for one short batch at a time, and the pool size stays the budget.
        db = self._db
        assert db is not None
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                result = await sweep(db)
                compacted = await compact(db, self.settings.watch_retention, self.settings.watch_max_changes)
            except Exception as exc:  # the database may be down; the task must live on
                self._log.warning("sweep_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if result.total:
                assert self._hub is not None
                self._hub.poke()
                self._log.info("sweep", **result.counts(), contended=result.contended)
            if compacted:
                self._log.info("changes_compacted", changes=compacted)


async def serve(settings: Settings, on_serving: Callable[[str], None] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; 0 after a clean shutdown, 1 when it cannot
    start, 2 when its security configuration is refused. `on_serving(address)` is called
    once the server is serving (a worker process tells its supervisor)."""
    log = get_logger()
    for setting, detail in settings.not_enforced():
        log.warning("setting_not_enforced", setting=setting, detail=detail)
    authenticator = check_security(settings)
    if authenticator is None:
        return 2
    # Handlers first: a signal right after the `serving` line must not hit the default action.
    stopping = asyncio.Event()
    signals: list[signal.Signals] = []

    def on_stop_signal(signum: signal.Signals) -> None:
        signals.append(signum)
        if stopping.is_set():
            exit_now(signum)  # the second one: the operator will not wait
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, authenticator.reload)
    server = TetherServer(settings, authenticator)
    try:
        started = await unless_stopped(server.start(), stopping)
    except Exception as exc:
        log.error("startup_failed", error=f"{type(exc).__name__}: {exc}")
        await server.stop(0)
        return 1
    if started and on_serving is not None:
        on_serving(server.address)
    await stopping.wait()
    drain = settings.drain_seconds if started else 0.0
    grace = settings.shutdown_grace
    log.info(
        "stopping",
        signal=signals[0].name if signals else None,
        drain_seconds=drain,
        grace_seconds=grace,
    )
    exit_after(drain + grace + STOP_MARGIN_SECONDS)
    await server.drain(drain)
    log.info("closing", grace_seconds=grace)
    await server.stop(grace)
    log.info("stopped")
    return 0


def exit_process(code: int) -> NoReturn:
    """End the process now with `code`, output flushed. After a stop nothing is left to clean
    up: interpreter teardown only costs time, and a statement stuck in a database driver's
    thread (aiosqlite's cannot be interrupted) would hold the exit for good."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def exit_now(signum: signal.Signals) -> NoReturn:
    """A second stop signal: end the process without waiting; exit code 128 + signal number."""
    code = 128 + signum
    get_logger().warning("stopped_now", signal=signum.name, exit_code=code)
    exit_process(code)


def exit_after(seconds: float) -> None:
    """End the process (`stop_timed_out`, exit code 1) if it still runs `seconds` from now.
    A daemon thread: it fires even when the event loop waits on something that never ends."""

    def expire() -> None:
        get_logger().error("stop_timed_out", seconds=seconds, exit_code=1)
        exit_process(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


async def unless_stopped(work: Coroutine[Any, Any, object], stopping: asyncio.Event) -> bool:
    """Await `work` (e.g. `server.start()`, a slow migration), abandoned when `stopping` is
    set first; True when it finished. Its exception, if any, propagates."""
    task = asyncio.create_task(work)
    signalled = asyncio.create_task(stopping.wait())
    await asyncio.wait((task, signalled), return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return True


def check_security(settings: Settings) -> auth.Authenticator | None:
    """The authenticator, after logging how the server is protected; None (after logging
    why) when the configuration is refused."""
    log = get_logger()
    problem = settings.exposure_problem()
    if problem is not None:
        log.error("insecure_listen_refused", error=problem)
        return None
    try:
        authenticator = auth.Authenticator.from_file(settings.auth_file)
        server_credentials(settings)  # unreadable PEM files fail here, not after migrating
    except (auth.AuthFileError, OSError) as exc:
        log.error("invalid_configuration", error=str(exc))
        return None
    if authenticator.enabled:
        log.info("auth_enabled", principals=authenticator.principal_count, path=str(settings.auth_file))
    elif is_loopback(settings.listen):
        log.info(
            "auth_disabled_loopback",
            principal=auth.LOCAL_ADMIN.id,
            detail="no auth file: every caller is an admin",
        )
    else:
        log.warning(
            "auth_disabled", principal=auth.LOCAL_ADMIN.id, detail="no auth file: every caller is an admin"
        )
    if not settings.tls and not authenticator.enabled and not is_loopback(settings.listen):
        log.warning(
            "insecure_listen_allowed",
            address=settings.listen,
            detail="--allow-insecure: no authentication, no TLS",
        )
    return authenticator
