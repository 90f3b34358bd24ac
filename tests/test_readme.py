"""The README's examples work as written: its grpcurl block runs verbatim in bash and
its Python snippet runs as is, each against a fresh server (only the address differs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.server import ServerFactory

README = Path(__file__).resolve().parent.parent / "README.md"
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def _blocks(language: str, section: str) -> list[str]:
    """The fenced code blocks of `language` in the README section titled `section`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.DOTALL)


def test_grpcurl_examples_run_as_written(server_factory: ServerFactory) -> None:
    (script,) = _blocks("sh", "grpcurl")
    server = server_factory()
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
    out = result.stdout
    assert "tether.v1.SessionService" in out
    assert '"status": "SERVING"' in out
    assert '"name": "namespaces/default/sessions/welcome"' in out
    assert '"created": true' in out
    assert out.count('"name": "namespaces/default/participants/') >= 2


def test_python_example_runs_as_written(server_factory: ServerFactory) -> None:
    (snippet,) = _blocks("python", "Quick start")
    server = server_factory()
    namespace: dict[str, object] = {}
    exec(compile(snippet.replace(DOCUMENTED_ADDRESS, server.target), "README.md", "exec"), namespace)
    found = namespace["found"]
    assert found.created is True  # type: ignore[attr-defined]
    assert found.session.external_conversation_id == "C042"  # type: ignore[attr-defined]
