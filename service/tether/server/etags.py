"""Etags (AIP-154): derived from a row's uid and version, checked in the write itself.

An etag is `"<first 8 chars of uid>-<version>"`. The version moves on every
write; the uid prefix keeps a resource recreated under the same name from
matching an etag of its predecessor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func

from tether.server.errors import ApiError, Reason

_ETAG_RE = re.compile(r'^(?:W/)?"([0-9a-f]{8})-([0-9]{1,18})"$')


@dataclass(frozen=True)
class Etag:
    """A caller's expected etag, parsed; `None` fields mean it cannot match anything."""

    uid_prefix: str | None
    version: int | None


def format_etag(uid: str, version: int) -> str:
    return f'"{uid[:8]}-{version}"'


def parse(text: str) -> Etag | None:
    """None when the caller sent no etag (the write is unconditional)."""
    if not text:
        return None
    match = _ETAG_RE.fullmatch(text)
    if match is None:
        return Etag(None, None)  # malformed: a mismatch, not a crash
    return Etag(match.group(1), int(match.group(2)))


def condition(uid: Any, version: Any, expected: Etag | None) -> ColumnElement[bool] | None:
    """The SQL condition that makes a write conditional on `expected`."""
    if expected is None:
        return None
    if expected.uid_prefix is None or expected.version is None:
        return false()
    return and_(version == expected.version, func.substr(uid, 1, 8) == expected.uid_prefix)


def mismatch(resource_name: str, current: str) -> ApiError:
    return ApiError(
        Reason.ETAG_MISMATCH,
        f"{resource_name!r} has changed (its etag is now {current}); read it again and retry",
        metadata={"resource_name": resource_name, "etag": current},
    )


def check(resource_name: str, row: Mapping[Any, Any], expected: Etag | None) -> None:
    """Raise ETAG_MISMATCH unless `row` (its `uid` and `version`, read after a
    conditional write matched nothing) has the expected etag."""
    if expected is not None and expected != Etag(row["uid"][:8], row["version"]):
        raise mismatch(resource_name, format_etag(row["uid"], row["version"]))
