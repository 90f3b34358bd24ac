"""The real Tether server as a subprocess.

:func:`start_server` runs ``python -m tether.server serve`` with ``TETHER_LISTEN=127.0.0.1:0`` and
JSON logs, reads its output in a background thread (keeping all of it), and returns once the server
has logged ``{"event": "serving", "address": "127.0.0.1:<port>"}``. Nothing here sleeps: every wait is
on a condition (a log line, process exit) with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:
    import pytest

    from tests.support.databases import DatabaseBackend

STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
SERVER_COMMAND = (sys.executable, "-m", "tether.server", "serve")

LogEvent = dict[str, Any]


class ServerStartError(RuntimeError):
    """The server exited or stayed silent instead of serving."""


def parse_event(line: str) -> LogEvent | None:
    """The JSON object on ``line``, or None for anything else."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class LogReader:
    """Collects a pipe's lines in a thread; lets callers wait for a line with a deadline."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="tether-server-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, ""):
            with self._changed:
                self._lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def closed(self) -> bool:
        """True once the pipe has ended (the process closed its output, normally by exiting)."""
        with self._changed:
            return self._closed

    def wait_for(self, match: Callable[[str], bool], timeout: float) -> str | None:
        """The first line (ever) that matches; None when the pipe closes or the deadline passes first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match(line):
                        return line
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerProcess:
    """A running ``tether serve``.

    ``target`` is ``127.0.0.1:<port>``; ``database_url`` the database it serves; ``process`` the
    ``subprocess.Popen``; ``log_text()`` everything it has printed so far (stdout and stderr).
    """

    def __init__(self, process: subprocess.Popen[str], database_url: str, env: Mapping[str, str]) -> None:
        self.process = process
        self.database_url = database_url
        self.env = dict(env)
        assert process.stdout is not None
        self._log = LogReader(process.stdout)
        self.target = ""

    # --- output -------------------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self._log.lines()

    def log_text(self) -> str:
        return "\n".join(self._log.lines())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log.lines()[-lines:])

    def events(self) -> list[LogEvent]:
        """The JSON log lines, parsed."""
        return [event for line in self._log.lines() if (event := parse_event(line)) is not None]

    def wait_for_event(
        self, event: str, timeout: float = STARTUP_TIMEOUT_SECONDS, **fields: object
    ) -> LogEvent | None:
        """The first JSON log line with this ``event`` (and these field values), waiting for it;
        None if the server's output ends or the deadline passes first."""

        def match(line: str) -> bool:
            parsed = parse_event(line)
            return (
                parsed is not None
                and parsed.get("event") == event
                and all(parsed.get(key) == value for key, value in fields.items())
            )

        line = self._log.wait_for(match, timeout)
        return None if line is None else parse_event(line)

    # --- lifecycle ----------------------------------------------------------------------------

    def wait_until_serving(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> str:
        """Wait for the ``serving`` log line; set and return ``target``."""
        serving = self.wait_for_event("serving", timeout)
        if serving is None or not isinstance(serving.get("address"), str):
            if serving is not None:
                self.kill()
                why = f"logged 'serving' without an address: {serving!r}"
            elif self._log.closed:
                try:
                    self.process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.kill()
                why = f"ended its output (exit code {self.process.returncode}) before serving"
            else:
                self.kill()
                why = f"did not log a 'serving' event within {timeout:.0f}s"
            raise ServerStartError(
                f"tether serve ({self.database_url}) {why}. Last output:\n{self.log_tail()}"
            )
        host, _, port = serving["address"].rpartition(":")
        if host in ("0.0.0.0", "[::]", "::", ""):
            host = "127.0.0.1"
        self.target = f"{host}:{port}"
        return self.target

    def is_running(self) -> bool:
        return self.process.poll() is None

    def ensure_running(self) -> None:
        """Raise with the log tail when the server has died."""
        code = self.process.poll()
        if code is not None:
            raise ServerStartError(
                f"tether serve at {self.target} exited with code {code}:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, wait for exit (kill after ``timeout``), return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.join(timeout=10)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def health(self, service: str = "", timeout: float = 10.0) -> int:
        """The health service's status for ``service`` (``health_pb2.HealthCheckResponse.ServingStatus``)."""
        return health_status(self.target, service, timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.target or '(starting)'} db={self.database_url} pid={self.process.pid}>"


def health_status(target: str, service: str = "", timeout: float = 10.0) -> int:
    """One raw ``grpc.health.v1.Health/Check``; waits for the channel to connect within ``timeout``."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
        )
        status: int = response.status
        return status


def server_env(database_url: str, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a test server: this one without any ``TETHER_*`` setting from the
    developer's shell, plus the test defaults, plus ``overrides`` (a None value removes a variable)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TETHER_")}
    env.update(
        {
            "TETHER_LISTEN": "127.0.0.1:0",
            "TETHER_DATABASE_URL": database_url,
            "TETHER_LOG_FORMAT": "json",
            "TETHER_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_server(
    database_url: str,
    *,
    workdir: Path,
    env: Mapping[str, str | None] | None = None,
    command: Sequence[str] = SERVER_COMMAND,
    wait: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> ServerProcess:
    """Start ``tether serve`` on ``database_url`` in ``workdir``; with ``wait``, return once serving."""
    full_env = server_env(database_url, env)
    process = subprocess.Popen(
        list(command),
        cwd=workdir,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    server = ServerProcess(process, database_url, full_env)
    if wait:
        server.wait_until_serving(startup_timeout)
    return server


class ServerFactory:
    """Starts ``tether serve`` processes on one backend; :meth:`close` stops them all."""

    def __init__(self, backend: DatabaseBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.backend = backend
        self._tmp = tmp_path_factory
        self.servers: list[ServerProcess] = []

    def new_database(self) -> str:
        return self.backend.new_database()

    def __call__(
        self,
        database_url: str | None = None,
        *,
        env: Mapping[str, str | None] | None = None,
        wait: bool = True,
        command: Sequence[str] = SERVER_COMMAND,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        workdir: Path | None = None,
    ) -> ServerProcess:
        """A new server on ``database_url`` (default: a fresh database), serving unless ``wait=False``.

        ``env`` adds or (with None) removes environment variables; the defaults are
        ``TETHER_LISTEN=127.0.0.1:0``, ``TETHER_LOG_FORMAT=json`` and the database URL.
        """
        url = database_url if database_url is not None else self.backend.new_database()
        server = start_server(
            url,
            workdir=workdir or self._tmp.mktemp("server"),
            env=env,
            command=command,
            wait=False,
        )
        self.servers.append(server)
        if wait:
            server.wait_until_serving(startup_timeout)
        return server

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
