"""AIP-132 `order_by`: comma-separated keys, each optionally `asc` or `desc`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column

from tether.server.db.schema import events, participants, sessions
from tether.server.errors import ApiError, Reason, bad_field

MAX_ORDER_BY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class OrderFields:
    """The keys a list may be ordered by, the unique column that breaks ties, and the default."""

    columns: Mapping[str, Column[Any]]
    tiebreaker: Column[Any]
    default: str


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One column of an ordering and its direction."""

    column: Column[Any]
    descending: bool


@dataclass(frozen=True, slots=True)
class Ordering:
    """A validated ordering.

    `keys` are the requested keys followed by the tie-breaker; `canonical` is the
    normalized `order_by` text (explicit directions), which page tokens are bound to.
    """

    keys: tuple[OrderKey, ...]
    canonical: str


SESSION_ORDER_FIELDS = OrderFields(
    columns={
        "create_time": sessions.c.create_time,
        "update_time": sessions.c.update_time,
        "last_activity_time": sessions.c.last_activity_time,
        "display_name": sessions.c.display_name,
    },
    tiebreaker=sessions.c.uid,
    default="last_activity_time desc",
)

PARTICIPANT_ORDER_FIELDS = OrderFields(
    columns={
        "create_time": participants.c.create_time,
        "update_time": participants.c.update_time,
        "display_name": participants.c.display_name,
    },
    tiebreaker=participants.c.uid,
    default="create_time desc",
)


# Within one session `sequence` is unique: it is its own tie-breaker.
EVENT_ORDER_FIELDS = OrderFields(
    columns={"sequence": events.c.sequence}, tiebreaker=events.c.sequence, default="sequence asc"
)


def parse_order_by(text: str, fields: OrderFields) -> Ordering:
    """Parse `order_by` (empty means the default) or raise INVALID_ORDER_BY.

    The tie-breaker is appended in the direction of the last key (unless it is that
    key), so the order is total and one index serves it.
    """
    if len(text) > MAX_ORDER_BY_LENGTH:
        raise _error(f"longer than {MAX_ORDER_BY_LENGTH} characters")
    parsed = [_parse_key(part, fields) for part in (text.strip() or fields.default).split(",")]
    names = [name for name, _ in parsed]
    for name in names:
        if names.count(name) > 1:
            raise _error(f"duplicate key {name!r}")
    keys = [OrderKey(fields.columns[name], descending) for name, descending in parsed]
    if keys[-1].column is not fields.tiebreaker:
        keys.append(OrderKey(fields.tiebreaker, keys[-1].descending))
    canonical = ", ".join(f"{name} {'desc' if descending else 'asc'}" for name, descending in parsed)
    return Ordering(tuple(keys), canonical)


def _parse_key(part: str, fields: OrderFields) -> tuple[str, bool]:
    words = part.split()
    if not 1 <= len(words) <= 2:
        raise _error(f"each key must be '<field> [asc|desc]', got {part.strip()!r}")
    name = words[0]
    if name not in fields.columns:
        raise _error(f"unknown key {name!r}; allowed: {', '.join(fields.columns)}")
    direction = words[1].lower() if len(words) == 2 else "asc"
    if direction not in ("asc", "desc"):
        raise _error(f"direction must be asc or desc, got {words[1]!r}")
    return name, direction == "desc"


def _error(message: str) -> ApiError:
    return bad_field("order_by", message, reason=Reason.INVALID_ORDER_BY)
