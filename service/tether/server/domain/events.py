"""Event rules: what an appended event may hold, and its row."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from tether.server import names
from tether.server.convert import struct_to_json, to_datetime
from tether.server.domain.validation import Violations
from tether.server.errors import FieldViolation, shorten
from tether.v1 import event_pb2

MAX_INVOCATION_ID = 128
MAX_BRANCH = 256
BRANCH_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# `content` + `state_delta`, serialized (DESIGN.md "Event").
MAX_EVENT_BYTES = 1024 * 1024


def check_event(e: event_pb2.Event, path: str, v: Violations) -> None:
    """Record every problem of an event to append (its output-only fields are ignored)."""
    v.text(f"{path}.invocation_id", e.invocation_id, MAX_INVOCATION_ID)
    if len(e.branch) > MAX_BRANCH:
        v.add(f"{path}.branch", f"at most {MAX_BRANCH} characters, got {len(e.branch)}")
    elif e.branch and BRANCH_RE.fullmatch(e.branch) is None:
        v.add(
            f"{path}.branch",
            f"must be a dotted path matching {BRANCH_RE.pattern}, got {shorten(e.branch, 80)!r}",
        )
    v.labels(f"{path}.labels", e.labels)
    size = e.content.ByteSize() + e.state_delta.ByteSize()
    if size > MAX_EVENT_BYTES:
        v.oversize.append(
            FieldViolation(
                f"{path}.content",
                f"content and state_delta together at most {MAX_EVENT_BYTES} bytes serialized, got {size}",
            )
        )
    else:
        v.struct(f"{path}.content", e.content, MAX_EVENT_BYTES)
        v.struct(f"{path}.state_delta", e.state_delta, MAX_EVENT_BYTES)
    if e.HasField("event_time"):
        v.timestamp(f"{path}.event_time", e.event_time)


def event_values(e: event_pb2.Event, event_id: str, now: datetime) -> dict[str, Any]:
    """The new event's row but its namespace, session, sequence and author."""
    return {
        "event": event_id or names.new_id(),
        "uid": names.new_id(),
        "invocation_id": e.invocation_id,
        "branch": e.branch,
        "labels": dict(e.labels),
        "content": struct_to_json(e.content) if e.HasField("content") else None,
        "state_delta": struct_to_json(e.state_delta) if e.HasField("state_delta") else None,
        "event_time": to_datetime(e.event_time) if e.HasField("event_time") else now,
        "create_time": now,
    }
