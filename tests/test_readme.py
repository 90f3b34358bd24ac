"""The README's examples are one story: its Python quick start, then its grpcurl block, run
verbatim (only the address differs) in the order written against one fresh server and
database, and then the whole story again, as a reader who follows the README twice would."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.support.server import ServerFactory, ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"
DOCUMENTED_ADDRESS = "127.0.0.1:50051"
SESSION_NAME = re.compile(r"namespaces/default/sessions/[0-9a-f-]{36}")


def _blocks(language: str, section: str) -> list[str]:
    """The fenced code blocks of `language` in the README section titled `section`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.DOTALL)


def run_python_example(server: ServerProcess) -> tuple[str, dict[str, Any]]:
    """Run the quick start's Python block; what it printed and its globals."""
    (snippet,) = _blocks("python", "Quick start")
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet.replace(DOCUMENTED_ADDRESS, server.target), "README.md", "exec"), namespace)
    return printed.getvalue(), namespace


def run_grpcurl_example(server: ServerProcess) -> str:
    """Run the grpcurl block in bash (stopping at the first failing command); its stdout."""
    (script,) = _blocks("sh", "grpcurl")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(DOCUMENTED_ADDRESS, server.target)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_story_runs_top_to_bottom_twice(server_factory: ServerFactory) -> None:
    server = server_factory()  # its own fresh database

    printed, first = run_python_example(server)
    assert (first["appended"].session_created, first["appended"].author_created) == (True, True)
    assert first["appended"].event.sequence == 1
    assert [e.sequence for e in first["recent"]] == [1]
    dm = first["session"]
    assert dm.kind == dm.KIND_DIRECT
    assert dm.external_conversation_id == "D042"
    assert dm.member_count == 2
    assert printed.strip() == f"True {dm.name} 2"

    out = run_grpcurl_example(server)
    assert "tether.v1.SessionService" in out
    assert '"status": "SERVING"' in out
    assert '"name": "namespaces/default/participants/support-bot"' in out
    assert '"external_id": "slack:U042"' in out
    assert out.count('"created": true') == 1  # the group session of C042 was created
    assert '"kind": "KIND_GROUP"' in out
    assert '"group_name": "#support"' in out
    # Bob's message in C042, then the channel's events: one.
    assert out.count('"text": "Is the status page right?"') == 1
    assert '"sequence": "1"' in out
    # "Recent direct sessions on Slack" lists the DM the Python example made.
    assert f'"name": "{dm.name}"' in out

    printed, again = run_python_example(server)
    assert again["appended"].session_created is False
    assert again["session"].name == dm.name
    assert [e.sequence for e in again["recent"]] == [2, 1]
    assert printed.strip() == f"False {dm.name} 2"

    out_again = run_grpcurl_example(server)
    assert '"created": true' not in out_again  # found, not created again
    assert out_again.count('"text": "Is the status page right?"') == 2  # newest first: 2, 1
    assert set(SESSION_NAME.findall(out_again)) == set(SESSION_NAME.findall(out))
    assert f'"name": "{dm.name}"' in out_again


def _read_until(command: list[str], wanted: list[str], env: dict[str, str]) -> str:
    """Run a command that streams forever; its output up to the line holding the last of
    `wanted` (each in turn), then stop it. The deadline is only a safety net."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    timer = threading.Timer(60, process.kill)
    timer.start()
    seen: list[str] = []
    try:
        assert process.stdout is not None
        remaining = list(wanted)
        for line in process.stdout:
            seen.append(line)
            while remaining and remaining[0] in "".join(seen):
                remaining.pop(0)
            if not remaining:
                break
        assert not remaining, "".join(seen) + (process.stderr.read() if process.stderr else "")
        return "".join(seen)
    finally:
        timer.cancel()
        process.kill()
        process.wait()


def test_readme_watch_examples_follow_the_story(server_factory: ServerFactory) -> None:
    server = server_factory()
    _, story = run_python_example(server)
    dm = story["session"].name
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    (snippet,) = _blocks("python", "Watching changes")
    printed = _read_until(
        [sys.executable, "-c", snippet.replace(DOCUMENTED_ADDRESS, server.target)],
        [f"CHANGE_TYPE_CREATED {dm} 0", f"CHANGE_TYPE_EVENT_APPENDED {dm} 1"],
        env,
    )
    revisions = [int(line.split()[0]) for line in printed.splitlines()]
    assert revisions == sorted(set(revisions))  # strictly increasing

    (script,) = _blocks("sh", "Watching changes")
    out = _read_until(
        ["bash", "-c", script.replace(DOCUMENTED_ADDRESS, server.target)],
        ['"type": "CHANGE_TYPE_EVENT_APPENDED"', '"topic": "orders"'],
        env,
    )
    assert f'"name": "{dm}"' in out
    # The read mask left the other fields out.
    assert '"displayName"' not in out
    assert '"display_name"' not in out
