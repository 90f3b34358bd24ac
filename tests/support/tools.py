"""Command-line tools the tests drive: ``tether`` and ``grpcurl`` from this interpreter's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TOOL_TIMEOUT_SECONDS = 60.0
# How long a test waits for another process (server, sweeper, worker) to make a condition true.
DEADLINE_SECONDS = 60.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_SECONDS) -> None:
    """Poll a condition that another process makes true, up to a deadline (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def find_tool(name: str) -> str:
    """``name`` from the running interpreter's bin directory (the venv) first, then ``PATH``."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        raise FileNotFoundError(
            f"{name!r} is not installed next to {sys.executable} nor on PATH; run: pip install -e '.[dev]'"
        )
    return path


def run_tool(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = TOOL_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run ``name args...`` to completion (never checks the exit code; the caller asserts it)."""
    return subprocess.run(
        [find_tool(name), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A readable account of a finished command, for assertion messages."""
    command = " ".join(str(part) for part in result.args)
    return (
        f"$ {command}\nexit code {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
