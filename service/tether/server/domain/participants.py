"""Participant rules: what a create or update request may say."""

from __future__ import annotations

from typing import Any

from tether.server.convert import struct_to_json
from tether.server.domain import masks
from tether.server.domain.validation import (
    MAX_DISPLAY_NAME,
    MAX_EXTERNAL_ID,
    MAX_METADATA_BYTES,
    MAX_URI,
    Violations,
)
from tether.v1 import participant_pb2

Participant = participant_pb2.Participant
KINDS: dict[int, str] = {Participant.KIND_USER: "USER", Participant.KIND_AGENT: "AGENT"}

RULES = masks.FieldRules(
    mutable=frozenset(
        {"display_name", "avatar_uri", "external_id", "labels", "metadata", "enabled", "managed"}
    ),
    immutable=frozenset({"kind"}),
    output_only=frozenset({"uid", "create_time", "update_time", "delete_time", "purge_time", "etag"}),
)


def check_fields(p: Participant, path: str, v: Violations, fields: frozenset[str] = RULES.mutable) -> None:
    """Validate the mutable fields in `fields`; append every violation to `v`."""
    if "display_name" in fields:
        v.text(f"{path}.display_name", p.display_name, MAX_DISPLAY_NAME)
    if "avatar_uri" in fields:
        v.text(f"{path}.avatar_uri", p.avatar_uri, MAX_URI)
    if "external_id" in fields:
        v.text(f"{path}.external_id", p.external_id, MAX_EXTERNAL_ID)
    if "labels" in fields:
        v.labels(f"{path}.labels", p.labels)
    if "metadata" in fields and p.HasField("metadata"):
        v.struct(f"{path}.metadata", p.metadata, MAX_METADATA_BYTES)


def column_values(p: Participant, fields: frozenset[str]) -> dict[str, Any]:
    """Column values for the mutable `fields` (unset fields become their defaults)."""
    values: dict[str, Any] = {}
    for name in fields:
        if name == "labels":
            values["labels"] = dict(p.labels)
        elif name == "metadata":
            values["metadata"] = struct_to_json(p.metadata) if p.HasField("metadata") else None
        elif name == "external_id":
            values["external_id"] = p.external_id or None
        elif name == "enabled":
            values["enabled"] = p.enabled if p.HasField("enabled") else True
        elif name == "managed":
            values["managed"] = p.managed if p.HasField("managed") else False
        else:
            values[name] = getattr(p, name)
    return values
