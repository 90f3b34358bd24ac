"""A throwaway PostgreSQL cluster for one bench run, so that statements per operation can
be counted: `initdb` into a temporary directory, `postgres` on a free port with
`pg_stat_statements` preloaded (`track=all`), stopped by its pid and deleted at the end.

initdb refuses to run as root, so as root both initdb and postgres run as the `postgres`
OS user (`subprocess.Popen(user=...)`, which keeps the postmaster our direct child: the
pid we stop is the server's own, not that of a `su` in between).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# The settings that differ from initdb's defaults; everything else is as a fresh
# cluster has it (the 127.0.0.1:5432 server of this machine runs the defaults too).
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "10000",
}
OS_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(path))) or (0,)


def find_bindir() -> Path | None:
    """The directory with `initdb` and `postgres`: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin, else wherever `initdb` on PATH points; None if none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


class Cluster:
    """`start()` it, use `url`, `stop()` it (also after a failed start)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._user = OS_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def describe(self) -> str:
        who = f"as the {self._user!r} OS user" if self._user else "as the current user"
        return (
            f"throwaway cluster {self.bindir / 'postgres'} on 127.0.0.1:{self.port} (pid {self.pid}, "
            f"{who}, data in {self.root}), " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items())
        )

    def _ids(self) -> tuple[int | None, int | None, list[int] | None]:
        """(uid, gid, supplementary groups) for Popen: None, None, None to stay who we are."""
        if self._user is None:
            return None, None, None
        entry = pwd.getpwnam(self._user)
        return entry.pw_uid, entry.pw_gid, []

    def start(self, timeout: float = 60) -> None:
        uid, gid, groups = self._ids()
        self.root = Path(tempfile.mkdtemp(prefix="tether-bench-pg-"))
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        data = self.root / "data"
        self._log = self.root / "postgres.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",  # a throwaway: no need to flush the new files to disk
            ],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if initdb.returncode:
            raise RuntimeError(
                f"initdb failed ({initdb.returncode}): {initdb.stderr.strip() or initdb.stdout}"
            )
        self.port = free_port()
        args = [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.root)]
        for key, value in SETTINGS.items():
            args += ["-c", f"{key}={value}"]
        with open(self._log, "wb") as log:
            if uid is not None and gid is not None:
                os.chown(self._log, uid, gid)
            # Its own session: a Ctrl-C at the terminal reaches the bench, which stops it.
            self.process = subprocess.Popen(
                args,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        isready = self.bindir / "pg_isready"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with code {self.process.returncode}: {self.log_tail()}")
            if isready.is_file():
                ready = subprocess.run(
                    [str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                    check=False,
                ).returncode
                if ready == 0:
                    return
            else:
                with socket.socket() as sock, contextlib.suppress(OSError):
                    sock.connect(("127.0.0.1", self.port))
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout:g}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 10) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return " | ".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster by its pid, then delete the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGQUIT)  # immediate shutdown
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
