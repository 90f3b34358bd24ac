"""Keyset pagination (AIP-158): page tokens carry the last row's ordering key, never an offset.

A token is urlsafe base64 of compact JSON: the last row's key values and a
fingerprint of those values plus the query the token was issued for (parent,
filter, order_by, show_deleted, ...). A token that is reused with other
parameters, edited, or is not a token at all is INVALID_PAGE_TOKEN.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, TypeVarTuple

from sqlalchemy import ColumnElement, DateTime, Integer, Select, TypeDecorator, and_, or_

from tether.server.errors import ApiError, Reason, bad_field
from tether.server.query.ordering import Ordering, OrderKey

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_LENGTH = 4096

CursorValue = str | int | datetime


class RowLike(Protocol):
    """A fetched row: the ordering columns by name (e.g. SQLAlchemy's RowMapping)."""

    def __getitem__(self, key: str, /) -> Any: ...


_R = TypeVar("_R", bound=RowLike)
_Ts = TypeVarTuple("_Ts")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated page request: its size, ordering, binding and where it starts."""

    size: int
    ordering: Ordering
    binding: tuple[str, ...]
    after: tuple[CursorValue, ...] | None  # key values of the previous page's last row


def page_request(
    *, page_size: int, page_token: str, ordering: Ordering, binding: Sequence[str]
) -> PageRequest:
    """Validate `page_size` and `page_token` for the query `binding` describes.

    `binding` lists the request parameters a token must not outlive (parent,
    filter, show_deleted, ...); the canonical ordering is bound as well.
    """
    if page_size < 0:
        raise bad_field(
            "page_size", f"must not be negative, got {page_size}", reason=Reason.INVALID_PAGE_SIZE
        )
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    bound = (*binding, ordering.canonical)
    after = _decode(page_token, ordering.keys, bound) if page_token else None
    return PageRequest(size, ordering, bound, after)


def paginate(stmt: Select[*_Ts], page: PageRequest) -> Select[*_Ts]:
    """Add the keyset condition, ORDER BY and LIMIT (one extra row tells whether more follow)."""
    keys = page.ordering.keys
    if page.after is not None:
        stmt = stmt.where(_after(keys, page.after))
    order = [key.column.desc() if key.descending else key.column.asc() for key in keys]
    return stmt.order_by(*order).limit(page.size + 1)


def next_page(rows: Sequence[_R], page: PageRequest) -> tuple[Sequence[_R], str]:
    """Split the rows `paginate` fetched into this page and the next page token ("" at the end)."""
    if len(rows) <= page.size:
        return rows, ""
    rows = rows[: page.size]
    last = rows[-1]
    return rows, _encode([last[key.column.key] for key in page.ordering.keys], page)


def _after(keys: Sequence[OrderKey], values: Sequence[CursorValue]) -> ColumnElement[bool]:
    """Rows strictly after `values`: (a > x) OR (a = x AND b > y) OR ..., per key direction."""
    branches = []
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        ties = [k.column == v for k, v in zip(keys[:i], values[:i], strict=True)]
        beyond = key.column < value if key.descending else key.column > value
        branches.append(and_(*ties, beyond))
    # Redundant with the OR chain, but lets the database range-scan the leading key's index.
    first = keys[0]
    bound = first.column <= values[0] if first.descending else first.column >= values[0]
    return and_(bound, or_(*branches))


def _fingerprint(binding: Sequence[str], values: Sequence[str]) -> str:
    canonical = json.dumps([list(binding), list(values)], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _encode(row_values: Sequence[CursorValue], page: PageRequest) -> str:
    values = [
        value.astimezone(UTC).isoformat(timespec="microseconds")
        if isinstance(value, datetime)
        else str(value)
        for value in row_values
    ]
    payload = {"v": values, "f": _fingerprint(page.binding, values)}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, keys: Sequence[OrderKey], binding: Sequence[str]) -> tuple[CursorValue, ...]:
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise _invalid_token()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # binascii, JSON and UTF-8 errors are ValueErrors
        raise _invalid_token() from None
    values = payload.get("v") if isinstance(payload, dict) else None
    if (
        not isinstance(values, list)
        or len(values) != len(keys)
        or not all(isinstance(value, str) and _storable(value) for value in values)
    ):
        raise _invalid_token()
    if payload.get("f") != _fingerprint(binding, values):
        raise bad_field(
            "page_token",
            "was issued for a different query: keep filter, order_by and the other parameters between pages",
            reason=Reason.INVALID_PAGE_TOKEN,
        )
    return tuple(_cursor_value(key, value) for key, value in zip(keys, values, strict=True))


def _storable(value: str) -> bool:
    """Tokens are checked, not signed, so a cursor value may be forged: refuse what no
    database column holds (NUL, lone surrogates) before it reaches SQL."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_timestamp(key: OrderKey) -> bool:
    column_type = key.column.type
    if isinstance(column_type, TypeDecorator):  # e.g. UTCDateTime
        column_type = column_type.impl_instance
    return isinstance(column_type, DateTime)


def _is_integer(key: OrderKey) -> bool:
    return isinstance(key.column.type, Integer)  # BigInteger is an Integer


def _cursor_value(key: OrderKey, value: str) -> CursorValue:
    if _is_integer(key):
        try:
            number = int(value, 10)
        except ValueError:
            raise _invalid_token() from None
        if not -(2**63) <= number < 2**63:  # a forged token: keep it out of SQL
            raise _invalid_token()
        return number
    if not _is_timestamp(key):
        return value
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(value)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid_token() from None


def _invalid_token() -> ApiError:
    return bad_field("page_token", "is not a valid page token", reason=Reason.INVALID_PAGE_TOKEN)
