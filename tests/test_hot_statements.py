"""PostgreSQL's hot statements (plain SQL on the asyncpg pool, `tether.server.db.hot`)
return the same rows as their SQLAlchemy twins: each data-layer call is made once with
the hot pool and once without it, on the same database, and the rows compared."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from tests.support.server import ServerFactory
from tether.server.db import idempotency as idempotency_db
from tether.server.db import namespaces as namespace_db
from tether.server.db import participants as participant_db
from tether.server.db import sessions as session_db
from tether.server.db.base import Database
from tether.server.db.engine import create_engine
from tether.server.db.hot import HotPool
from tether.server.db.migrate import migrate
from tether.server.domain import sessions as session_rules
from tether.server.domain.validation import Violations
from tether.v1 import participant_pb2, session_pb2

pytestmark = pytest.mark.pg_only
NS = "hot"
RETENTION = timedelta(days=30)


@dataclass
class Twins:
    hot: Database  # hot statements on the asyncpg pool
    plain: Database  # the same calls through SQLAlchemy


@pytest_asyncio.fixture
async def twins(server_factory: ServerFactory) -> AsyncIterator[Twins]:
    url = server_factory.new_database()
    await migrate(url)
    engine = create_engine(url)
    pool = await HotPool.open(url, 2)
    try:
        yield Twins(Database(engine, RETENTION, pool), Database(engine, RETENTION))
    finally:
        await pool.close()
        await engine.dispose()


def _participant(pid: str, kind: int, external_id: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "namespace": NS,
        "participant": pid,
        "uid": f"uid-{pid}",
        "kind": kind,
        "display_name": pid,
        "avatar_uri": "",
        "external_id": external_id,
        "labels": {"team": "a"},
        "metadata": {"nested": {"list": [1, 2.5, "x"]}},
        "enabled": True,
        "managed": False,
        "create_time": now,
        "update_time": now,
    }


async def _seed(db: Database) -> None:
    now = datetime.now(UTC)
    namespace = {"namespace": NS, "uid": "uid-ns", "display_name": "", "labels": {}}
    await namespace_db.create(db, {**namespace, "create_time": now, "update_time": now, "version": 1}, None)
    await participant_db.create(db, _participant("bot", participant_pb2.Participant.KIND_AGENT), None)
    await participant_db.create(db, _participant("ann", participant_pb2.Participant.KIND_USER, "U1"), None)


def _new_session(session_id: str, conversation: str) -> session_rules.NewSession:
    template = session_pb2.Session(
        kind=session_pb2.Session.KIND_DIRECT,
        agent=f"namespaces/{NS}/participants/bot",
        user=f"namespaces/{NS}/participants/ann",
        channel="slack",
        external_conversation_id=conversation,
        labels={"k": "v"},
    )
    template.session_state.update({"a": {"b": [1, True, None]}})
    v = Violations()
    new = session_rules.new_session(NS, session_id, template, "session", v)
    v.check()
    return new


def _claim(request_id: str) -> idempotency_db.Claim:
    now = datetime.now(UTC)
    return idempotency_db.Claim(NS, request_id, "CreateSession", "f" * 64, now, now + timedelta(hours=1))


def _same_except(left: Any, right: Any, *columns: str) -> None:
    """Equal rows but for `columns` and a session's `revision` (each write's own
    transaction id on PostgreSQL, see migration 0005)."""
    a, b = dict(left), dict(right)
    assert a.keys() == b.keys()
    for column in {*columns, "revision"} & a.keys():
        a.pop(column), b.pop(column)
    assert a == b
    assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}


async def test_create_and_get_session_match(twins: Twins) -> None:
    await _seed(twins.plain)
    values = _new_session("s-hot", "c-hot").values
    twin = {**values, "session": "s-plain", "uid": "uid-plain", "external_conversation_id": "c-plain"}
    made_hot = await session_db.create(twins.hot, values, [], _claim("r-1"))
    made_plain = await session_db.create(twins.plain, twin, [], None)
    different = ("session", "uid", "external_conversation_id")
    _same_except(made_hot, made_plain, *different)
    for session in ("s-hot", "s-plain"):
        _same_except(
            await session_db.get(twins.hot, NS, session), await session_db.get(twins.plain, NS, session)
        )
    # The hot create claimed its request id with the session, in the same statement.
    assert await twins.plain.query(idempotency_db.taken, _claim("r-1")) == f"namespaces/{NS}/sessions/s-hot"


async def test_record_activity_matches(twins: Twins) -> None:
    await _seed(twins.plain)
    await session_db.create(twins.plain, _new_session("s", "c").values, [], None)
    later = datetime.now(UTC) + timedelta(minutes=5)
    hot = await session_db.record_activity(twins.hot, NS, "s", later)
    plain = await session_db.record_activity(twins.plain, NS, "s", later - timedelta(minutes=1))
    assert hot["last_activity_time"] == later
    _same_except(hot, plain)


@pytest.mark.parametrize("with_claim", [False, True], ids=["no-request-id", "request-id"])
async def test_find_or_create_lookups_match(twins: Twins, with_claim: bool) -> None:
    await _seed(twins.plain)
    new = _new_session("s", "c")
    claim = _claim("r-2") if with_claim else None
    created, was_created = await session_db.find_or_create(
        twins.hot,
        session_db.conversation_target(NS, "bot", "slack", "c"),
        new.values,
        new.refs,
        claim,
        fixed={},
        undelete_if_deleted=False,
    )
    assert was_created
    for db in (twins.hot, twins.plain):
        found, again = await session_db.find_or_create(
            db,
            session_db.conversation_target(NS, "bot", "slack", "c"),
            _new_session("other", "c").values,
            new.refs,
            claim,
            fixed={},
            undelete_if_deleted=False,
        )
        assert again is with_claim  # a retry of the call that created answers created = true
        _same_except(found, {**created, **{k: found[k] for k in found if k.startswith("claim_")}})


async def test_participant_statements_match(twins: Twins) -> None:
    await _seed(twins.plain)
    _same_except(
        await participant_db.get(twins.hot, NS, "ann"), await participant_db.get(twins.plain, NS, "ann")
    )
    values = _participant("someone-else", participant_pb2.Participant.KIND_USER, "U1")
    hot, hot_created = await participant_db.find_or_create(twins.hot, values, None)
    plain, plain_created = await participant_db.find_or_create(twins.plain, values, None)
    assert (hot["participant"], hot_created, plain_created) == ("ann", False, False)
    _same_except(hot, plain)


async def test_existing_member_lookup_matches(twins: Twins) -> None:
    from tether.server.db import members as member_db

    await _seed(twins.plain)
    await session_db.create(twins.plain, _new_session("s", "c").values, [], None)
    rows = [await member_db._existing(db, NS, "s", "ann", None) for db in (twins.hot, twins.plain)]
    assert rows[0] is not None
    assert rows[0]["participant"] == "ann"
    _same_except(rows[0], rows[1])
    assert [await member_db._existing(db, NS, "s", "nobody", None) for db in (twins.hot, twins.plain)] == [
        None
    ] * 2


@pytest.mark.parametrize("with_claim", [False, True], ids=["no-request-id", "request-id"])
async def test_add_member_matches(twins: Twins, with_claim: bool) -> None:
    from tether.server.db import members as member_db
    from tether.server.db.write_condition import WriteCondition

    await _seed(twins.plain)
    for pid in ("cat", "dan"):
        await participant_db.create(
            twins.plain, _participant(pid, participant_pb2.Participant.KIND_USER), None
        )
    group = _new_session("g", "c-g")
    group.values.update(kind=session_pb2.Session.KIND_GROUP, user=None, member_count=1)
    await session_db.create(twins.plain, group.values, [], None)
    condition = WriteCondition(None, may_manage=False)
    role = session_pb2.Member.ROLE_MEMBER
    claim = _claim("r-add") if with_claim else None
    hot = await member_db.add(twins.hot, NS, "g", "cat", role, condition, claim)
    plain = await member_db.add(twins.plain, NS, "g", "dan", role, condition, None)
    _same_except(hot, plain, "participant", "participant_uid", "join_time", "update_time")
    assert (await session_db.get(twins.plain, NS, "g"))["member_count"] == 3  # both moved it
    if claim is not None:
        assert (
            await twins.plain.query(idempotency_db.taken, claim) == f"namespaces/{NS}/sessions/g/members/cat"
        )


# What two newly made participants differ in.
_PER_PARTICIPANT = ("participant", "uid", "display_name", "external_id", "create_time", "update_time")


@pytest.mark.parametrize("with_claim", [False, True], ids=["no-request-id", "request-id"])
async def test_participant_inserts_match(twins: Twins, with_claim: bool) -> None:
    await _seed(twins.plain)
    claim = _claim("r-p") if with_claim else None
    kind = participant_pb2.Participant.KIND_USER
    made_hot = await participant_db.create(twins.hot, _participant("h1", kind, "E1"), claim)
    made_plain = await participant_db.create(twins.plain, _participant("p1", kind, "E2"), None)
    _same_except(
        made_hot,
        made_plain,
        "participant",
        "uid",
        "display_name",
        "external_id",
        "create_time",
        "update_time",
    )
    found_hot, created_hot = await participant_db.find_or_create(
        twins.hot, _participant("h2", kind, "E3"), None
    )
    found_plain, created_plain = await participant_db.find_or_create(
        twins.plain, _participant("p2", kind, "E4"), None
    )
    assert (created_hot, created_plain) == (True, True)
    _same_except(
        found_hot,
        found_plain,
        "participant",
        "uid",
        "display_name",
        "external_id",
        "create_time",
        "update_time",
    )
    if claim is not None:
        assert await twins.plain.query(idempotency_db.taken, claim) == f"namespaces/{NS}/participants/h1"


def _append(session: str | None, event_id: str, **plan: Any) -> Any:
    from tether.server.db import events as event_db

    now = datetime.now(UTC).replace(microsecond=0)
    event = {
        "event": event_id,
        "uid": f"uid-{event_id}",
        "invocation_id": "turn-1",
        "branch": "root.sub",
        "labels": {"k": "v"},
        "content": {"text": "hi", "parts": [1, 2.5, None, {"x": True}]},
        "state_delta": {"a": None, "n": {"deep": 1}},
        "event_time": now + timedelta(minutes=1),
        "create_time": now,
    }
    fields: dict[str, Any] = {
        "namespace": NS,
        "session": session,
        "session_key": None,
        "author": None,
        "author_key": None,
        "event": event,
        "expected_last_sequence": None,
        "may_manage": False,
        "claim": None,
    }
    return event_db.Append(**{**fields, **plan})


@pytest.mark.parametrize("author", ["joining", "by-key", "system"])
async def test_append_statement_matches_its_transaction(twins: Twins, author: str) -> None:
    """The one-statement append (an existing session and author) writes what the
    transaction path writes: the same event, the same session after it."""
    from tether.server.db import events as event_db

    await _seed(twins.plain)
    for session in ("g-hot", "g-plain"):
        group = _new_session(session, f"c-{session}")
        group.values.update(kind=session_pb2.Session.KIND_GROUP, user=None, member_count=1)
        await session_db.create(twins.plain, group.values, [], None)
    extra: dict[str, Any] = {}
    if author == "joining":
        extra["author"] = "ann"
    elif author == "by-key":
        values = _participant("unused", participant_pb2.Participant.KIND_USER, "U1")
        extra["author_key"] = event_db.AuthorKey(values)
    hot_plan = _append("g-hot", "e-hot", **extra, claim=_claim("r-e") if author == "joining" else None)
    plain_plan = _append("g-plain", "e-plain", **extra)
    plain_plan.event.update(
        create_time=hot_plan.event["create_time"], event_time=hot_plan.event["event_time"]
    )
    hot = await event_db._append_in_one_statement(twins.hot, hot_plan)
    assert hot is not None  # the one statement did it
    plain = await event_db.append(twins.plain, plain_plan)
    _same_except(hot.event, plain.event, "session", "event", "uid")
    _same_except(hot.session, plain.session, "session", "uid", "external_conversation_id", "create_time")
    assert hot.session["session_state"] == {"n": {"deep": 1}}
    assert (hot.event["sequence"], hot.session["event_count"]) == (1, 1)
    assert hot.session["member_count"] == (2 if author != "system" else 1)
    if author == "joining":
        claimed = await twins.plain.query(idempotency_db.taken, _claim("r-e"))
        assert claimed == f"namespaces/{NS}/sessions/g-hot/events/e-hot"
