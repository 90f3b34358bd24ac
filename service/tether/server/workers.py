"""`tether serve --workers N` (N > 1): N server processes sharing one port.

One Python process serves on one core. With `workers` > 1 the `tether serve`
process becomes a supervisor that serves nothing itself:

1. once: the security checks (`check_security`: fail closed, auth file, TLS
   files), then the port: a fixed port must be free (a bind without
   SO_REUSEPORT, so that it never joins another server's SO_REUSEPORT group),
   port 0 becomes a concrete free port (a bind with SO_REUSEPORT to port 0);
   a socket bound to that port with SO_REUSEPORT (not listening, so it takes
   no connections) holds it until every worker is listening; then migrations
   (when `migrate_on_start`);
2. it starts N workers, each `python -m tether.server serve` with the settings
   in `WORKER_ENV` (not the flags: no password lands in a command line):
   the normal server (`tether.server.app.serve`) on the concrete address with
   `grpc.so_reuseport` 1, no migrations, and the sweeper in worker 0 only.
   Their log lines carry `worker=<index>`. A worker reports `<index> <address>`
   on an inherited pipe once it serves; when all have, the supervisor logs
   `serving` with the `address` and `workers` (each worker has logged its own
   `serving` line with the same address before);
3. it forwards SIGTERM/SIGINT (drain, then graceful stop: `tether.server.app`)
   and SIGHUP (auth file reload) to the workers; a worker still starting gets
   SIGHUP once it serves. A second SIGTERM/SIGINT is forwarded too, and the
   workers end at once;
4. it exits once every worker has: 0 after a requested stop in which every
   worker stopped cleanly; 128 + the signal number (143, 130) after a second
   stop signal; 1 when a worker exits on its own (`worker_exited`: the others
   are stopped at once, so the process supervisor restarts the whole server)
   or fails to stop cleanly.

A worker's stdin is a pipe from the supervisor that is never written to: end of
file means the supervisor is gone (even SIGKILL), and the worker stops as on
SIGTERM instead of serving on unsupervised.

Each worker has its own `db_pool_size` connections, its own health monitor
and its own `shutdown_grace`; the kernel hashes each new TCP connection to one
of the listening workers, so one gRPC channel (one connection) stays on one
worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.server.app import check_security, serve, unless_stopped
from tether.server.config import WORKER_ENV, Settings, split_host_port
from tether.server.db.migrate import migrate
from tether.server.log import get_logger

WORKER_COMMAND = (sys.executable, "-m", "tether.server", "serve")
# Exit statuses of a worker that count as a clean stop once a stop was requested: a worker
# that the forwarded signal reached before it had installed its handlers dies of it.
_CLEAN_STOP = (0, -signal.SIGTERM, -signal.SIGINT)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process is told by its supervisor."""

    index: int
    ready_fd: int  # write `<index> <address>\n` here once serving
    settings: Settings

    def to_env(self) -> str:
        settings = self.settings.model_dump(mode="json")
        return json.dumps({"index": self.index, "ready_fd": self.ready_fd, "settings": settings})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSpec | None:
        """The spec of this process when it is a worker; None otherwise."""
        text = environ.get(WORKER_ENV)
        if not text:
            return None
        data = json.loads(text)
        return cls(int(data["index"]), int(data["ready_fd"]), Settings.model_validate(data["settings"]))


async def run_worker(spec: WorkerSpec) -> int:
    """The server of one worker: `serve`, reporting to the supervisor once serving."""

    def report(address: str) -> None:
        # A supervisor that is gone (EPIPE) is noticed through stdin instead.
        with contextlib.suppress(OSError):
            os.write(spec.ready_fd, f"{spec.index} {address}\n".encode())
        os.close(spec.ready_fd)

    threading.Thread(target=_stop_when_supervisor_exits, name="tether-supervisor-watch", daemon=True).start()
    return await serve(spec.settings, on_serving=report)


def _stop_when_supervisor_exits() -> None:
    """SIGTERM to this process when stdin (a pipe from the supervisor) ends."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        return  # no usable stdin: nothing to watch
    os.kill(os.getpid(), signal.SIGTERM)


def reserve_port(listen: str) -> tuple[int, list[socket.socket]]:
    """The concrete port for `listen` and the sockets that hold it (bound with SO_REUSEPORT,
    not listening) for the workers; OSError when a fixed port is already in use."""
    host, port = split_host_port(listen)
    addresses = list(
        dict.fromkeys(
            (family, sockaddr[:2])
            for family, _, _, _, sockaddr in socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        )
    )
    held: list[socket.socket] = []
    try:
        for family, (address, _) in addresses:
            if port:
                # Exclusively first: a port in use, even by another server's SO_REUSEPORT
                # workers, fails here instead of being joined.
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is ok
                    probe.bind((address, port))
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Port 0 (first address only): the kernel picks a port no socket is bound to,
            # SO_REUSEPORT or not.
            sock.bind((address, port))
            port = port or sock.getsockname()[1]
    except OSError:
        for sock in held:
            sock.close()
        raise
    return port, held


def worker_settings(settings: Settings, index: int, listen: str) -> Settings:
    """Worker `index`'s settings: the concrete address, no migrations (the supervisor ran
    them), and the sweeper in worker 0 only (it is safe in all, but wasteful)."""
    update: dict[str, Any] = {"listen": listen, "migrate_on_start": False}
    if index:
        update["sweep_interval"] = 0.0
    return settings.model_copy(update=update)


@dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    ready: bool = False
    reload_pending: bool = False


class Supervisor:
    """Starts the workers, forwards signals to them, and fails fast when one exits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[_Worker] = []
        self.stopping = asyncio.Event()  # a stop was requested, or a worker failed
        self.failed = False  # a worker exited on its own
        self.stop_signals = 0  # SIGTERM/SIGINT received; the second one means "now"
        self.forced: signal.Signals | None = None
        self._log = get_logger()

    def on_signal(self, signum: signal.Signals) -> None:
        if signum == signal.SIGHUP:
            for worker in self.workers:
                if worker.ready:
                    self._send(worker, signum)
                else:  # its handler may not be installed yet: SIGHUP would kill it
                    worker.reload_pending = True
            return
        self.stop_signals += 1
        if self.stop_signals == 1:
            self._log.info(
                "stopping",
                signal=signum.name,
                drain_seconds=self.settings.drain_seconds,
                grace_seconds=self.settings.shutdown_grace,
            )
        elif self.forced is None:
            self.forced = signum
            self._log.warning("stopping_now", signal=signum.name)
        self.stop(signum)

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Tell every worker to drain and stop."""
        self.stopping.set()
        for worker in self.workers:
            self._send(worker, signum)

    def _send(self, worker: _Worker, signum: signal.Signals) -> None:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    async def run(self) -> int:
        settings = self.settings
        host, _ = split_host_port(settings.listen)
        try:
            port, held = reserve_port(settings.listen)
        except OSError as exc:
            self._log.error("startup_failed", error=f"cannot listen on {settings.listen}: {exc}")
            return 1
        address = f"{host}:{port}"
        try:
            if settings.migrate_on_start and not await unless_stopped(
                migrate(settings.database_url), self.stopping
            ):
                self._log.info("stopped")
                return 0
            return await self._run_workers(address, held)
        # Migrations failed, or a worker could not be started (the others are told to stop).
        except Exception as exc:
            self._log.error("startup_failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        finally:
            for sock in held:
                sock.close()

    async def _run_workers(self, address: str, held: list[socket.socket]) -> int:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            for index in range(self.settings.workers):
                if self.stopping.is_set():
                    break
                spec = WorkerSpec(index, write_fd, worker_settings(self.settings, index, address))
                process = await asyncio.create_subprocess_exec(
                    *WORKER_COMMAND,
                    stdin=asyncio.subprocess.PIPE,  # the lifeline: see the module docstring
                    pass_fds=(write_fd,),
                    env={**os.environ, WORKER_ENV: spec.to_env()},
                )
                self.workers.append(_Worker(index, process))
                self._log.info("worker_started", worker=index, pid=process.pid)
        except BaseException:
            os.close(read_fd)
            self.stop()
            raise
        finally:
            os.close(write_fd)  # the workers hold it now: end of file once they all have closed it
        if self.stopping.is_set():
            self.stop()  # a signal came while some were starting
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        announcer = asyncio.create_task(self._announce(reader, address, held))
        try:
            codes = await asyncio.gather(*(self._watch(worker) for worker in self.workers))
        finally:
            announcer.cancel()
            transport.close()
        if self.forced is not None:
            return 128 + self.forced
        if self.failed or any(code not in _CLEAN_STOP for code in codes):
            return 1
        self._log.info("stopped")
        return 0

    async def _announce(self, reader: asyncio.StreamReader, address: str, held: list[socket.socket]) -> None:
        """Log `serving` once every worker serves; until then the held sockets keep the port."""
        by_index = {worker.index: worker for worker in self.workers}
        while not all(worker.ready for worker in self.workers):
            line = await reader.readline()
            if not line:
                return  # a worker exited before serving: its watcher says so
            worker = by_index[int(line.split()[0])]
            worker.ready = True
            if worker.reload_pending:
                worker.reload_pending = False
                self._send(worker, signal.SIGHUP)
        for sock in held:
            sock.close()
        self._log.info(
            "serving", address=address, workers=len(self.workers), pids=[w.process.pid for w in self.workers]
        )

    async def _watch(self, worker: _Worker) -> int:
        code = await worker.process.wait()
        if not self.stopping.is_set():
            self._log.error("worker_exited", worker=worker.index, pid=worker.process.pid, exit_code=code)
            self.failed = True
            self.stop()
        elif code not in _CLEAN_STOP and self.forced is None:
            self._log.error("worker_failed", worker=worker.index, pid=worker.process.pid, exit_code=code)
        return code


async def supervise(settings: Settings) -> int:
    """`tether serve` with `workers` > 1; the exit status (see the module docstring)."""
    log = get_logger()
    for setting, detail in settings.not_enforced():
        log.warning("setting_not_enforced", setting=setting, detail=detail)
    if check_security(settings) is None:
        return 2
    supervisor = Supervisor(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, supervisor.on_signal, signum)
    return await supervisor.run()
