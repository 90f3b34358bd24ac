"""AIP-160 filters: parsed by a lark grammar into parameterized SQLAlchemy expressions.

Precedence follows AIP-160: NOT binds tightest, then OR, then AND (so
`a = 1 AND b = 2 OR c = 3` is `a = 1 AND (b = 2 OR c = 3)`); juxtaposition is
AND. Every leaf is two-valued (NULL never leaks out of a comparison), so `NOT x`
is always the exact complement of `x` and `f != v` the complement of `f = v`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from sqlalchemy import Column, ColumnElement, and_, exists, false, literal, not_, or_, true

from tether.server.db.schema import events, members, participants, sessions
from tether.server.errors import ApiError, Reason, bad_field
from tether.server.names import parse_participant
from tether.v1 import participant_pb2, session_pb2

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 32

_GRAMMAR = r"""
?start: conj
?conj: seq (_AND seq)*
?seq: disj+
?disj: term (_OR term)*
?term: _NOT term -> negation
     | "(" conj ")"
     | restriction
restriction: FIELD COMPARATOR (STRING | TEXT)

_AND: "AND"
_OR: "OR"
_NOT: "NOT"
FIELD: /[A-Za-z_][A-Za-z0-9_.-]*/
COMPARATOR: "<=" | ">=" | "!=" | "<" | ">" | "=" | ":"
STRING: /"(?:[^"\\]|\\.)*"/s | /'(?:[^'\\]|\\.)*'/s
// Bare values may hold ':' so that RFC 3339 timestamps need no quotes.
TEXT: /[^\s()"'=<>!]+/
%ignore /\s+/
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", propagate_positions=True)

# Friendly names for the terminals a syntax error says were expected.
_EXPECTED = {
    "FIELD": "a field",
    "COMPARATOR": "an operator",
    "STRING": "a value",
    "TEXT": "a value",
    "LPAR": "'('",
    "RPAR": "')'",
    "_AND": "AND",
    "_OR": "OR",
    "_NOT": "NOT",
    "$END": "the end",
}
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)


class FieldKind(enum.Enum):
    """What a filter field holds, which decides its operators and value syntax."""

    STRING = "string"
    ENUM = "enum"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    INTEGER = "integer"  # an int64, e.g. an event's sequence
    PARTICIPANT = "participant"  # value: a participant name; column: the participant id
    LABELS = "labels"  # `labels.<key> = "v"`, `labels.<key>:*`, `labels:<key>`
    MEMBER = "member"  # value: a participant name; column: the session id


@dataclass(frozen=True, slots=True)
class FilterField:
    """How one filter field maps to a column."""

    kind: FieldKind
    column: Column[Any]
    enum_values: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Value:
    text: str
    quoted: bool
    position: int


@dataclass(frozen=True, slots=True)
class _Restriction:
    name: str
    position: int
    field: FilterField
    key: str | None  # the label key of `labels.<key>`
    op: str
    op_position: int
    value: _Value
    namespace: str


_ORDERED_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_EQUALITY_OPS = frozenset({"=", "!="})
_OPERATORS: Mapping[FieldKind, frozenset[str]] = {
    FieldKind.STRING: _ORDERED_OPS,
    FieldKind.ENUM: _EQUALITY_OPS,
    FieldKind.BOOL: _EQUALITY_OPS,
    FieldKind.TIMESTAMP: _ORDERED_OPS,
    FieldKind.INTEGER: _ORDERED_OPS,
    FieldKind.PARTICIPANT: _EQUALITY_OPS,
    FieldKind.LABELS: _EQUALITY_OPS | {":"},
    FieldKind.MEMBER: _EQUALITY_OPS | {":"},
}
_COMPARE: Mapping[str, Callable[[ColumnElement[Any], object], ColumnElement[bool]]] = {
    "=": lambda column, value: column == value,
    "!=": lambda column, value: column != value,
    "<": lambda column, value: column < value,
    "<=": lambda column, value: column <= value,
    ">": lambda column, value: column > value,
    ">=": lambda column, value: column >= value,
}


def _enum_values(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Full names (`KIND_DIRECT`) and short names (`DIRECT`) of a protobuf enum."""
    pairs = list(items)
    prefix = next(name for name, value in pairs if value == 0).removesuffix("UNSPECIFIED")
    return {alias: value for name, value in pairs for alias in (name, name.removeprefix(prefix))}


SESSION_FILTER_FIELDS: Mapping[str, FilterField] = {
    "agent": FilterField(FieldKind.PARTICIPANT, sessions.c.agent),
    "user": FilterField(FieldKind.PARTICIPANT, sessions.c.user),
    "peer_agent": FilterField(FieldKind.PARTICIPANT, sessions.c.peer_agent),
    "member": FilterField(FieldKind.MEMBER, sessions.c.session),
    "kind": FilterField(FieldKind.ENUM, sessions.c.kind, _enum_values(session_pb2.Session.Kind.items())),
    "channel": FilterField(FieldKind.STRING, sessions.c.channel),
    "external_conversation_id": FilterField(FieldKind.STRING, sessions.c.external_conversation_id),
    "enabled": FilterField(FieldKind.BOOL, sessions.c.enabled),
    "managed": FilterField(FieldKind.BOOL, sessions.c.managed),
    "auto_created": FilterField(FieldKind.BOOL, sessions.c.auto_created),
    "labels": FilterField(FieldKind.LABELS, sessions.c.labels),
    "create_time": FilterField(FieldKind.TIMESTAMP, sessions.c.create_time),
    "update_time": FilterField(FieldKind.TIMESTAMP, sessions.c.update_time),
    "last_activity_time": FilterField(FieldKind.TIMESTAMP, sessions.c.last_activity_time),
}

PARTICIPANT_FILTER_FIELDS: Mapping[str, FilterField] = {
    "kind": FilterField(
        FieldKind.ENUM, participants.c.kind, _enum_values(participant_pb2.Participant.Kind.items())
    ),
    "external_id": FilterField(FieldKind.STRING, participants.c.external_id),
    "enabled": FilterField(FieldKind.BOOL, participants.c.enabled),
    "managed": FilterField(FieldKind.BOOL, participants.c.managed),
    "labels": FilterField(FieldKind.LABELS, participants.c.labels),
    "create_time": FilterField(FieldKind.TIMESTAMP, participants.c.create_time),
}


EVENT_FILTER_FIELDS: Mapping[str, FilterField] = {
    "author": FilterField(FieldKind.PARTICIPANT, events.c.author),
    "invocation_id": FilterField(FieldKind.STRING, events.c.invocation_id),
    "branch": FilterField(FieldKind.STRING, events.c.branch),
    "event_time": FilterField(FieldKind.TIMESTAMP, events.c.event_time),
    "create_time": FilterField(FieldKind.TIMESTAMP, events.c.create_time),
    "sequence": FilterField(FieldKind.INTEGER, events.c.sequence),
    "labels": FilterField(FieldKind.LABELS, events.c.labels),
}

_INT64 = (-(2**63), 2**63 - 1)


def compile_filter(
    text: str, fields: Mapping[str, FilterField], *, namespace: str
) -> ColumnElement[bool] | None:
    """Compile an AIP-160 filter into a WHERE clause; None for an empty filter or `*`.

    `namespace` is the namespace being listed: participant names elsewhere match
    nothing. Any bad input raises `ApiError` (INVALID_ARGUMENT, reason
    INVALID_FILTER) whose description names the 1-based position.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise _error(f"longer than {MAX_FILTER_LENGTH} characters", MAX_FILTER_LENGTH)
    if "\0" in text:
        raise _error("NUL character", text.index("\0"))
    if text.strip() in ("", "*"):
        return None
    return _compile(_parse(text), fields, namespace, depth=1)


def _error(message: str, offset: int) -> ApiError:
    """An INVALID_FILTER error at a 0-based offset (reported 1-based)."""
    return bad_field("filter", f"{message} at position {offset + 1}", reason=Reason.INVALID_FILTER)


def _parse(text: str) -> Tree[Token]:
    try:
        return _PARSER.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text) from None


def _syntax_error(exc: UnexpectedInput, text: str) -> ApiError:
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream or 0
        return _error(f"unexpected character {text[offset]!r}", offset)
    if not isinstance(exc, UnexpectedToken) or exc.token.type == "$END":
        what, offset = "end of filter", len(text)
    else:
        what, offset = f"{_shorten(str(exc.token))!r}", exc.token.start_pos or 0
    expected = sorted({_EXPECTED.get(name, name) for name in getattr(exc, "expected", ())})
    hint = f", expected {' or '.join(expected)}" if expected else ""
    return _error(f"unexpected {what}{hint}", offset)


def _shorten(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def _compile(
    node: Tree[Token], fields: Mapping[str, FilterField], namespace: str, depth: int
) -> ColumnElement[bool]:
    if depth > MAX_DEPTH:
        raise _error(f"nested deeper than {MAX_DEPTH} levels", node.meta.start_pos)
    if node.data == "restriction":
        restriction = _read_restriction(node, fields, namespace)
        return _COMPILERS[restriction.field.kind](restriction)
    parts = [_compile(child, fields, namespace, depth + 1) for child in _subtrees(node)]
    if node.data == "negation":
        return not_(parts[0])
    if node.data == "disj":
        return or_(*parts)
    return and_(*parts)  # conj and seq (juxtaposition)


def _subtrees(node: Tree[Token]) -> list[Tree[Token]]:
    return [child for child in node.children if isinstance(child, Tree)]


def _read_restriction(node: Tree[Token], fields: Mapping[str, FilterField], namespace: str) -> _Restriction:
    name_token, op_token, value_token = (child for child in node.children if isinstance(child, Token))
    base, dot, key = str(name_token).partition(".")
    spec = fields.get(base)
    if spec is None or (dot and (not key or spec.kind is not FieldKind.LABELS)):
        raise _error(f"unknown field {_shorten(str(name_token))!r}", name_token.start_pos or 0)
    op = str(op_token)
    op_position = op_token.start_pos or 0
    if op not in _OPERATORS[spec.kind]:
        raise _error(f"operator {op!r} is not valid for {base}", op_position)
    value = _Value(_unquote(value_token), value_token.type == "STRING", value_token.start_pos or 0)
    name_position = name_token.start_pos or 0
    return _Restriction(str(name_token), name_position, spec, key or None, op, op_position, value, namespace)


def _unquote(token: Token) -> str:
    if token.type != "STRING":
        return str(token)
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


def _compare(column: ColumnElement[Any], op: str, value: object, nullable: bool) -> ColumnElement[bool]:
    """`column op value`, made two-valued when the column may be NULL."""
    expr = _COMPARE[op](column, value)
    if not nullable:
        return expr
    if op == "!=":
        return or_(column.is_(None), expr)
    return and_(column.is_not(None), expr)


def _string(r: _Restriction) -> ColumnElement[bool]:
    return _compare(r.field.column, r.op, r.value.text, r.field.column.nullable is True)


def _enum(r: _Restriction) -> ColumnElement[bool]:
    number = r.field.enum_values.get(r.value.text.upper())
    if number is None:
        raise _error(f"unknown {r.name} {_shorten(r.value.text)!r}", r.value.position)
    return _compare(r.field.column, r.op, number, nullable=False)


def _bool(r: _Restriction) -> ColumnElement[bool]:
    lowered = r.value.text.lower()
    if lowered not in ("true", "false"):
        raise _error(f"{r.name} must be true or false, got {_shorten(r.value.text)!r}", r.value.position)
    # Bound like every other value (a bare Python bool would render as a SQL constant).
    return _compare(r.field.column, r.op, literal(lowered == "true"), nullable=False)


def _timestamp(r: _Restriction) -> ColumnElement[bool]:
    text = r.value.text.upper()
    try:
        if _RFC3339_RE.fullmatch(text) is None:
            raise ValueError(text)
        value = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        message = f"{r.name} must be an RFC 3339 timestamp, got {_shorten(r.value.text)!r}"
        raise _error(message, r.value.position) from None
    return _compare(r.field.column, r.op, value, nullable=False)


def _integer(r: _Restriction) -> ColumnElement[bool]:
    try:
        value = int(r.value.text, 10)
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(r.value.text)
    except ValueError:
        message = f"{r.name} must be an integer, got {_shorten(r.value.text)!r}"
        raise _error(message, r.value.position) from None
    return _compare(r.field.column, r.op, value, nullable=False)


def _participant_id(r: _Restriction) -> str | None:
    """The participant id of the value, or None when it names another namespace."""
    try:
        name = parse_participant(r.value.text, field="filter")
    except ApiError:
        message = f"{r.name} must be a participant name, got {_shorten(r.value.text)!r}"
        raise _error(message, r.value.position) from None
    return name.participant if name.namespace == r.namespace else None


def _participant(r: _Restriction) -> ColumnElement[bool]:
    participant = _participant_id(r)
    if participant is None:
        return true() if r.op == "!=" else false()
    return _compare(r.field.column, r.op, participant, r.field.column.nullable is True)


def _member(r: _Restriction) -> ColumnElement[bool]:
    participant = _participant_id(r)
    if participant is None:
        return true() if r.op == "!=" else false()
    session = r.field.column
    found = exists().where(
        members.c.namespace == session.table.c.namespace,
        members.c.session == session,
        members.c.participant == participant,
    )
    return not_(found) if r.op == "!=" else found


def _label(column: Column[Any], key: str) -> ColumnElement[str | None]:
    """A label's value, NULL when absent; JSON indexing renders on SQLite and PostgreSQL alike."""
    value: ColumnElement[str | None] = column[key].as_string()
    return value


def _labels(r: _Restriction) -> ColumnElement[bool]:
    if r.key is None:
        # `labels:<key>`: the value names the key.
        if r.op != ":" or (r.value.text == "*" and not r.value.quoted):
            message = "labels needs a key: labels.<key> = value, labels.<key>:* or labels:<key>"
            raise _error(message, r.position)
        return _label(r.field.column, r.value.text).is_not(None)
    label = _label(r.field.column, r.key)
    if r.op == ":":
        if r.value.text != "*" or r.value.quoted:
            raise _error(f"use {r.name}:* (has key) or {r.name} = value", r.op_position)
        return label.is_not(None)
    return _compare(label, r.op, r.value.text, nullable=True)


_COMPILERS: Mapping[FieldKind, Callable[[_Restriction], ColumnElement[bool]]] = {
    FieldKind.STRING: _string,
    FieldKind.ENUM: _enum,
    FieldKind.BOOL: _bool,
    FieldKind.TIMESTAMP: _timestamp,
    FieldKind.INTEGER: _integer,
    FieldKind.PARTICIPANT: _participant,
    FieldKind.MEMBER: _member,
    FieldKind.LABELS: _labels,
}
