"""List queries: filter compilation, ordering, keyset pagination.

Runs real queries on in-memory SQLite and, when reachable, on a scratch
PostgreSQL database (required when CI is set).
"""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Dialect, Engine, RowMapping, Select, create_engine, insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from tether.server.db.schema import members, metadata, namespaces, participants, sessions
from tether.server.errors import ApiError
from tether.server.query import (
    PARTICIPANT_FILTER_FIELDS,
    PARTICIPANT_ORDER_FIELDS,
    SESSION_FILTER_FIELDS,
    SESSION_ORDER_FIELDS,
    FilterField,
    OrderFields,
    compile_filter,
    next_page,
    page_request,
    paginate,
    parse_order_by,
)
from tether.v1 import participant_pb2, session_pb2

NS = "ns"
OTHER = "other"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
T2 = T0 + timedelta(days=1)
US = timedelta(microseconds=1)
DIRECT, GROUP, A2A, TRIGGER = (
    session_pb2.Session.KIND_DIRECT,
    session_pb2.Session.KIND_GROUP,
    session_pb2.Session.KIND_AGENT_TO_AGENT,
    session_pb2.Session.KIND_TRIGGER,
)
USER, AGENT = participant_pb2.Participant.KIND_USER, participant_pb2.Participant.KIND_AGENT
# The drivers the server runs on; building an engine connects to nothing.
DIALECTS: tuple[Dialect, ...] = tuple(
    create_async_engine(url).dialect for url in ("postgresql+asyncpg://", "sqlite+aiosqlite://")
)


def _uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def _participant(namespace: str, pid: str, uid: int, kind: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "namespace": namespace,
        "participant": pid,
        "uid": _uid(uid),
        "kind": kind,
        "display_name": "",
        "external_id": None,
        "labels": {},
        "enabled": True,
        "managed": False,
        "create_time": T0,
        "update_time": T0,
    }
    return row | extra


def _session(sid: str, uid: int, kind: int, agent: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "namespace": NS,
        "session": sid,
        "uid": _uid(uid),
        "kind": kind,
        "display_name": "",
        "agent": agent,
        "user": None,
        "peer_agent": None,
        "channel": "web",
        "external_conversation_id": None,
        "enabled": True,
        "managed": False,
        "auto_created": False,
        "labels": {},
        "create_time": T0,
        "update_time": T0,
        "last_activity_time": T0,
    }
    return row | extra


PARTICIPANTS = [
    _participant(NS, "agent-a", 40, AGENT, display_name="ann", labels={"team": "x"}),
    _participant(NS, "agent-b", 10, AGENT, display_name="bob", external_id="ext-b", create_time=T1),
    _participant(NS, "user-u", 30, USER, display_name="ann", external_id="u-1", update_time=T2),
    _participant(NS, "user-v", 20, USER, enabled=False, managed=True, create_time=T2, update_time=T1),
    _participant(OTHER, "agent-a", 50, AGENT),
    _participant(OTHER, "user-u", 60, USER),
]
# Ties on every sort key; uids deliberately not in session id order.
SESSIONS = [
    _session(
        "s1", 5, DIRECT, "agent-a", user="user-u", display_name="alpha", external_conversation_id="c1",
        labels={"env": "prod", "tier": "gold"}, update_time=T1, last_activity_time=T2,
    ),
    _session(
        "s2", 3, DIRECT, "agent-a", user="user-v", display_name="beta", channel="sms",
        labels={"env": "dev"}, update_time=T1 + US, last_activity_time=T2,
    ),
    _session("s3", 6, GROUP, "agent-b", display_name="alpha", update_time=T1, last_activity_time=T1),
    _session(
        "s4", 1, A2A, "agent-a", peer_agent="agent-b", enabled=False, labels={"env": "prod"},
        create_time=T1, update_time=T2, last_activity_time=T2 + US,
    ),
    _session(
        "s5", 4, TRIGGER, "agent-b", display_name="gamma", managed=True, auto_created=True,
        labels={"env.stage": "x"}, create_time=T1, update_time=T1, last_activity_time=T1,
    ),
    _session(
        "s6", 2, DIRECT, "agent-b", user="user-u", display_name="beta", labels={"env": "prod"},
        create_time=T2, update_time=T2, last_activity_time=T0,
    ),
]  # fmt: skip
OTHER_SESSION = _session("s1", 70, DIRECT, "agent-a", namespace=OTHER, user="user-u")
MEMBERS = {
    NS: {
        "s1": ["agent-a", "user-u"],
        "s2": ["agent-a", "user-v"],
        "s3": ["agent-b", "user-u", "user-v"],
        "s4": ["agent-a", "agent-b"],
        "s5": ["agent-b"],
        "s6": ["agent-b", "user-u"],
    },
    OTHER: {"s1": ["agent-a", "user-u"]},
}
ALL_SESSIONS = {row["session"] for row in SESSIONS}
ALL_PARTICIPANTS = {row["participant"] for row in PARTICIPANTS if row["namespace"] == NS}


def _seed(engine: Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(namespaces),
            [
                {"namespace": ns, "uid": _uid(900 + i), "labels": {}, "create_time": T0, "update_time": T0}
                for i, ns in enumerate((NS, OTHER))
            ],
        )
        conn.execute(insert(participants), PARTICIPANTS)
        conn.execute(insert(sessions), [*SESSIONS, OTHER_SESSION])
        conn.execute(
            insert(members),
            [
                {
                    "namespace": ns,
                    "session": sid,
                    "participant": pid,
                    "role": 1,
                    "join_time": T0,
                    "update_time": T0,
                }
                for ns, by_session in MEMBERS.items()
                for sid, pids in by_session.items()
                for pid in pids
            ],
        )


def _sqlite_engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    _seed(engine)
    yield engine
    engine.dispose()


def _postgresql_engine() -> Iterator[Engine]:
    server = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    database = f"tether_query_unit_{uuid.uuid4().hex[:12]}"
    try:
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
    except OperationalError as exc:
        server.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    try:
        _seed(engine)
        yield engine
    finally:
        engine.dispose()
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def query_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield from _sqlite_engine() if request.param == "sqlite" else _postgresql_engine()


def _name(pid: str, namespace: str = NS) -> str:
    return f'"namespaces/{namespace}/participants/{pid}"'


def _session_ids(engine: Engine, where: ColumnElement[bool] | None) -> set[str]:
    stmt = select(sessions.c.session).where(sessions.c.namespace == NS)
    if where is not None:
        stmt = stmt.where(where)
    with engine.connect() as conn:
        return set(conn.scalars(stmt))


# --- filters -------------------------------------------------------------------------------------

SESSION_CASES = [
    ("", ALL_SESSIONS),
    ("  *  ", ALL_SESSIONS),
    ("kind = DIRECT", {"s1", "s2", "s6"}),
    ("kind = KIND_GROUP", {"s3"}),
    ("kind != direct", {"s3", "s4", "s5"}),
    ('kind = "AGENT_TO_AGENT"', {"s4"}),
    ('labels.env = "prod"', {"s1", "s4", "s6"}),
    ("labels.env != prod", {"s2", "s3", "s5"}),
    ("labels.env:*", {"s1", "s2", "s4", "s6"}),
    ("NOT labels.env:*", {"s3", "s5"}),
    ("labels:tier", {"s1"}),
    ('labels:"env.stage"', {"s5"}),
    ("labels.env.stage = x", {"s5"}),
    ("labels.missing = x", set()),
    (f"member = {_name('user-u')}", {"s1", "s3", "s6"}),
    (f"member:{_name('user-v')}", {"s2", "s3"}),
    (f"member != {_name('user-u')}", {"s2", "s4", "s5"}),
    (f"member = {_name('agent-a', OTHER)}", set()),
    (f"member != {_name('agent-a', OTHER)}", ALL_SESSIONS),
    (f"agent = {_name('agent-a')}", {"s1", "s2", "s4"}),
    (f"user = {_name('user-u')}", {"s1", "s6"}),
    (f"user != {_name('user-u')}", {"s2", "s3", "s4", "s5"}),
    (f"NOT user = {_name('user-u')}", {"s2", "s3", "s4", "s5"}),
    (f"user = {_name('user-u', OTHER)}", set()),
    (f"user != {_name('user-u', OTHER)}", ALL_SESSIONS),
    (f"peer_agent = {_name('agent-b')}", {"s4"}),
    ("enabled = false", {"s4"}),
    ("enabled != FALSE", ALL_SESSIONS - {"s4"}),
    ("managed = true AND auto_created = true", {"s5"}),
    ('channel = "web"', ALL_SESSIONS - {"s2"}),
    ("channel >= t", ALL_SESSIONS - {"s2"}),
    ("external_conversation_id = c1", {"s1"}),
    ("external_conversation_id != c1", ALL_SESSIONS - {"s1"}),
    ("create_time = 2024-01-01T00:00:00Z", {"s1", "s2", "s3"}),
    ('create_time > "2024-01-01T00:00:00Z"', {"s4", "s5", "s6"}),
    ("create_time >= 2024-01-01T01:00:00+01:00", ALL_SESSIONS),
    ("create_time <= 2024-01-01t01:00:00.000000z", ALL_SESSIONS - {"s6"}),
    ("update_time > 2024-01-01T01:00:00Z", {"s2", "s4", "s6"}),
    ("update_time < 2024-01-01T01:00:00.000001Z", {"s1", "s3", "s5"}),
    ("last_activity_time > 2024-01-02T00:00:00Z", {"s4"}),
    ("last_activity_time < 2024-01-01T20:00:00-02:00", {"s3", "s5", "s6"}),
    # AIP-160: OR binds tighter than AND.
    ("kind = GROUP OR kind = DIRECT AND labels.env = prod", {"s1", "s6"}),
    ("kind = DIRECT labels.env = prod", {"s1", "s6"}),
    ("kind = GROUP OR (kind = DIRECT AND labels.env = prod)", {"s1", "s3", "s6"}),
    ("NOT (kind = DIRECT OR kind = GROUP)", {"s4", "s5"}),
    ("NOT NOT kind = GROUP", {"s3"}),
    ("(((kind = TRIGGER)))", {"s5"}),
    ("kind=DIRECT AND(labels.env=prod OR\nlabels.env=dev)", {"s1", "s2", "s6"}),
]


@pytest.mark.parametrize(("filter_text", "expected"), SESSION_CASES)
def test_session_filter_matches(query_engine: Engine, filter_text: str, expected: set[str]) -> None:
    where = compile_filter(filter_text, SESSION_FILTER_FIELDS, namespace=NS)
    assert _session_ids(query_engine, where) == expected


PARTICIPANT_CASES = [
    ("kind = USER", {"user-u", "user-v"}),
    ("kind = KIND_AGENT", {"agent-a", "agent-b"}),
    ('external_id = "ext-b"', {"agent-b"}),
    ('external_id != "ext-b"', {"agent-a", "user-u", "user-v"}),
    ("labels.team = x", {"agent-a"}),
    ("enabled = false OR managed = true", {"user-v"}),
    ("create_time > 2024-01-01T00:00:00Z", {"agent-b", "user-v"}),
    ("*", ALL_PARTICIPANTS),
]


@pytest.mark.parametrize(("filter_text", "expected"), PARTICIPANT_CASES)
def test_participant_filter_matches(query_engine: Engine, filter_text: str, expected: set[str]) -> None:
    where = compile_filter(filter_text, PARTICIPANT_FILTER_FIELDS, namespace=NS)
    stmt = select(participants.c.participant).where(participants.c.namespace == NS)
    if where is not None:
        stmt = stmt.where(where)
    with query_engine.connect() as conn:
        assert set(conn.scalars(stmt)) == expected


@pytest.mark.parametrize(
    "filter_text",
    [
        'labels.secretkey = "secretvalue"',
        "labels:secretkey",
        "channel = secretvalue OR external_conversation_id != 'secretvalue'",
        f"agent = {_name('secretvalue')} AND member = {_name('secretvalue')}",
        "NOT (create_time > 2031-02-03T04:05:06Z AND enabled = true) kind = TRIGGER",
    ],
)
def test_filter_sql_is_parameterized(filter_text: str) -> None:
    where = compile_filter(filter_text, SESSION_FILTER_FIELDS, namespace=NS)
    assert where is not None
    for dialect in DIALECTS:
        compiled = select(sessions.c.session).where(where).compile(dialect=dialect)
        sql = str(compiled)
        for literal in ("secret", "2031", "TRIGGER", "true"):
            assert literal not in sql
        assert compiled.params


@pytest.mark.parametrize(
    ("filter_text", "position"),
    [
        ("kind", 5),
        ("kind = ", 8),
        ("(kind = DIRECT", 15),
        ("kind = DIRECT)", 14),
        ("kind = DIRECT AND", 18),
        ("nope = 1", 1),
        ("Kind = DIRECT", 1),
        ("kind = 1", 8),
        ("kind = DIRECT AND bogus = 2", 19),
        ("kind < DIRECT", 6),
        ("enabled < true", 9),
        ("enabled = yes", 11),
        ("channel:web", 8),
        ("create_time > yesterday", 15),
        ("create_time > 2024-02-30T00:00:00Z", 15),
        ("create_time > 2024-01-01T00:00:00", 15),
        ("create_time > 0001-01-01T00:00:00+01:00", 15),
        ("create_time:*", 12),
        ("agent = bob", 9),
        ('user = "namespaces/ns/participants/"', 8),
        ("member < " + _name("user-u"), 8),
        ("labels = x", 1),
        ("labels:*", 1),
        ("labels.env:prod", 11),
        ("labels.env < a", 12),
        ("kind.x = 1", 1),
        ("labels. = 1", 1),
        ('channel = "abc', 11),
        ("channel = a b", 14),
        ("- kind = DIRECT", 1),
        ('"abc"', 1),
        ("kind = DIRECT\0", 14),
        ("x" * 4097, 4097),
    ],
)
def test_filter_errors_name_the_position(filter_text: str, position: int) -> None:
    with pytest.raises(ApiError) as raised:
        compile_filter(filter_text, SESSION_FILTER_FIELDS, namespace=NS)
    error = raised.value
    assert error.reason == "INVALID_FILTER"
    assert [v.field for v in error.violations] == ["filter"]
    assert error.violations[0].description.endswith(f"at position {position}")


def test_filter_nesting_is_capped() -> None:
    def nested(depth: int) -> str:
        text = "kind = DIRECT"
        for _ in range(depth):
            text = f"(kind = GROUP OR NOT {text})"
        return text

    assert compile_filter(nested(10), SESSION_FILTER_FIELDS, namespace=NS) is not None
    for deep in (nested(40), "NOT " * 40 + "kind = DIRECT"):
        with pytest.raises(ApiError, match="nested deeper") as raised:
            compile_filter(deep, SESSION_FILTER_FIELDS, namespace=NS)
        assert raised.value.reason == "INVALID_FILTER"
    # Redundant parentheses add no depth; 4096 characters of them parse without recursion.
    parens = "(" * 2000 + "kind = DIRECT" + ")" * 2000
    assert compile_filter(parens, SESSION_FILTER_FIELDS, namespace=NS) is not None


_FUZZ_FIELDS = [*SESSION_FILTER_FIELDS, *PARTICIPANT_FILTER_FIELDS, "labels.env", "labels.a.b", "nope"]
_FUZZ_OPS = ["=", "!=", "<", "<=", ">", ">=", ":"]
_FUZZ_VALUES = [
    "*", '"*"', "x", '"x y"', "''", '"\\"\\n\\\\"', "-1", "DIRECT", "kind_user", "true", "FALSE",
    "2024-01-01T00:00:00Z", '"0001-01-01T00:00:00+01:00"', "2024-01-01T00:00:00.1234567891Z",
    '"namespaces/ns/participants/a"', "namespaces/other/participants/a", "namespaces/ns/sessions/a",
]  # fmt: skip
_VALID_LEAVES = [text for text, _ in SESSION_CASES + PARTICIPANT_CASES if text.strip() not in ("", "*")]
_FUZZ_NOISE = ['"', "'", "(", ")", "\\", "\0", " AND ", " OR", "NOT ", ":", "=", "é", "\n"]


def _random_filter(rng: random.Random, depth: int = 0) -> str:
    """A mostly well-formed filter, so that fuzzing reaches the compiler and not only the parser."""
    roll = rng.random()
    if depth > 3 or roll < 0.2:
        return rng.choice(_VALID_LEAVES)
    if roll < 0.4:
        space = rng.choice(["", " "])
        return f"{rng.choice(_FUZZ_FIELDS)}{space}{rng.choice(_FUZZ_OPS)}{space}{rng.choice(_FUZZ_VALUES)}"
    if roll < 0.55:
        return f"NOT {_random_filter(rng, depth + 1)}"
    if roll < 0.7:
        return f"({_random_filter(rng, depth + 1)})"
    joiner = rng.choice([" AND ", " OR ", " "])
    return joiner.join(_random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3)))


def _mutate(rng: random.Random, text: str) -> str:
    cut = rng.randint(0, len(text))
    if rng.random() < 0.5:
        return text[:cut] + text[cut + rng.randint(1, 5) :]
    noise = rng.choice([*_FUZZ_NOISE, chr(rng.randint(1, 0x2FF))])
    return text[:cut] + noise + text[cut:]


def _try_filter(
    filter_text: str, fields: Mapping[str, FilterField]
) -> tuple[ColumnElement[bool] | None, ApiError | None]:
    try:
        return compile_filter(filter_text, fields, namespace=NS), None
    except ApiError as error:
        return None, error


def test_filter_fuzz_never_escapes() -> None:
    rng = random.Random(160)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(3000):
        fuzzed = _random_filter(rng)
        for _ in range(rng.choice([0, 0, 1, 3])):
            fuzzed = _mutate(rng, fuzzed)
        for fields in (SESSION_FILTER_FIELDS, PARTICIPANT_FILTER_FIELDS):
            where, error = _try_filter(fuzzed, fields)
            outcomes["invalid" if error else "valid"] += 1
            if error is not None:
                assert error.reason == "INVALID_FILTER", fuzzed
                assert "at position" in error.message, fuzzed
            elif where is not None:
                for dialect in DIALECTS:
                    where.compile(dialect=dialect)
    # Both paths are exercised in earnest.
    assert min(outcomes.values()) > 500, outcomes


# --- ordering ------------------------------------------------------------------------------------


def test_order_by_canonical_and_tiebreaker() -> None:
    ordering = parse_order_by(" create_time DESC ,display_name", SESSION_ORDER_FIELDS)
    assert ordering.canonical == "create_time desc, display_name asc"
    assert [(key.column.key, key.descending) for key in ordering.keys] == [
        ("create_time", True),
        ("display_name", False),
        ("uid", False),
    ]
    assert parse_order_by("", SESSION_ORDER_FIELDS).canonical == "last_activity_time desc"
    default = parse_order_by("", PARTICIPANT_ORDER_FIELDS)
    assert default.canonical == "create_time desc"
    assert default.keys[-1].column is participants.c.uid
    assert default.keys[-1].descending


@pytest.mark.parametrize(
    ("order_by", "fields"),
    [
        ("create_time, create_time desc", SESSION_ORDER_FIELDS),
        ("last_activity_time", PARTICIPANT_ORDER_FIELDS),
        ("uid", SESSION_ORDER_FIELDS),
        ("create_time up", SESSION_ORDER_FIELDS),
        ("create_time asc desc", SESSION_ORDER_FIELDS),
        ("create_time,", SESSION_ORDER_FIELDS),
        (",", SESSION_ORDER_FIELDS),
        ("Create_time", SESSION_ORDER_FIELDS),
        ("create_time " * 100, SESSION_ORDER_FIELDS),
    ],
)
def test_order_by_errors(order_by: str, fields: OrderFields) -> None:
    with pytest.raises(ApiError) as raised:
        parse_order_by(order_by, fields)
    assert raised.value.reason == "INVALID_ORDER_BY"
    assert [v.field for v in raised.value.violations] == ["order_by"]


# --- pagination ----------------------------------------------------------------------------------


def _expected_order(
    rows: Sequence[dict[str, Any]], order_by: str, fields: OrderFields, id_key: str
) -> list[str]:
    ordering = parse_order_by(order_by, fields)
    ordered = list(rows)
    # Stable sorts, least significant key first.
    for key in reversed(ordering.keys):
        ordered.sort(key=itemgetter(key.column.key), reverse=key.descending)
    return [row[id_key] for row in ordered]


def _page_through(
    engine: Engine, stmt: Select[Any], id_key: str, order_by: str, fields: OrderFields, filter_text: str
) -> list[str]:
    ordering = parse_order_by(order_by, fields)
    token, seen = "", []
    for _ in range(20):
        page = page_request(page_size=2, page_token=token, ordering=ordering, binding=(NS, filter_text))
        with engine.connect() as conn:
            fetched: Sequence[RowMapping] = conn.execute(paginate(stmt, page)).mappings().all()
        rows, token = next_page(fetched, page)
        assert len(rows) <= 2
        seen += [row[id_key] for row in rows]
        if not token:
            return seen
    raise AssertionError("paging did not end")


SESSION_ORDERS = [
    "",
    "create_time",
    "create_time desc",
    "display_name",
    "display_name desc, create_time",
    "update_time desc, display_name asc",
    "last_activity_time asc",
    "display_name, last_activity_time desc, create_time",
]


@pytest.mark.parametrize("order_by", SESSION_ORDERS)
def test_sessions_page_through_every_row_once(query_engine: Engine, order_by: str) -> None:
    stmt = select(sessions).where(sessions.c.namespace == NS)
    seen = _page_through(query_engine, stmt, "session", order_by, SESSION_ORDER_FIELDS, "")
    assert seen == _expected_order(SESSIONS, order_by, SESSION_ORDER_FIELDS, "session")


def test_sessions_page_through_with_a_filter(query_engine: Engine) -> None:
    filter_text = "kind != GROUP"
    where = compile_filter(filter_text, SESSION_FILTER_FIELDS, namespace=NS)
    assert where is not None
    stmt = select(sessions).where(sessions.c.namespace == NS, where)
    seen = _page_through(query_engine, stmt, "session", "display_name", SESSION_ORDER_FIELDS, filter_text)
    rows = [row for row in SESSIONS if row["kind"] != GROUP]
    assert seen == _expected_order(rows, "display_name", SESSION_ORDER_FIELDS, "session")


@pytest.mark.parametrize("order_by", ["", "display_name", "update_time, display_name desc"])
def test_participants_page_through_every_row_once(query_engine: Engine, order_by: str) -> None:
    stmt = select(participants).where(participants.c.namespace == NS)
    seen = _page_through(query_engine, stmt, "participant", order_by, PARTICIPANT_ORDER_FIELDS, "")
    rows = [row for row in PARTICIPANTS if row["namespace"] == NS]
    assert seen == _expected_order(rows, order_by, PARTICIPANT_ORDER_FIELDS, "participant")


def test_page_size_rules() -> None:
    ordering = parse_order_by("", SESSION_ORDER_FIELDS)
    sizes = {
        n: page_request(page_size=n, page_token="", ordering=ordering, binding=()).size
        for n in (0, 7, 1000, 1001)
    }
    assert sizes == {0: 50, 7: 7, 1000: 1000, 1001: 1000}
    with pytest.raises(ApiError) as raised:
        page_request(page_size=-1, page_token="", ordering=ordering, binding=())
    assert raised.value.reason == "INVALID_PAGE_SIZE"
    assert [v.field for v in raised.value.violations] == ["page_size"]


def _first_token(engine: Engine, order_by: str, binding: Sequence[str]) -> str:
    ordering = parse_order_by(order_by, SESSION_ORDER_FIELDS)
    page = page_request(page_size=1, page_token="", ordering=ordering, binding=binding)
    with engine.connect() as conn:
        fetched = conn.execute(paginate(select(sessions), page)).mappings().all()
    token = next_page(fetched, page)[1]
    assert token
    return token


def _assert_bad_token(token: str, order_by: str = "", binding: Sequence[str] = (NS, "")) -> None:
    ordering = parse_order_by(order_by, SESSION_ORDER_FIELDS)
    with pytest.raises(ApiError) as raised:
        page_request(page_size=2, page_token=token, ordering=ordering, binding=binding)
    assert raised.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in raised.value.violations] == ["page_token"]


def test_token_is_bound_to_its_query(query_engine: Engine) -> None:
    token = _first_token(query_engine, "display_name", (NS, ""))
    ordering = parse_order_by("display_name asc", SESSION_ORDER_FIELDS)
    assert page_request(page_size=5, page_token=token, ordering=ordering, binding=(NS, "")).after
    _assert_bad_token(token, "display_name desc")
    _assert_bad_token(token, "create_time")
    _assert_bad_token(token, "display_name", (NS, "kind = DIRECT"))
    _assert_bad_token(token, "display_name", (OTHER, ""))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_garbage_and_tampered_tokens(query_engine: Engine) -> None:
    token = _first_token(query_engine, "", (NS, ""))
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    payload["v"][1] = _uid(99)
    garbage = [
        "!!!",
        "abc",
        "é",
        token[:-3],
        token + "$",
        token * 200,
        _b64(b"\xff\xfe"),
        _b64(b"[1, 2]"),
        _b64(b"null"),
        _b64(b'{"v": [1, 2], "f": "x"}'),
        _b64(b'{"v": ["a"], "f": "x"}'),
        _b64(b"[" * 3000),
        _b64(json.dumps(payload).encode()),
    ]
    for bad in garbage:
        _assert_bad_token(bad)


def test_keyset_sql_is_parameterized(query_engine: Engine) -> None:
    token = _first_token(query_engine, "display_name, create_time desc", (NS, ""))
    ordering = parse_order_by("display_name, create_time desc", SESSION_ORDER_FIELDS)
    page = page_request(page_size=3, page_token=token, ordering=ordering, binding=(NS, ""))
    stmt = paginate(select(sessions.c.session), page)
    for dialect in DIALECTS:
        sql = str(stmt.compile(dialect=dialect))
        assert " OR " in sql
        assert "2024" not in sql
    # SQLite always renders "OFFSET 0"; PostgreSQL shows no offset is used.
    assert "OFFSET" not in str(stmt.compile(dialect=DIALECTS[0]))


def test_random_order_by_and_tokens_never_escape() -> None:
    rng = random.Random(158)
    alphabet = "create_time display_name,ascDESC \0é-_=+/"
    reasons: set[str] = set()
    for _ in range(1000):
        garbage = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        try:
            parse_order_by(garbage, SESSION_ORDER_FIELDS)
        except ApiError as error:
            reasons.add(error.reason)
        token = garbage.replace(" ", "")
        if token:
            _assert_bad_token(token)
    assert reasons == {"INVALID_ORDER_BY"}
