"""Field validation that collects every violation before failing (AIP-193).

Lengths are counted in characters (code points), so an emoji counts once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import struct_pb2, timestamp_pb2

from tether.server import names
from tether.server.errors import ApiError, FieldViolation, Reason, invalid_argument, shorten

T = TypeVar("T")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
MAX_EXTERNAL_ID = 256
MAX_URI = 2048
MAX_METADATA_BYTES = 64 * 1024
MAX_SESSION_STATE_BYTES = 256 * 1024
MAX_STRUCT_DEPTH = 32
REQUEST_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Timestamps PostgreSQL and protobuf both represent.
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass
class Violations:
    """Accumulates field violations; `check()` raises them all at once.

    Only size limits broken: RESOURCE_EXHAUSTED (reason SIZE_LIMIT_EXCEEDED);
    anything else: INVALID_ARGUMENT, naming every bad field, sizes included.
    """

    items: list[FieldViolation] = field(default_factory=list)
    oversize: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str) -> None:
        self.items.append(FieldViolation(path, description))

    def check(self) -> None:
        if self.items:
            raise invalid_argument([*self.items, *self.oversize])
        if self.oversize:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.oversize)
            raise ApiError(
                Reason.SIZE_LIMIT_EXCEEDED,
                message,
                violations=self.oversize,
            )

    def name(self, parse: Callable[[str, str], T], value: str, path: str, fallback: T) -> T:
        """Parse a resource name; on failure record the violation and go on with `fallback`
        (so one call reports the name together with every other bad field)."""
        try:
            return parse(value, path)
        except ApiError as error:
            self.items.extend(error.violations)
            return fallback

    def text(self, path: str, value: str, max_chars: int, *, required: bool = False) -> None:
        if required and not value:
            self.add(path, "required")
        elif len(value) > max_chars:
            self.add(path, f"at most {max_chars} characters, got {len(value)}")
        elif "\x00" in value:
            self.add(path, "must not contain NUL characters")

    def id(self, path: str, value: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.add(path, "required")
        elif not names.is_valid_id(value):
            self.add(path, f"must match {names.ID_RE.pattern}, got {shorten(value, 80)!r}")

    def request_id(self, path: str, value: str) -> None:
        if value and REQUEST_ID_RE.fullmatch(value) is None:
            self.add(path, "must be a UUID")

    def channel(self, path: str, value: str) -> None:
        if value and names.CHANNEL_RE.fullmatch(value) is None:
            self.add(path, f"must match {names.CHANNEL_RE.pattern}, got {shorten(value, 80)!r}")

    def labels(self, path: str, labels: Mapping[str, str]) -> None:
        if len(labels) > MAX_LABELS:
            self.add(path, f"at most {MAX_LABELS} labels, got {len(labels)}")
        for key, value in labels.items():
            if LABEL_KEY_RE.fullmatch(key) is None:
                self.add(f"{path}[{shorten(key, 64)!r}]", f"label key must match {LABEL_KEY_RE.pattern}")
            else:
                self.text(f"{path}[{key!r}]", value, MAX_LABEL_VALUE)

    def struct(self, path: str, value: struct_pb2.Struct, max_bytes: int) -> None:
        size = value.ByteSize()
        if size > max_bytes:
            self.oversize.append(FieldViolation(path, f"at most {max_bytes} bytes serialized, got {size}"))
        else:
            problem = _struct_problem(value, depth=1)
            if problem:
                self.add(path, problem)

    def timestamp(self, path: str, value: timestamp_pb2.Timestamp) -> None:
        if not timestamp_in_range(value):
            self.add(path, "must be between 0001-01-01 and 9999-12-31 with nanos in [0, 1e9)")

    def enum(self, path: str, value: int, allowed: Mapping[Any, str], *, required: bool = True) -> None:
        if value == 0 and required:
            self.add(path, "required")
        elif value != 0 and value not in allowed:
            self.add(path, f"unknown value {value}")


def timestamp_in_range(value: timestamp_pb2.Timestamp) -> bool:
    if not 0 <= value.nanos < 1_000_000_000:
        return False
    return MIN_TIME.timestamp() <= value.seconds <= MAX_TIME.timestamp()


def _struct_problem(value: struct_pb2.Struct | struct_pb2.ListValue, depth: int) -> str | None:
    """Why a Struct cannot be stored and given back: NUL characters (PostgreSQL
    cannot store them), NaN or infinities (JSON has none), or nesting deeper
    than MAX_STRUCT_DEPTH (protobuf decoders refuse deep messages)."""
    if depth > MAX_STRUCT_DEPTH:
        return f"must not nest deeper than {MAX_STRUCT_DEPTH} levels"
    if isinstance(value, struct_pb2.Struct):
        if any("\x00" in key for key in value.fields):
            return "must not contain NUL characters"
        items = list(value.fields.values())
    else:
        items = list(value.values)
    for item in items:
        kind = item.WhichOneof("kind")
        if kind == "string_value" and "\x00" in item.string_value:
            return "must not contain NUL characters"
        if kind == "number_value" and not math.isfinite(item.number_value):
            return "must not contain NaN or infinite numbers"
        if kind in ("struct_value", "list_value"):
            problem = _struct_problem(getattr(item, kind), depth + 1)
            if problem:
                return problem
    return None
