"""The error catalogue is one list: the server's reasons, the client's `Reason` and
docs/errors.md all say the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tether.client import Reason as ClientReason
from tether.server.errors import CATALOGUE
from tether.server.errors import Reason as ServerReason

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "errors_doc.py"


def test_every_reason_is_catalogued() -> None:
    assert set(CATALOGUE) == set(ServerReason)


def test_client_knows_every_reason() -> None:
    assert [r.value for r in ClientReason] == [r.value for r in ServerReason]


def test_docs_are_generated_from_the_catalogue() -> None:
    spec = importlib.util.spec_from_file_location("errors_doc", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DOC.read_text() == module.render(), "run: python scripts/errors_doc.py"
