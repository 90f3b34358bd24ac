"""Hypothesis strategies for ``tether.v1.SessionService`` requests.

Two kinds of request, for every RPC:

- :func:`arbitrary_requests`: built from the request's message descriptor alone. Every field may be
  set or not; strings mix valid-looking resource names, ids, unicode (emoji, NUL, bidi marks), values
  at and just past the contract's length limits and very long strings (up to ~300 KiB); integers and
  enums include negatives, huge values and unknown enum numbers; maps get good and bad label keys;
  ``Struct`` values nest and hold NaN and infinities; ``Timestamp``/``Duration`` go out of range;
  ``FieldMask`` paths are good, bad or ``*``; one member of each oneof (or none).
- :func:`near_valid_requests`: a correct request built from the test's :class:`World` (real
  participants, sessions, members, events, etags and page tokens), then one or two fields perturbed
  (replaced by an arbitrary value of their type, edited by a character, or cleared).
- :data:`DEFECTS`: for the event RPCs, a correct request with exactly one known defect, and the
  error it must get (code, reason, the fields named).

Both are aimed by a :class:`World`. Requests that may write never name a *protected* namespace (the
snapshot namespace, ``default``, another test's ``t-<8 hex>`` ...): :func:`may_write_protected` finds
those, and the strategies filter them out. Read-only RPCs may name anything.

Page tokens: besides real, edited and random ones, :func:`forge_page_token` builds tokens in the
server's current format (urlsafe base64 of ``{"v": [...], "f": <sha256 fingerprint>}``, see
``tether.server.query.pagination``) with hostile cursor values. The tokens are not signed, so any
caller can make these; if the format changes, forged tokens are merely rejected as invalid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, TypeAlias

from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tether.v1 import event_pb2, namespace_pb2, participant_pb2, session_pb2
from tether.v1 import session_service_pb2 as pb

Strategy: TypeAlias = st.SearchStrategy[Any]

SERVICE = pb.DESCRIPTOR.services_by_name["SessionService"]
METHODS: dict[str, MethodDescriptor] = {method.name: method for method in SERVICE.methods}

# RPCs that only read (PurgeSessions is always sent with force=false, but it takes the
# mutating guard anyway: its parent must be the test's own namespace or nothing real).
READ_ONLY_RPCS = frozenset(
    {
        "GetNamespace",
        "ListNamespaces",
        "GetParticipant",
        "ListParticipants",
        "GetSession",
        "BatchGetSessions",
        "ListSessions",
        "ListMembers",
        "GetEvent",
        "ListEvents",
        "WatchSessions",
    }
)

MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # the server's (gRPC default) receive limit
LONG_STRING_BYTES = 300 * 1024
ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Namespaces made by other tests: t-<8 hex> (conftest), ns-/e-<8 hex> (namespace and etag tests).
_FOREIGN_NAMESPACE_RE = re.compile(r"^[a-z]{1,6}-[0-9a-f]{8}$")
_NAMESPACE_MENTION_RE = re.compile(rf"namespaces/({ID_PATTERN})(?=/|$|[^a-z0-9-])")

# Contract limits (as the protos' comments state them), each tried at, just below and just past
# the limit.
_LIMITS = (63, 128, 200, 256, 512, 2000, 2048, 4096)
BOUNDARY_LENGTHS = tuple(sorted({n + d for n in _LIMITS for d in (-1, 0, 1)}))

MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
NOW_SECONDS = 1_767_225_600  # 2026-01-01T00:00:00Z
MAX_DURATION_SECONDS = 315_576_000_000  # the protobuf Duration range
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

SESSION_FILTER_FIELDS = (
    "agent",
    "user",
    "peer_agent",
    "member",
    "kind",
    "channel",
    "external_conversation_id",
    "enabled",
    "managed",
    "auto_created",
    "labels",
    "create_time",
    "update_time",
    "last_activity_time",
)
PARTICIPANT_FILTER_FIELDS = ("kind", "external_id", "enabled", "managed", "labels", "create_time")
EVENT_FILTER_FIELDS = ("author", "invocation_id", "branch", "event_time", "create_time", "sequence", "labels")
ORDER_FIELDS = ("create_time", "update_time", "last_activity_time", "display_name")
EVENT_ORDER_FIELDS = ("sequence",)
# Requests whose `filter` / `order_by` are in the event grammar (the others: the session one).
EVENT_QUERY_REQUESTS = frozenset({"tether.v1.ListEventsRequest", "tether.v1.PurgeEventsRequest"})
MAX_EVENT_BYTES = 1024 * 1024  # content + state_delta, serialized
MAX_STRUCT_DEPTH = 32

# A few fixed request ids, so that repeats (same and different payloads) happen.
FIXED_REQUEST_IDS = (
    "00000000-0000-4000-8000-000000000001",
    "00000000-0000-4000-8000-000000000002",
    "ABCDEF01-2345-4678-9ABC-DEF012345678",
)


@dataclass(frozen=True)
class World:
    """What the generators aim at: the test's own (scratch) namespace and its resources, and the
    snapshot namespace (named only by read-only requests, or in corrupted form)."""

    scratch: str  # namespace id of the test's own namespace
    snapshot: str  # namespace id whose data must stay intact
    agents: tuple[str, ...] = ()  # participant names in scratch
    users: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()  # session names in scratch
    members: tuple[str, ...] = ()  # member names in scratch
    events: tuple[str, ...] = ()  # event names in scratch
    etags: tuple[str, ...] = ()  # etags seen while building the world
    page_tokens: tuple[str, ...] = ()  # real next_page_tokens of scratch lists
    throwaway: tuple[str, ...] = ()  # empty namespaces (ids) that DeleteNamespace may delete
    snapshot_names: tuple[str, ...] = ()  # resource names in the snapshot namespace
    protected: frozenset[str] = dataclass_field(default_factory=lambda: frozenset({"default"}))

    @property
    def parent(self) -> str:
        return f"namespaces/{self.scratch}"

    @property
    def participants(self) -> tuple[str, ...]:
        return self.agents + self.users

    def is_protected(self, namespace_id: str) -> bool:
        """A namespace no generated write may name: the snapshot, ``default``, other tests'."""
        if namespace_id == self.scratch or namespace_id in self.throwaway:
            return False
        return (
            namespace_id == self.snapshot
            or namespace_id in self.protected
            or _FOREIGN_NAMESPACE_RE.fullmatch(namespace_id) is not None
        )


# --- walking messages ---------------------------------------------------------------------------


def message_type(field: Any) -> Descriptor:
    """The message type of a message field."""
    descriptor: Descriptor | None = field.message_type
    assert descriptor is not None, field.full_name
    return descriptor


def is_map(field: Any) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(message_type(field).GetOptions().map_entry)


def strings_of(message: Message) -> Iterator[str]:
    """Every string in ``message``: fields, repeated fields, map keys and values, nested messages."""
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            yield from (value if descriptor.is_repeated else [value])
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if is_map(descriptor):
                for key, item in value.items():
                    if isinstance(key, str):
                        yield key
                    if isinstance(item, str):
                        yield item
                    elif isinstance(item, Message):
                        yield from strings_of(item)
            elif descriptor.is_repeated:
                for item in value:
                    yield from strings_of(item)
            else:
                yield from strings_of(value)


def may_write_protected(method: str, request: Message, world: World) -> bool:
    """True when ``request`` could modify a protected namespace: a writing RPC (or PurgeSessions)
    whose strings mention ``namespaces/<protected id>``, a DeleteNamespace of the scratch namespace,
    or a PurgeSessions with ``force``."""
    if method in READ_ONLY_RPCS:
        return False
    if method == "PurgeSessions" and getattr(request, "force", False):
        return True
    for text in strings_of(request):
        for match in _NAMESPACE_MENTION_RE.finditer(text):
            namespace_id = match.group(1)
            if world.is_protected(namespace_id):
                return True
            if method == "DeleteNamespace" and namespace_id == world.scratch:
                return True
    if method == "CreateNamespace":
        namespace_id = getattr(request, "namespace_id", "")
        return world.is_protected(namespace_id) or namespace_id == world.scratch
    return False


# --- strings ------------------------------------------------------------------------------------

NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\u202eevil",
    "\u200b",
    "\ufeff",
    "😀",
    "👩\u200d👩\u200d👧\u200d👦",
    "e\u0301",
    "İ",
    "ß",
    "\U0010ffff",
    "\x7f\x1b[31m",
    "'",
    '"',
    "\\",
    "%00",
    "%2F",
    "../..",
    "*",
    "null",
    "NaN",
    "-1",
    "0",
    "' OR '1'='1",
    "); DROP TABLE sessions; --",
    "${jndi:ldap://x}",
    "%s%n%x",
    "<script>",
    "{{7*7}}",
)


def _repeated(unit: str, max_bytes: int) -> Strategy:
    most = max(1, max_bytes // len(unit.encode()))
    return st.integers(min_value=1000, max_value=most).map(lambda n: unit * n)


long_strings: Strategy = st.one_of(
    _repeated("a", LONG_STRING_BYTES),
    _repeated("é", LONG_STRING_BYTES),
    _repeated("😀", LONG_STRING_BYTES),
    _repeated("\x00", LONG_STRING_BYTES),
    _repeated("namespaces/x/", LONG_STRING_BYTES),
)
boundary_strings: Strategy = st.builds(
    lambda n, unit: unit * n, st.sampled_from(BOUNDARY_LENGTHS), st.sampled_from(["a", "é", "😀", "0"])
)
short_text: Strategy = st.text(max_size=24)


def _spliced(base: Strategy) -> Strategy:
    """``base`` with a nasty string inserted somewhere."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text: str = draw(base)
        at = draw(st.integers(min_value=0, max_value=len(text)))
        return text[:at] + draw(st.sampled_from(NASTY_STRINGS)) + text[at:]

    return build()


garbage_text: Strategy = st.one_of(
    st.sampled_from(NASTY_STRINGS), short_text, _spliced(short_text), boundary_strings, long_strings
)
valid_ids: Strategy = st.from_regex(rf"^{ID_PATTERN}$", fullmatch=True)
bad_ids: Strategy = st.sampled_from(
    ["", "A", "a_b", "a.b", "-a", "a-", "a b", "a/b", "é", "x" * 64, "0" * 63 + "-", "😀"]
)
ids: Strategy = st.one_of(valid_ids, bad_ids, st.just("x" * 63), garbage_text)


@st.composite
def corrupted(draw: st.DrawFn, base: Strategy) -> str:
    """``base`` with one character replaced, inserted or removed, or case/space/NUL changes;
    never equal to what it started from."""
    text: str = draw(base)
    how = draw(st.sampled_from(["replace", "insert", "delete", "upper", "space", "nul", "slash"]))
    at = draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))
    char = draw(st.characters(codec="utf-8"))
    if how == "replace" and text:
        result = text[:at] + char + text[at + 1 :]
    elif how == "insert":
        result = text[:at] + char + text[at:]
    elif how == "delete" and text:
        result = text[:at] + text[at + 1 :]
    elif how == "upper":
        result = text.upper()
    elif how == "space":
        result = draw(st.sampled_from([" ", "\t", "\n"])) + text
    elif how == "slash":
        result = text + "/"
    else:
        result = text[:at] + "\x00" + text[at:]
    return result if result != text else text + "x"


def _namespace_ids(world: World, read_only: bool) -> Strategy:
    known = [world.scratch, "fz-missing", *world.throwaway]
    if read_only:
        known += [world.snapshot, "default"]
    return st.one_of(
        st.sampled_from(known), corrupted(st.sampled_from([world.snapshot, world.scratch, "default"])), ids
    )


def _last_segments(names: Sequence[str]) -> list[str]:
    return [name.rsplit("/", 1)[-1] for name in names]


def resource_names(world: World, read_only: bool) -> Strategy:
    """Strings that look like (or almost like) resource names of every kind."""
    namespace = _namespace_ids(world, read_only)
    participant_ids = st.one_of(
        st.sampled_from(_last_segments(world.participants) or ["p"]), st.just("missing"), ids
    )
    session_ids = st.one_of(st.sampled_from(_last_segments(world.sessions) or ["s"]), st.just("missing"), ids)
    event_ids = st.one_of(st.sampled_from(_last_segments(world.events) or ["e"]), st.just("missing"), ids)
    existing = [world.parent, *world.participants, *world.sessions, *world.members, *world.events]
    snapshot = st.sampled_from(list(world.snapshot_names) or [f"namespaces/{world.snapshot}"])
    malformed = st.builds(
        lambda template, name: template.format(name),
        st.sampled_from(
            [
                "{}/",
                "/{}",
                " {}",
                "{} ",
                "{}\x00",
                "{}//",
                "{}/members",
                "{}/events",
                "{}/events/",
                "{}/events/x/events/y",
                "{}/sessions/",
                "{}/widgets/x",
                "projects/{}",
                "namespaces//sessions/{}",
                "namespaces/../{}",
            ]
        ),
        st.sampled_from(existing),
    )
    return st.one_of(
        st.builds("namespaces/{}".format, namespace),
        st.builds("namespaces/{}/participants/{}".format, namespace, participant_ids),
        st.builds("namespaces/{}/sessions/{}".format, namespace, session_ids),
        st.builds("namespaces/{}/sessions/{}/members/{}".format, namespace, session_ids, participant_ids),
        st.builds("namespaces/{}/sessions/{}/events/{}".format, namespace, session_ids, event_ids),
        st.sampled_from(existing),
        snapshot if read_only else corrupted(snapshot),
        corrupted(st.sampled_from(existing)),
        malformed,
        garbage_text,
    )


# --- field-specific strings ---------------------------------------------------------------------

TIMESTAMP_TEXTS = (
    "2024-01-01T00:00:00Z",
    "2024-01-01T00:00:00.123456789Z",
    "2024-01-01T00:00:00.1234567891Z",
    "2024-06-30T12:00:00+02:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-01:00",
    "0000-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T24:00:00Z",
    "2024-01-01T00:00:60Z",
    "2024-01-01",
    "2024-01-01t00:00:00z",
    "1700000000",
    "-1",
)
_FILTER_VALUES = (
    "DIRECT",
    "KIND_DIRECT",
    "group",
    "AGENT_TO_AGENT",
    "TRIGGER",
    "USER",
    "KIND_AGENT",
    "KIND_UNSPECIFIED",
    "UNSPECIFIED",
    "99",
    "true",
    "FALSE",
    "1",
    "-1",
    "0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "1e3",
    "0x10",
    "1_000",
    "1.5",
    "\u0663",  # an Arabic-Indic digit: int() takes it
    "yes",
    "web",
    "*",
    "",
    *TIMESTAMP_TEXTS,
)


def _quoted(text: str, quote: str = '"') -> str:
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def filters(world: World, read_only: bool, fields: Sequence[str] = SESSION_FILTER_FIELDS) -> Strategy:
    """AIP-160 filters: good ones, unknown fields and operators, bad values, deep nesting, garbage."""
    field_names = st.one_of(
        st.sampled_from([*fields, "labels.team", "labels.a-b.c_d", "labels.x"]),
        st.sampled_from(
            [
                *SESSION_FILTER_FIELDS,
                *PARTICIPANT_FILTER_FIELDS,
                *EVENT_FILTER_FIELDS,
                "display_name",
                "name",
                "uid",
                "labels.",
                "content",
                "state_delta",
                "content.text",
            ]
        ),
        st.sampled_from(["labels..x", "Kind", "a.b.c", "x" * 100, "_", "labels.é"]),
    )
    ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">=", ":", "==", "~", "=~", ""])
    raw_values = st.one_of(
        st.sampled_from(_FILTER_VALUES),
        resource_names(world, read_only),
        short_text,
        st.sampled_from(NASTY_STRINGS),
    )
    values = st.one_of(
        raw_values.map(_quoted),
        raw_values.map(lambda v: _quoted(v, "'")),
        st.sampled_from(_FILTER_VALUES),
        st.sampled_from(['"unterminated', "'", '"\\', '"\\u0000"', "\\", "(", ")"]),
    )
    space = st.sampled_from([" ", "", "  ", "\t", "\n"])
    restriction = st.builds(
        lambda f, s1, o, s2, v: f + s1 + o + s2 + v, field_names, space, ops, space, values
    )
    expressions = st.recursive(
        restriction,
        lambda inner: st.one_of(
            st.builds("{} AND {}".format, inner, inner),
            st.builds("{} OR {}".format, inner, inner),
            st.builds("{} {}".format, inner, inner),
            st.builds("NOT {}".format, inner),
            st.builds("-{}".format, inner),
            st.builds("({})".format, inner),
            st.builds("{} and {}".format, inner, inner),
        ),
        max_leaves=6,
    )
    nested = st.builds(
        lambda n, leaf, how: ("(" * n + leaf + ")" * n) if how == "paren" else ("NOT " * n + leaf),
        st.integers(min_value=1, max_value=1000),
        restriction,
        st.sampled_from(["paren", "not"]),
    )
    return st.one_of(
        expressions,
        nested,
        st.sampled_from(["", "*", " * ", "()", "AND", "NOT", "(kind = DIRECT", "kind = DIRECT)", "a b c"]),
        garbage_text,
    )


def order_bys(fields: Sequence[str] = ORDER_FIELDS) -> Strategy:
    keys = st.builds(
        lambda name, direction: f"{name} {direction}".strip(),
        st.one_of(
            st.sampled_from(list(fields)),
            st.sampled_from([*ORDER_FIELDS, *EVENT_ORDER_FIELDS, "uid", "name", "kind", "event_time"]),
            st.sampled_from(["Create_Time", "display_name.x", "Sequence", "sequence.x", ""]),
        ),
        st.sampled_from(["", "asc", "desc", "ASC", "Desc", "up", "asc desc", "😀"]),
    )
    return st.one_of(
        st.lists(keys, min_size=1, max_size=4).map(", ".join),
        st.lists(keys, min_size=1, max_size=3).map(",".join),
        st.sampled_from(
            ["", ",", " , ", "create_time,create_time", "create_time desc,", "sequence,sequence"]
        ),
        garbage_text,
    )


def forge_page_token(binding: Sequence[str], values: Sequence[str]) -> str:
    """A page token in the server's format with a correct fingerprint for ``binding`` (the
    parameters the token is bound to, the canonical order last)."""
    canonical = json.dumps([list(binding), list(values)], separators=(",", ":"), ensure_ascii=False)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    payload = {"v": list(values), "f": fingerprint}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSOR_VALUES = (
    "2024-01-01T00:00:00.000000+00:00",
    "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59-05:00",
    "2024-01-01T00:00:00",
    "not a time",
    "",
    "\x00",
    "a\x00b",
    "00000000-0000-0000-0000-000000000000",
    "' OR 1=1 --",
    "é" * 40,
    "x" * 300,
)
_SURROGATE = "@@SURROGATE@@"


def _token_of(payload: object) -> str:
    raw = json.dumps(payload, separators=(",", ":")).replace(_SURROGATE, "\\ud800").encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return None


@st.composite
def _edited_token(draw: st.DrawFn, tokens: Sequence[str]) -> str:
    """A real token whose JSON was edited: cursor values replaced (also by a lone surrogate
    escape), values added or removed, the fingerprint changed, or the shape broken."""
    payload = _decode_token(draw(st.sampled_from(tokens)))
    if not isinstance(payload, dict) or not isinstance(payload.get("v"), list):
        payload = {"v": ["x", "y"], "f": "0" * 32}
    values: list[object] = list(payload["v"])
    how = draw(st.sampled_from(["value", "surrogate", "add", "drop", "fingerprint", "shape"]))
    if how in ("value", "surrogate") and values:
        at = draw(st.integers(min_value=0, max_value=len(values) - 1))
        values[at] = _SURROGATE if how == "surrogate" else draw(st.sampled_from(CURSOR_VALUES))
    elif how == "add":
        values.append(draw(st.sampled_from(CURSOR_VALUES)))
    elif how == "drop" and values:
        values.pop()
    elif how == "fingerprint":
        payload["f"] = draw(st.sampled_from(["", "0" * 32, None, 1, [], "x" * 5000]))
    elif how == "shape":
        shaped: object = draw(
            st.sampled_from([[], None, 1, "v", {"v": None}, {"v": [1, 2]}, {"v": [[], {}]}, [[[[[]]]]]])
        )
        return _token_of(shaped)
    payload["v"] = values
    return _token_of(payload)


def page_tokens(world: World) -> Strategy:
    """Real, edited and random page tokens (see :func:`forged_page_tokens` for forged ones)."""
    real = list(world.page_tokens) or [forge_page_token(["x"], ["y"])]
    return st.one_of(
        st.sampled_from(real),
        _edited_token(real),
        st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        st.sampled_from(["", "=", "====", "!!!", "eyJ2IjpbXX0", "e30", "bnVsbA"]),
        st.builds(lambda n: "A" * n, st.sampled_from([4095, 4096, 4097, 100_000])),
        garbage_text,
    )


def etags(world: World) -> Strategy:
    return st.one_of(
        st.sampled_from(list(world.etags) or ['"00000000-1"']),
        st.sampled_from(
            [
                "",
                '"00000000-1"',
                'W/"00000000-1"',
                '"deadbeef-999999999999999999"',
                '"deadbeef-9999999999999999999"',
                '"DEADBEEF-1"',
                '"deadbeef--1"',
                "*",
                "deadbeef-1",
            ]
        ),
        corrupted(st.sampled_from(list(world.etags) or ['"00000000-1"'])),
        garbage_text,
    )


request_ids: Strategy = st.one_of(
    st.uuids().map(str),
    st.sampled_from(FIXED_REQUEST_IDS),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    garbage_text,
)
channels: Strategy = st.one_of(
    st.sampled_from(["web", "slack", "feishu", "", "Web", "a" * 32, "a" * 33, "1abc", "a b", "a_b-c", "-"]),
    garbage_text,
)
label_keys: Strategy = st.one_of(
    st.from_regex(r"^[a-z][a-z0-9_.-]{0,62}$", fullmatch=True),
    st.sampled_from(["", "A", "1a", "a" * 63, "a" * 64, "a b", "a/b", "é", "a\x00", "_a", "team"]),
    garbage_text,
)
label_values: Strategy = st.one_of(short_text, st.sampled_from(["", "\x00", "v"]), boundary_strings)
label_maps: Strategy = st.one_of(
    st.dictionaries(label_keys, label_values, max_size=4),
    st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([63, 64, 65, 200])),
)


BRANCHES = (
    "root",
    "root.planner",
    "a-b_c.D9",
    "",
    ".",
    "a..b",
    ".a",
    "a.",
    "a b",
    "a/b",
    "root.é",
    "a\x00",
    "root:tool",
)
branches: Strategy = st.one_of(
    st.sampled_from(BRANCHES),
    st.from_regex(r"^[A-Za-z0-9_-]{1,8}(\.[A-Za-z0-9_-]{1,8}){0,4}$", fullmatch=True),
    st.builds(lambda n, unit: ".".join([unit] * n), st.sampled_from([85, 86, 128, 129]), st.just("ab")),
    st.builds(lambda n: "a" * n, st.sampled_from([255, 256, 257])),
)
_NAME_FIELDS = (
    "name",
    "parent",
    "agent",
    "user",
    "peer_agent",
    "participant",
    "names",
    "purge_sample",
    "author",
)


def _strings_for(name: str, world: World, read_only: bool, owner: str = "") -> Strategy:
    """The field-aware part of a string field's values (by the field's name, and the full name of
    the message that holds it)."""
    events = owner in EVENT_QUERY_REQUESTS
    if name in _NAME_FIELDS:
        return resource_names(world, read_only)
    if name == "invocation_id":
        return st.one_of(short_text, boundary_strings, st.sampled_from(NASTY_STRINGS))
    if name.endswith("_id") and name not in ("external_id", "external_conversation_id", "request_id"):
        return ids
    if name == "branch":
        return branches
    if name == "filter":
        return filters(world, read_only, EVENT_FILTER_FIELDS if events else SESSION_FILTER_FIELDS)
    if name == "order_by":
        return order_bys(EVENT_ORDER_FIELDS if events else ORDER_FIELDS)
    if name in ("page_token", "next_page_token"):
        return page_tokens(world)
    if name == "etag":
        return etags(world)
    if name == "request_id":
        return request_ids
    if name == "channel":
        return channels
    return garbage_text


def string_values(name: str, world: World, read_only: bool, owner: str = "") -> Strategy:
    return st.one_of(
        _strings_for(name, world, read_only, owner), garbage_text, resource_names(world, read_only)
    )


# --- scalars and well-known types ---------------------------------------------------------------


def _integers(bounds: tuple[int, int], edges: Sequence[int]) -> Strategy:
    low, high = bounds
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high] + [low, high]),
        st.integers(min_value=-5, max_value=1100),
        st.integers(min_value=low, max_value=high),
    )


int32s = _integers(INT32, (0, 1, -1, 2, 50, 999, 1000, 1001, 2**16))
int64s = _integers(INT64, (0, 1, -1, 2, 1000, 2**31, 2**53 + 1))


def enum_values(descriptor: FieldDescriptor) -> Strategy:
    assert descriptor.enum_type is not None
    known = [value.number for value in descriptor.enum_type.values]
    return st.one_of(st.sampled_from(known), st.integers(min_value=-3, max_value=12), st.sampled_from(INT32))


timestamps: Strategy = st.builds(
    lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
    st.one_of(
        st.sampled_from(
            [MIN_SECONDS - 1, MIN_SECONDS, MAX_SECONDS, MAX_SECONDS + 1, 0, -1, NOW_SECONDS, *INT64]
        ),
        st.integers(min_value=NOW_SECONDS - 10**8, max_value=NOW_SECONDS + 10**8),
        st.integers(*INT64),
    ),
    st.one_of(
        st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1, *INT32]),
        st.integers(min_value=0, max_value=999_999_999),
        st.integers(*INT32),
    ),
)
durations: Strategy = st.builds(
    lambda seconds, nanos: duration_pb2.Duration(seconds=seconds, nanos=nanos),
    st.one_of(
        st.sampled_from(
            [
                0,
                1,
                -1,
                3600,
                3_155_760_000,  # 100 years of 365.25 days
                3_155_760_001,
                MAX_DURATION_SECONDS,
                MAX_DURATION_SECONDS + 1,
                -MAX_DURATION_SECONDS - 1,
                *INT64,
            ]
        ),
        st.integers(min_value=-(10**6), max_value=10**10),
        st.integers(*INT64),
    ),
    st.one_of(
        st.sampled_from([0, 1, -1, 999_999_999, -999_999_999, 1_000_000_000, *INT32]),
        st.integers(*INT32),
    ),
)

_RESOURCE_FIELDS = sorted(
    {
        f.name
        for d in (
            session_pb2.Session,
            participant_pb2.Participant,
            session_pb2.Member,
            namespace_pb2.Namespace,
        )
        for f in d.DESCRIPTOR.fields
    }
)
mask_paths: Strategy = st.one_of(
    st.sampled_from([*_RESOURCE_FIELDS, "*"]),
    st.sampled_from(["", "labels.team", "session.display_name", "display_name,labels", "DISPLAY_NAME"]),
    st.sampled_from(["metadata.x", "update_mask", "x" * 300, "\x00", " role", "*.*"]),
    garbage_text,
)
field_masks: Strategy = st.lists(mask_paths, max_size=4).map(lambda p: field_mask_pb2.FieldMask(paths=p))

json_numbers: Strategy = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 2.0**53 + 1]),
)
struct_keys: Strategy = st.one_of(st.text(max_size=8), st.sampled_from(["", "\x00", "a.b", "$x", "😀"]))
json_leaves: Strategy = st.one_of(
    st.none(), st.booleans(), json_numbers, st.text(max_size=16), st.sampled_from(NASTY_STRINGS)
)
json_values: Strategy = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(struct_keys, inner, max_size=3)),
    max_leaves=10,
)


def _nested(depth: int, leaf: object) -> dict[str, object]:
    value: object = leaf
    for _ in range(depth):
        value = {"a": value}
    assert isinstance(value, dict)
    return value


def _struct_of(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


json_objects: Strategy = st.one_of(
    st.dictionaries(struct_keys, json_values, max_size=4),
    # Sizes around the limits: metadata 64 KiB, session_state 256 KiB, an event's content and
    # state_delta 1 MiB together.
    st.builds(
        lambda n: {"blob": "x" * n},
        st.sampled_from(
            [
                64 * 1024 - 16,
                64 * 1024 + 16,
                256 * 1024 + 16,
                MAX_EVENT_BYTES // 2 + 16,
                MAX_EVENT_BYTES - 64,
                MAX_EVENT_BYTES + 16,
            ]
        ),
    ),
    # Deep nesting, to one level past the service's limit of 32; past ~32 levels the whole request
    # nears protobuf's recursion limit of 100.
    st.builds(_nested, st.integers(min_value=1, max_value=MAX_STRUCT_DEPTH + 1), json_leaves),
)
structs: Strategy = json_objects.map(_struct_of)


def _value_of(value: object) -> struct_pb2.Value:
    message = struct_pb2.Value()
    struct = _struct_of({"v": value})
    message.CopyFrom(struct.fields["v"])
    return message


WELL_KNOWN: dict[str, Strategy] = {
    "google.protobuf.Timestamp": timestamps,
    "google.protobuf.Duration": durations,
    "google.protobuf.FieldMask": field_masks,
    "google.protobuf.Struct": structs,
    "google.protobuf.Value": json_values.map(_value_of),
    "google.protobuf.ListValue": st.lists(json_values, max_size=3).map(
        lambda items: _struct_of({"l": items}).fields["l"].list_value
    ),
}


# --- messages from descriptors ------------------------------------------------------------------

MAX_DEPTH = 3


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of a tether.v1 (or well-known) message."""
    from google.protobuf import message_factory

    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def field_values(field: FieldDescriptor, world: World, read_only: bool, depth: int) -> Strategy:
    """Arbitrary values of one (non-repeated view of a) field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        owner = field.containing_type.full_name if field.containing_type is not None else ""
        return string_values(field.name, world, read_only, owner)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_values(field)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return int32s
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return int64s
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(min_value=0, max_value=2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(min_value=0, max_value=2**64 - 1)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return json_numbers
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return messages(message_type(field), world, read_only, depth + 1)


def _is_synthetic(field: FieldDescriptor) -> bool:
    """A proto3 ``optional`` field (its oneof is a synthetic one of one field)."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name == f"_{field.name}"


def set_field(message: Message, field: FieldDescriptor, value: object) -> None:
    """Set ``field`` of ``message`` (a repeated field or map takes a list or dict)."""
    if is_map(field):
        target = getattr(message, field.name)
        target.clear()
        target.update(value)
    elif field.is_repeated:
        target = getattr(message, field.name)
        del target[:]
        target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def repeated_values(field: FieldDescriptor, world: World, read_only: bool, depth: int) -> Strategy:
    if is_map(field):
        return label_maps
    single = field_values(field, world, read_only, depth)
    if field.is_repeated:
        return st.lists(single, max_size=4)
    return single


def messages(descriptor: Descriptor, world: World, read_only: bool, depth: int = 0) -> Strategy:
    """Arbitrary messages of ``descriptor``: each field set or not (at most one per oneof);
    nested messages stop at :data:`MAX_DEPTH`."""
    if descriptor.full_name in WELL_KNOWN:
        return WELL_KNOWN[descriptor.full_name]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class(descriptor)()
        chosen = {
            oneof.name: draw(st.sampled_from(["", *(f.name for f in oneof.fields)]))
            for oneof in descriptor.oneofs
            if not (len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}")
        }
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and not _is_synthetic(field):
                if chosen[oneof.name] != field.name:
                    continue
            elif not draw(st.booleans()):
                continue
            if field.type == FieldDescriptor.TYPE_MESSAGE and not is_map(field):
                wkt = message_type(field).full_name in WELL_KNOWN
                if depth >= MAX_DEPTH and not wkt:
                    continue
            set_field(message, field, draw(repeated_values(field, world, read_only, depth)))
        return message

    return build()


# --- generic strategies per RPC -----------------------------------------------------------------


def _guarded(method: str, world: World, strategy: Strategy) -> Strategy:
    def fix(request: Message) -> Message:
        if method == "PurgeSessions":
            setattr(request, "force", False)  # noqa: B010 (a plain Message has no `force`)
        return request

    return strategy.map(fix).filter(lambda request: not may_write_protected(method, request, world))


def arbitrary_requests(method: str, world: World) -> Strategy:
    """Requests built from the descriptor of ``method``'s request message alone."""
    descriptor = METHODS[method].input_type
    return _guarded(method, world, messages(descriptor, world, method in READ_ONLY_RPCS))


def _leaf_fields(message: Message, depth: int = 0) -> list[tuple[Message, Any]]:
    """Fields ``message`` could have perturbed: all its own, and those of set nested messages."""
    found: list[tuple[Message, Any]] = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        is_plain_message = (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.is_repeated
            and message_type(field).full_name not in WELL_KNOWN
        )
        if is_plain_message and message.HasField(field.name) and depth < MAX_DEPTH:
            found.extend(_leaf_fields(getattr(message, field.name), depth + 1))
    return found


def perturbed(method: str, world: World, valid: Strategy) -> Strategy:
    """``valid`` requests with one or two fields replaced by arbitrary values, edited, or cleared."""
    read_only = method in READ_ONLY_RPCS

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        request: Message = draw(valid)
        for _ in range(draw(st.integers(min_value=1, max_value=2))):
            candidates = _leaf_fields(request)
            target, field = candidates[draw(st.integers(min_value=0, max_value=len(candidates) - 1))]
            how = draw(st.sampled_from(["replace", "replace", "edit", "clear"]))
            current = getattr(target, field.name)
            if how == "clear":
                target.ClearField(field.name)
            elif how == "edit" and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
                setattr(target, field.name, draw(corrupted(st.just(current))))
            else:
                set_field(target, field, draw(repeated_values(field, world, read_only, 0)))
        return request

    return build()


def near_valid_requests(method: str, world: World) -> Strategy:
    """Correct requests for ``method`` (see :data:`VALID`), some left intact, most perturbed."""
    valid = VALID[method](world)
    return _guarded(method, world, st.one_of(valid, perturbed(method, world, valid)))


def requests(method: str, world: World) -> Strategy:
    """Arbitrary and near-valid requests for ``method``."""
    return st.one_of(arbitrary_requests(method, world), near_valid_requests(method, world))


# --- valid requests per RPC ---------------------------------------------------------------------

plain_text: Strategy = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
fresh_ids: Strategy = st.from_regex(r"^fz-[a-z0-9]{6,10}$", fullmatch=True)
good_labels: Strategy = st.dictionaries(
    st.from_regex(r"^[a-z][a-z0-9_.-]{0,8}$", fullmatch=True), plain_text, max_size=3
)
good_structs: Strategy = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000).map(float), plain_text),
    max_size=3,
).map(_struct_of)
good_times: Strategy = st.integers(min_value=NOW_SECONDS - 10**7, max_value=NOW_SECONDS + 10**7).map(
    lambda s: timestamp_pb2.Timestamp(seconds=s)
)
good_request_ids: Strategy = st.one_of(st.just(""), st.uuids().map(str))
page_sizes: Strategy = st.sampled_from([0, 1, 2, 10, 1000, 5000])


def _good_filters(world: World, participants: bool) -> Strategy:
    if participants:
        return st.sampled_from(
            [
                "",
                "*",
                "kind = USER",
                "kind = KIND_AGENT AND enabled = true",
                'external_id = "x"',
                "labels.team:*",
                'labels.team = "a" OR NOT managed = true',
                "create_time < 2100-01-01T00:00:00Z",
            ]
        )
    agent = world.agents[0] if world.agents else f"{world.parent}/participants/a"
    return st.sampled_from(
        [
            "",
            "*",
            "kind = DIRECT",
            f'agent = "{agent}"',
            f'member = "{agent}"',
            "labels.team:*",
            'labels.team = "a" AND enabled = true',
            "channel = web OR channel = slack",
            "NOT auto_created = true",
            "last_activity_time > 2020-01-01T00:00:00Z",
        ]
    )


_ROLES = list(session_pb2.Member.Role.values())


def _pick(names: Sequence[str], fallback: str) -> Strategy:
    return st.sampled_from(list(names) or [fallback])


def _participants(world: World) -> Strategy:
    return _pick(world.participants, f"{world.parent}/participants/missing")


def _sessions(world: World) -> Strategy:
    return _pick(world.sessions, f"{world.parent}/sessions/missing")


def _members(world: World) -> Strategy:
    return _pick(world.members, f"{world.parent}/sessions/missing/members/missing")


def _readable_namespaces(world: World) -> Strategy:
    return st.sampled_from([world.parent, f"namespaces/{world.snapshot}", "namespaces/default"])


def _new_participant() -> Strategy:
    return st.builds(
        participant_pb2.Participant,
        kind=st.sampled_from([participant_pb2.Participant.KIND_USER, participant_pb2.Participant.KIND_AGENT]),
        display_name=plain_text,
        avatar_uri=st.sampled_from(["", "https://example.com/a.png"]),
        external_id=st.sampled_from(["", "ext-1", "ext-2", "ext-3"]),
        labels=good_labels,
        metadata=st.one_of(st.none(), good_structs),
        enabled=st.one_of(st.none(), st.booleans()),
    )


@st.composite
def _new_session(draw: st.DrawFn, world: World, *, with_refs: bool = True) -> session_pb2.Session:
    kind = draw(st.sampled_from(list(session_pb2.Session.Kind.values())[1:]))
    agents = list(world.agents) or [f"{world.parent}/participants/a"]
    session = session_pb2.Session(
        kind=kind,
        display_name=draw(plain_text),
        description=draw(plain_text),
        labels=draw(good_labels),
        channel=draw(st.sampled_from(["", "web", "slack"])),
        external_conversation_id=draw(st.sampled_from(["", "c-1", "c-2", "c-3"])),
    )
    if with_refs:
        session.agent = draw(st.sampled_from(agents))
    if kind == session_pb2.Session.KIND_DIRECT and with_refs:
        session.user = draw(_pick(world.users, f"{world.parent}/participants/u"))
    if kind == session_pb2.Session.KIND_AGENT_TO_AGENT and with_refs:
        session.peer_agent = draw(st.sampled_from(agents[::-1]))
    if kind == session_pb2.Session.KIND_GROUP:
        session.group_name = draw(plain_text)
    if draw(st.booleans()):
        session.session_state.CopyFrom(draw(good_structs))
    expiry = draw(st.sampled_from(["none", "ttl", "expire_time"]))
    if expiry == "ttl":
        session.ttl.CopyFrom(duration_pb2.Duration(seconds=draw(st.integers(60, 86400 * 30))))
    elif expiry == "expire_time":
        session.expire_time.CopyFrom(timestamp_pb2.Timestamp(seconds=NOW_SECONDS + 10**8))
    return session


def _masks(paths: Sequence[str]) -> Strategy:
    return st.one_of(
        st.none(),
        st.just(field_mask_pb2.FieldMask(paths=["*"])),
        st.lists(st.sampled_from(list(paths)), min_size=1, max_size=3, unique=True).map(
            lambda p: field_mask_pb2.FieldMask(paths=p)
        ),
    )


TIME_CURSORS = (
    "2024-01-01T00:00:00.000000+00:00",
    "1970-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2024-01-01T00:00:00+14:00",
)
TEXT_CURSORS = ("", "\x00", "a\x00b", "é" * 40, "x" * 300, "' OR 1=1 --", "\U0010ffff", "😀", "zzzz")
# Integer cursors (an event's sequence): in range, past int64 either way, and not integers at all.
GOOD_INTEGER_CURSORS = ("0", "1", "2", "-1", str(INT64[1]), str(INT64[0]))
BAD_INTEGER_CURSORS = (
    str(INT64[1] + 1),
    str(INT64[0] - 1),
    "9" * 100,
    "1.5",
    "1e3",
    "0x10",
    "NaN",
    "",
    " ",
    "1 OR 1=1",
    "\x00",
    "😀",
)
INTEGER_CURSORS = GOOD_INTEGER_CURSORS + BAD_INTEGER_CURSORS
_CURSORS = {"t": TIME_CURSORS, "s": TEXT_CURSORS, "i": INTEGER_CURSORS}


def forged_page_tokens(binding: Sequence[str], keys: str) -> Strategy:
    """Tokens with a valid fingerprint for ``binding`` whose cursor values are hostile; ``keys`` has a
    letter per ordering key: ``t`` a timestamp, ``s`` a string, ``i`` an integer (the last is the
    tie-breaker)."""
    values = [st.sampled_from(_CURSORS[key]) for key in keys]
    return st.tuples(*values).map(lambda cursor: forge_page_token(binding, cursor))


# order_by -> (canonical order, cursor keys) for the orders the valid List requests use.
_PARTICIPANT_ORDERS = {
    "": ("create_time desc", "ts"),
    "create_time": ("create_time asc", "ts"),
    "display_name desc, update_time": ("display_name desc, update_time asc", "sts"),
}
_SESSION_ORDERS = {
    "": ("last_activity_time desc", "ts"),
    "update_time desc": ("update_time desc", "ts"),
    "display_name desc, create_time": ("display_name desc, create_time asc", "sts"),
}


@st.composite
def _valid_list(draw: st.DrawFn, world: World, participants: bool) -> Message:
    """A List{Participants,Sessions} request; its token is real, random, or forged for exactly
    this request's parameters (so that its hostile cursor values reach the query)."""
    orders = _PARTICIPANT_ORDERS if participants else _SESSION_ORDERS
    parent = draw(_readable_namespaces(world))
    filter_ = draw(_good_filters(world, participants=participants))
    order_by = draw(st.sampled_from(sorted(orders)))
    show_deleted = draw(st.booleans())
    canonical, keys = orders[order_by]
    binding = [parent, filter_, str(show_deleted), canonical]
    token = draw(st.one_of(st.just(""), page_tokens(world), forged_page_tokens(binding, keys)))
    cls = pb.ListParticipantsRequest if participants else pb.ListSessionsRequest
    request: Message = cls(
        parent=parent,
        page_size=draw(page_sizes),
        page_token=token,
        filter=filter_,
        order_by=order_by,
        show_deleted=show_deleted,
    )
    return request


@st.composite
def _valid_list_members(draw: st.DrawFn, world: World) -> pb.ListMembersRequest:
    parent = draw(_sessions(world))
    forged = forged_page_tokens([parent, "join_time asc"], "ts")
    return pb.ListMembersRequest(
        parent=parent,
        page_size=draw(page_sizes),
        page_token=draw(st.one_of(st.just(""), page_tokens(world), forged)),
    )


def _valid_create_namespace(world: World) -> Strategy:
    return st.builds(
        pb.CreateNamespaceRequest,
        namespace_id=fresh_ids,
        namespace=st.builds(namespace_pb2.Namespace, display_name=plain_text, labels=good_labels),
        request_id=good_request_ids,
        validate_only=st.booleans(),
    )


_PARTICIPANT_MUTABLE = (
    "display_name",
    "avatar_uri",
    "external_id",
    "labels",
    "metadata",
    "enabled",
    "managed",
)
_SESSION_MUTABLE = (
    "display_name",
    "description",
    "channel",
    "external_conversation_id",
    "group_name",
    "enabled",
    "managed",
    "labels",
    "session_state",
    "expire_time",
    "ttl",
)


@st.composite
def _valid_update_participant(draw: st.DrawFn, world: World) -> pb.UpdateParticipantRequest:
    participant = draw(_new_participant())
    participant.ClearField("kind")
    participant.name = draw(_participants(world))
    request = pb.UpdateParticipantRequest(participant=participant)
    mask = draw(_masks(_PARTICIPANT_MUTABLE))
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    return request


@st.composite
def _valid_update_session(draw: st.DrawFn, world: World) -> pb.UpdateSessionRequest:
    session = draw(_new_session(world, with_refs=False))
    session.ClearField("kind")
    session.name = draw(_sessions(world))
    request = pb.UpdateSessionRequest(session=session)
    mask = draw(_masks(_SESSION_MUTABLE))
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    return request


@st.composite
def _valid_find_or_create_session(draw: st.DrawFn, world: World) -> pb.FindOrCreateSessionRequest:
    agents = list(world.agents) or [f"{world.parent}/participants/a"]
    request = pb.FindOrCreateSessionRequest(
        parent=world.parent,
        undelete_if_deleted=draw(st.booleans()),
        request_id=draw(good_request_ids),
    )
    if draw(st.booleans()):
        request.external_conversation.agent = draw(st.sampled_from(agents))
        request.external_conversation.channel = draw(st.sampled_from(["", "web", "slack"]))
        request.external_conversation.conversation_id = draw(st.sampled_from(["c-1", "c-2", "c-9"]))
        if draw(st.booleans()):
            request.session.user = draw(_pick(world.users, f"{world.parent}/participants/u"))
    else:
        first, second = draw(st.permutations(agents))[:2] if len(agents) > 1 else (agents[0], agents[0])
        request.agent_pair.agent = first
        request.agent_pair.peer_agent = second
    if draw(st.booleans()):
        request.session.display_name = draw(plain_text)
        request.session.labels.update(draw(good_labels))
    return request


@st.composite
def _valid_update_member(draw: st.DrawFn, world: World) -> pb.UpdateMemberRequest:
    request = pb.UpdateMemberRequest(
        member=session_pb2.Member(name=draw(_members(world)), role=draw(st.sampled_from(_ROLES[1:])))
    )
    if draw(st.booleans()):
        request.update_mask.paths.append("role")
    return request


def _valid_batch_get(world: World) -> Strategy:
    names = _sessions(world)
    return st.builds(
        pb.BatchGetSessionsRequest,
        parent=st.just(world.parent),
        names=st.one_of(
            st.lists(names, min_size=1, max_size=5),
            st.builds(lambda name, n: [name] * n, names, st.sampled_from([1000, 1001])),
        ),
    )


# --- valid event requests ----------------------------------------------------------------------

_EVENT_ORDERS = {"": "sequence asc", "sequence": "sequence asc", "sequence desc": "sequence desc"}


def _events(world: World) -> Strategy:
    return _pick(world.events, f"{world.parent}/sessions/missing/events/missing")


def _good_event_filters(world: World) -> Strategy:
    user = world.users[0] if world.users else f"{world.parent}/participants/u"
    return st.sampled_from(
        [
            "*",
            "sequence > 1",
            "sequence >= 1 AND sequence <= 2",
            f'author = "{user}"',
            'invocation_id = "inv-1"',
            'branch = "root.planner"',
            "labels.team:*",
            'labels.team = "a" OR NOT sequence = 1',
            "event_time > 2020-01-01T00:00:00Z",
            "create_time < 2100-01-01T00:00:00Z",
        ]
    )


@st.composite
def _new_event(draw: st.DrawFn, world: World) -> event_pb2.Event:
    event = event_pb2.Event(
        author=draw(st.one_of(st.just(""), _participants(world))),
        invocation_id=draw(st.sampled_from(["", "inv-1", "inv-2"])),
        branch=draw(st.sampled_from(["", "root", "root.planner"])),
        labels=draw(good_labels),
    )
    if draw(st.booleans()):
        event.content.CopyFrom(draw(good_structs))
    if draw(st.booleans()):
        event.state_delta.CopyFrom(draw(good_structs))
    if draw(st.booleans()):
        event.event_time.CopyFrom(draw(good_times))
    return event


@st.composite
def _valid_append_event(draw: st.DrawFn, world: World) -> pb.AppendEventRequest:
    """An append by session name, or by key (a conversation or an agent pair) into the scratch
    namespace, by an author named, found by key, or none."""
    agents = list(world.agents) or [f"{world.parent}/participants/a"]
    request = pb.AppendEventRequest(
        event_id=draw(st.one_of(st.just(""), fresh_ids)),
        request_id=draw(good_request_ids),
        event=draw(_new_event(world)),
    )
    how = draw(st.sampled_from(["name", "name", "conversation", "pair"]))
    if how == "name":
        request.parent = draw(_sessions(world))
    else:
        request.parent = world.parent
        if how == "conversation":
            request.external_conversation.agent = draw(st.sampled_from(agents))
            request.external_conversation.channel = draw(st.sampled_from(["", "web", "slack"]))
            request.external_conversation.conversation_id = draw(st.sampled_from(["c-1", "c-2", "c-9"]))
        else:
            first, second = draw(st.permutations(agents))[:2] if len(agents) > 1 else (agents[0], agents[0])
            request.agent_pair.agent = first
            request.agent_pair.peer_agent = second
        if draw(st.booleans()):
            request.session.display_name = draw(plain_text)
            request.session.labels.update(draw(good_labels))
    if not request.event.author and draw(st.booleans()):
        request.author_key.kind = draw(
            st.sampled_from([participant_pb2.Participant.KIND_USER, participant_pb2.Participant.KIND_AGENT])
        )
        request.author_key.external_id = draw(st.sampled_from(["a1-ext", "u1-ext", "ext-1", "ext-9"]))
        if draw(st.booleans()):
            request.author_key.participant.display_name = draw(plain_text)
    if draw(st.booleans()):
        request.expected_last_sequence = draw(st.sampled_from([0, 1, 2, 3, 10**12]))
    return request


@st.composite
def _valid_list_events(draw: st.DrawFn, world: World) -> pb.ListEventsRequest:
    """A ListEvents request; its token is real, random, or forged for exactly this request's
    parameters (so that its hostile cursor reaches the query)."""
    snapshot_sessions = [n for n in world.snapshot_names if "/sessions/" in n and n.count("/") == 3]
    parent = draw(st.one_of(_sessions(world), _pick(snapshot_sessions, f"namespaces/{world.snapshot}")))
    filter_ = draw(st.one_of(st.just(""), _good_event_filters(world)))
    order_by = draw(st.sampled_from(sorted(_EVENT_ORDERS)))
    forged = forged_page_tokens([parent, filter_, _EVENT_ORDERS[order_by]], "i")
    return pb.ListEventsRequest(
        parent=parent,
        page_size=draw(page_sizes),
        page_token=draw(st.one_of(st.just(""), page_tokens(world), forged)),
        filter=filter_,
        order_by=order_by,
    )


VALID: dict[str, Callable[[World], Strategy]] = {
    "CreateNamespace": _valid_create_namespace,
    "GetNamespace": lambda w: st.builds(pb.GetNamespaceRequest, name=_readable_namespaces(w)),
    "ListNamespaces": lambda w: st.builds(
        pb.ListNamespacesRequest,
        page_size=page_sizes,
        page_token=st.one_of(page_tokens(w), forged_page_tokens(["namespaces", "name asc"], "ss")),
    ),
    "DeleteNamespace": lambda w: st.builds(
        pb.DeleteNamespaceRequest,
        name=st.sampled_from([f"namespaces/{n}" for n in w.throwaway] or ["namespaces/fz-missing"]),
        force=st.booleans(),
        etag=st.one_of(st.just(""), etags(w)),
    ),
    "CreateParticipant": lambda w: st.builds(
        pb.CreateParticipantRequest,
        parent=st.just(w.parent),
        participant_id=st.one_of(st.just(""), fresh_ids),
        participant=_new_participant(),
        request_id=good_request_ids,
        validate_only=st.booleans(),
    ),
    "GetParticipant": lambda w: st.builds(
        pb.GetParticipantRequest,
        name=st.one_of(_participants(w), _pick(w.snapshot_names, f"namespaces/{w.snapshot}")),
    ),
    "ListParticipants": lambda w: _valid_list(w, participants=True),
    "UpdateParticipant": _valid_update_participant,
    "DeleteParticipant": lambda w: st.builds(
        pb.DeleteParticipantRequest, name=_participants(w), etag=st.one_of(st.just(""), etags(w))
    ),
    "UndeleteParticipant": lambda w: st.builds(
        pb.UndeleteParticipantRequest, name=_participants(w), etag=st.one_of(st.just(""), etags(w))
    ),
    "FindOrCreateParticipant": lambda w: st.builds(
        pb.FindOrCreateParticipantRequest,
        parent=st.just(w.parent),
        kind=st.sampled_from([1, 2]),
        external_id=st.sampled_from(["ext-1", "ext-2", "ext-9"]),
        participant=st.one_of(st.none(), st.builds(participant_pb2.Participant, display_name=plain_text)),
        request_id=good_request_ids,
    ),
    "CreateSession": lambda w: st.builds(
        pb.CreateSessionRequest,
        parent=st.just(w.parent),
        session_id=st.one_of(st.just(""), fresh_ids),
        session=_new_session(w),
        request_id=good_request_ids,
        validate_only=st.booleans(),
    ),
    "GetSession": lambda w: st.builds(
        pb.GetSessionRequest,
        name=st.one_of(_sessions(w), _pick(w.snapshot_names, f"namespaces/{w.snapshot}")),
    ),
    "BatchGetSessions": _valid_batch_get,
    "ListSessions": lambda w: _valid_list(w, participants=False),
    "UpdateSession": _valid_update_session,
    "DeleteSession": lambda w: st.builds(
        pb.DeleteSessionRequest, name=_sessions(w), etag=st.one_of(st.just(""), etags(w))
    ),
    "UndeleteSession": lambda w: st.builds(
        pb.UndeleteSessionRequest, name=_sessions(w), etag=st.one_of(st.just(""), etags(w))
    ),
    "PurgeSessions": lambda w: st.builds(
        pb.PurgeSessionsRequest, parent=st.just(w.parent), filter=_good_filters(w, participants=False)
    ),
    "FindOrCreateSession": _valid_find_or_create_session,
    "RecordActivity": lambda w: st.builds(
        pb.RecordActivityRequest, name=_sessions(w), activity_time=st.one_of(st.none(), good_times)
    ),
    "AddMember": lambda w: st.builds(
        pb.AddMemberRequest,
        parent=_sessions(w),
        member=st.builds(session_pb2.Member, participant=_participants(w), role=st.sampled_from(_ROLES)),
        request_id=good_request_ids,
    ),
    "UpdateMember": _valid_update_member,
    "RemoveMember": lambda w: st.builds(pb.RemoveMemberRequest, name=_members(w)),
    "ListMembers": _valid_list_members,
    "AppendEvent": _valid_append_event,
    "GetEvent": lambda w: st.builds(
        pb.GetEventRequest,
        name=st.one_of(_events(w), _pick(w.snapshot_names, f"namespaces/{w.snapshot}")),
    ),
    "ListEvents": _valid_list_events,
    "DeleteEvent": lambda w: st.builds(pb.DeleteEventRequest, name=_events(w)),
    "PurgeEvents": lambda w: st.builds(
        pb.PurgeEventsRequest, parent=_sessions(w), filter=_good_event_filters(w), force=st.booleans()
    ),
    "WatchSessions": lambda w: st.builds(
        pb.WatchSessionsRequest,
        parent=st.just(w.parent),
        filter=_good_filters(w, participants=False),
        start_revision=st.sampled_from([0, 0, 1, 2, 10**12]),
    ),
}


# --- one known defect, one precise answer (the event RPCs) --------------------------------------


@dataclass(frozen=True)
class Defective:
    """A request with exactly one known defect and the error it must get: ``code`` (a
    ``grpc.StatusCode`` name), ErrorInfo ``reason``, the field violations (exactly one of the
    ``fields`` alternatives) and, when given, the ``resource_name`` it reports."""

    defect: str
    request: Message
    code: str
    reason: str
    fields: tuple[tuple[str, ...], ...] = ((),)
    resource: str | None = None


def _bad_input(defect: str, request: Message, *fields: str, reason: str = "INVALID_ARGUMENT") -> Defective:
    return Defective(defect, request, "INVALID_ARGUMENT", reason, (fields,))


non_finite: Strategy = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@st.composite
def _poisoned_structs(draw: st.DrawFn) -> struct_pb2.Struct:
    """A Struct that is fine but for one NaN or infinity somewhere inside (or a NUL)."""
    bad: object = draw(st.one_of(non_finite, st.sampled_from(["a\x00b", "\x00"])))
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        bad = {"k": bad} if draw(st.booleans()) else [1, "x", bad]
    return _struct_of({"ok": "fine", "bad": bad})


too_deep_structs: Strategy = st.builds(
    lambda leaf: _struct_of(_nested(MAX_STRUCT_DEPTH + 1, leaf)), st.sampled_from(["x", 1.0, None, True])
)
bad_event_ids: Strategy = st.one_of(
    st.sampled_from([i for i in ["A", "a_b", "a.b", "-a", "a-", "a b", "a/b", "é", "x" * 64, "😀"] if i]),
    st.from_regex(r"^[A-Z][a-z0-9]{0,8}$", fullmatch=True),
)
bad_branches: Strategy = st.one_of(
    st.sampled_from([b for b in BRANCHES if b and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", b)]),
    st.builds(lambda n: "a" * n, st.integers(min_value=257, max_value=400)),
    st.builds(lambda n: ".".join(["ab"] * n), st.integers(min_value=86, max_value=120)),
)
_BAD_LABEL_KEYS = ("A", "1a", "a b", "_a", "a" * 64, "é", "a/b", "Team")


@st.composite
def _oversized_pair(draw: st.DrawFn) -> tuple[struct_pb2.Struct | None, struct_pb2.Struct | None]:
    """``content`` and ``state_delta`` each (or one of them) within limits alone, together past
    1 MiB serialized."""
    total = MAX_EVENT_BYTES + draw(st.integers(min_value=0, max_value=4096))
    share = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    content_chars = int(total * share)
    delta_chars = total - content_chars
    content = _struct_of({"blob": "c" * content_chars}) if content_chars else None
    delta = _struct_of({"blob": "d" * delta_chars}) if delta_chars else None
    return content, delta


def _set_content(
    request: pb.AppendEventRequest, content: struct_pb2.Struct | None, delta: struct_pb2.Struct | None
) -> None:
    request.event.ClearField("content")
    request.event.ClearField("state_delta")
    if content is not None:
        request.event.content.CopyFrom(content)
    if delta is not None:
        request.event.state_delta.CopyFrom(delta)


APPEND_DEFECTS = (
    "event_id",
    "content",
    "state_delta",
    "deep content",
    "deep state_delta",
    "oversized",
    "branch",
    "author namespace",
    "author shape",
    "expected_last_sequence",
    "invocation_id",
    "label key",
    "event_time",
    "request_id",
    "parent",
    "key parent",
    "author and author_key",
    "no event",
    "template without key",
)


@st.composite
def _defective_append(draw: st.DrawFn, world: World, how: str) -> Defective:
    """An append to the scratch TRIGGER session (any author may write there) with one defect."""
    trigger = next((s for s in world.sessions if s.endswith("/trigger")), f"{world.parent}/sessions/trigger")
    r = pb.AppendEventRequest(parent=trigger, event=draw(_new_event(world)))
    r.event.ClearField("state_delta")  # a big state could legitimately be over its own limit
    if how == "event_id":
        r.event_id = draw(bad_event_ids)
        return _bad_input(how, r, "event_id")
    if how in ("content", "state_delta"):
        getattr(r.event, how).CopyFrom(draw(_poisoned_structs()))
        return _bad_input(how, r, f"event.{how}")
    if how.startswith("deep "):
        field = how.removeprefix("deep ")
        getattr(r.event, field).CopyFrom(draw(too_deep_structs))
        return _bad_input(how, r, f"event.{field}")
    if how == "oversized":
        _set_content(r, *draw(_oversized_pair()))
        alternatives = (("event.content",), ("event.state_delta",), ("event.content", "event.state_delta"))
        return Defective(how, r, "RESOURCE_EXHAUSTED", "SIZE_LIMIT_EXCEEDED", alternatives)
    if how == "branch":
        r.event.branch = draw(bad_branches)
        return _bad_input(how, r, "event.branch")
    if how == "author namespace":  # a well-formed participant name of another namespace
        other = draw(st.sampled_from(["fz-other", "fz-missing", world.scratch + "x"]))
        r.event.author = f"namespaces/{other}/participants/{draw(st.sampled_from(['a1', 'u1', 'nobody']))}"
        return _bad_input(how, r, "event.author")
    if how == "author shape":
        r.event.author = draw(
            st.sampled_from([world.parent, trigger, f"{world.parent}/participants/", "a1", "participants/a1"])
        )
        return _bad_input(how, r, "event.author")
    if how == "expected_last_sequence":
        r.expected_last_sequence = draw(st.one_of(st.sampled_from([-1, INT64[0]]), st.integers(INT64[0], -1)))
        return _bad_input(how, r, "expected_last_sequence")
    if how == "invocation_id":
        r.event.invocation_id = draw(st.sampled_from(["x", "é", "😀"])) * draw(st.integers(129, 300))
        return _bad_input(how, r, "event.invocation_id")
    if how == "label key":
        key = draw(st.sampled_from(_BAD_LABEL_KEYS))
        r.event.labels.clear()
        r.event.labels[key] = "v"
        return _bad_input(how, r, f"event.labels[{key!r}]")
    if how == "event_time":
        seconds = draw(st.sampled_from([MIN_SECONDS - 1, MAX_SECONDS + 1, INT64[0], INT64[1]]))
        r.event.event_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds))
        return _bad_input(how, r, "event.event_time")
    if how == "request_id":
        r.request_id = draw(st.sampled_from(["nope", "12345", "not-a-uuid", "00000000-0000-4000-8000"]))
        return _bad_input(how, r, "request_id")
    if how == "parent":  # by name, `parent` must be a session
        r.parent = draw(
            st.sampled_from([world.parent, f"{trigger}/events/e", f"{world.parent}/participants/a1"])
        )
        return _bad_input(how, r, "parent")
    if how == "key parent":  # by key, `parent` must be a namespace
        agents = list(world.agents) or [f"{world.parent}/participants/a"]
        r.external_conversation.agent = agents[0]
        r.external_conversation.conversation_id = "c-1"
        return _bad_input(how, r, "parent")
    if how == "author and author_key":
        r.event.author = draw(_participants(world))
        r.author_key.kind = participant_pb2.Participant.KIND_USER
        r.author_key.external_id = "ext-1"
        return _bad_input(how, r, "event.author")
    if how == "no event":
        r.ClearField("event")
        return _bad_input(how, r, "event")
    assert how == "template without key", how
    r.session.display_name = "only for a key"
    return _bad_input(how, r, "session")


def _bad_session_parents(world: World) -> Strategy:
    session = world.sessions[0] if world.sessions else f"{world.parent}/sessions/s"
    return st.sampled_from(
        [
            "",
            world.parent,
            f"{world.parent}/participants/a1",
            f"{session}/events/e",
            f"{session}/",
            session.upper(),
            f"{world.parent}/sessions/Bad_Id",
        ]
    )


_UNKNOWN_EVENT_FILTER_FIELDS = (
    "kind",
    "agent",
    "user",
    "channel",
    "display_name",
    "uid",
    "name",
    "content",
    "state_delta",
    "member",
    "enabled",
    "Sequence",
)


def _bad_event_filters() -> Strategy:
    unknown = st.builds(
        lambda field, value: f"{field} = {value}",
        st.sampled_from(_UNKNOWN_EVENT_FILTER_FIELDS),
        st.sampled_from(['"x"', "1", "true"]),
    )
    not_integers = st.builds(
        "sequence {} {}".format,
        st.sampled_from(["=", ">", "<="]),
        st.sampled_from(
            ["x", "1.5", "1e3", "0x10", str(INT64[1] + 1), str(INT64[0] - 1), "2024-01-01T00:00:00Z"]
        ),
    )
    syntax = st.sampled_from(
        ["sequence >", "(sequence > 1", "sequence > 1)", "AND", "sequence == 1", "sequence ~ 1"]
    )
    return st.one_of(unknown, not_integers, syntax)


LIST_EVENTS_DEFECTS = (
    "filter",
    "order_by",
    "forged token",
    "foreign token",
    "page_size",
    "parent",
    "missing",
)
_BAD_EVENT_ORDERS = (
    "create_time",
    "event_time desc",
    "sequence sideways",
    "sequence asc desc",
    "sequence, sequence",
    "sequence desc,",
    "Sequence",
    "name",
    ",",
    "sequence " + "x" * 600,
)


@st.composite
def _defective_list_events(draw: st.DrawFn, world: World, how: str) -> Defective:
    parent = world.sessions[0] if world.sessions else f"{world.parent}/sessions/s"
    order_by = draw(st.sampled_from(sorted(_EVENT_ORDERS)))
    fields: dict[str, Any] = {"parent": parent, "order_by": order_by, "page_size": draw(page_sizes)}

    def bad(field: str, value: object, reason: str = "INVALID_ARGUMENT") -> Defective:
        return _bad_input(how, pb.ListEventsRequest(**{**fields, field: value}), field, reason=reason)

    if how == "filter":
        return bad("filter", draw(_bad_event_filters()), "INVALID_FILTER")
    if how == "order_by":
        return bad("order_by", draw(st.sampled_from(_BAD_EVENT_ORDERS)), "INVALID_ORDER_BY")
    if how == "forged token":  # the right fingerprint, a cursor that is no int64
        cursor = draw(st.sampled_from(BAD_INTEGER_CURSORS))
        return bad(
            "page_token",
            forge_page_token([parent, "", _EVENT_ORDERS[order_by]], [cursor]),
            "INVALID_PAGE_TOKEN",
        )
    if how == "foreign token":  # a well-formed token of other parameters: filter, order or parent
        flipped = "sequence asc" if order_by == "sequence desc" else "sequence desc"
        binding = draw(
            st.sampled_from(
                [
                    [parent, "sequence > 0", _EVENT_ORDERS[order_by]],
                    [parent, "", flipped],
                    [world.sessions[-1] if world.sessions else world.parent, "", _EVENT_ORDERS[order_by]],
                ]
            )
        )
        token = forge_page_token(binding, [draw(st.sampled_from(GOOD_INTEGER_CURSORS))])
        return bad("page_token", token, "INVALID_PAGE_TOKEN")
    if how == "page_size":
        return bad("page_size", draw(st.one_of(st.just(-1), st.integers(INT32[0], -1))), "INVALID_PAGE_SIZE")
    if how == "parent":
        return bad("parent", draw(_bad_session_parents(world)))
    missing = f"{world.parent}/sessions/missing-{draw(st.sampled_from(['1', '2']))}"
    request = pb.ListEventsRequest(**{**fields, "parent": missing})
    return Defective(how, request, "NOT_FOUND", "SESSION_NOT_FOUND", resource=missing)


def _bad_event_names(world: World) -> Strategy:
    session = world.sessions[0] if world.sessions else f"{world.parent}/sessions/s"
    event = world.events[0] if world.events else f"{session}/events/e"
    return st.sampled_from(
        [
            "",
            session,
            f"{session}/events",
            f"{session}/events/",
            f"{session}/events/Bad_Id",
            f"{session}/members/a1",
            f"{event}/",
            f"{event}/events/e",
            " " + event,
            event.upper(),
            f"{world.parent}/events/e",
        ]
    )


@st.composite
def _defective_by_event_name(draw: st.DrawFn, world: World, cls: Any, how: str) -> Defective:
    if how == "name":
        return _bad_input("name", cls(name=draw(_bad_event_names(world))), "name")
    session = draw(st.sampled_from([*world.sessions, f"{world.parent}/sessions/missing"]))
    missing = f"{session}/events/missing-{draw(st.sampled_from(['1', '2']))}"
    return Defective("missing", cls(name=missing), "NOT_FOUND", "EVENT_NOT_FOUND", resource=missing)


@st.composite
def _defective_purge_events(draw: st.DrawFn, world: World, how: str) -> Defective:
    parent = world.sessions[0] if world.sessions else f"{world.parent}/sessions/s"
    force = draw(st.booleans())
    if how == "no filter":
        return _bad_input(how, pb.PurgeEventsRequest(parent=parent, force=force), "filter")
    if how == "filter":
        request = pb.PurgeEventsRequest(parent=parent, filter=draw(_bad_event_filters()), force=force)
        return _bad_input(how, request, "filter", reason="INVALID_FILTER")
    if how == "parent":
        bad_parent = draw(_bad_session_parents(world).filter(bool))
        return _bad_input(how, pb.PurgeEventsRequest(parent=bad_parent, filter="*", force=force), "parent")
    missing = f"{world.parent}/sessions/missing-{draw(st.sampled_from(['1', '2']))}"
    request = pb.PurgeEventsRequest(parent=missing, filter="*", force=force)
    return Defective(how, request, "NOT_FOUND", "SESSION_NOT_FOUND", resource=missing)


DEFECTS: dict[str, tuple[str, ...]] = {
    "AppendEvent": APPEND_DEFECTS,
    "GetEvent": ("name", "missing"),
    "ListEvents": LIST_EVENTS_DEFECTS,
    "DeleteEvent": ("name", "missing"),
    "PurgeEvents": ("no filter", "filter", "parent", "missing"),
}
_DEFECTIVE: dict[str, Callable[[World, str], Strategy]] = {
    "AppendEvent": _defective_append,
    "GetEvent": lambda w, how: _defective_by_event_name(w, pb.GetEventRequest, how),
    "ListEvents": _defective_list_events,
    "DeleteEvent": lambda w, how: _defective_by_event_name(w, pb.DeleteEventRequest, how),
    "PurgeEvents": _defective_purge_events,
}


def defective(method: str, defect: str, world: World) -> Strategy:
    """Requests for ``method`` with the one defect ``defect`` (one of ``DEFECTS[method]``)."""
    assert defect in DEFECTS[method], (method, defect)
    return _DEFECTIVE[method](world, defect)
