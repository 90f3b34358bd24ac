"""Expiry and retention (AIP-214, AIP-164) and criteria purge (AIP-165).

Through the real server: its sweeper soft-deletes sessions past expire_time and
purges what is past purge_time, but never a participant that a session still
names. On the data layer directly, with a chosen `now` (no waiting): what
`sweep` changes and counts, in batches, with two sweepers at once, and what
`purge_sessions` counts and deletes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.support.server import ServerFactory
from tests.support.tools import DEADLINE_SECONDS, wait_until
from tether.client import Member, NotFoundError, Participant, Session, SessionsClient
from tether.server.db import schema
from tether.server.db.base import Database, utcnow
from tether.server.db.engine import create_engine
from tether.server.db.migrate import migrate
from tether.server.db.purge import purge_sessions
from tether.server.db.schema import members, namespaces, participants, sessions
from tether.server.db.sweeper import SweepResult, sweep
from tether.server.query import SESSION_FILTER_FIELDS, compile_filter

RETENTION = timedelta(days=30)
NS = "default"
PARENT = f"namespaces/{NS}"
FAST_SWEEPS = {"TETHER_SWEEP_INTERVAL": "0.1"}
# The smallest retention the settings accept (it must be positive): purge at the next sweep.
NO_RETENTION = {**FAST_SWEEPS, "TETHER_RETENTION": "0.001s"}


def _is_gone(get: Callable[[], object]) -> bool:
    try:
        get()
    except NotFoundError:
        return True
    return False


def _agent(client: SessionsClient, participant_id: str = "bot") -> str:
    agent = Participant(kind=Participant.KIND_AGENT)
    return client.create_participant(parent=PARENT, participant_id=participant_id, participant=agent).name


def _trigger(client: SessionsClient, agent: str, **fields: Any) -> Session:
    return client.create_session(
        parent=PARENT, session=Session(kind=Session.KIND_TRIGGER, agent=agent, **fields)
    )


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


# --- through the server -----------------------------------------------------------------------


def test_sweeper_soft_deletes_expired_sessions(server_factory: ServerFactory) -> None:
    server = server_factory(env=FAST_SWEEPS)
    with SessionsClient(server.target) as client:
        agent = _agent(client)
        # Creation accepts an expire_time in the past: the next sweep expires it.
        expired = _trigger(client, agent, expire_time=_timestamp(utcnow() - timedelta(minutes=1)))
        lasting = _trigger(client, agent, ttl=Duration(seconds=365 * 86400))
        wait_until(lambda: client.get_session(name=expired.name).HasField("delete_time"), "the expiry")
        got = client.get_session(name=expired.name)
        assert got.purge_time.ToDatetime() - got.delete_time.ToDatetime() == RETENTION
        assert got.etag != expired.etag
        assert [s.name for s in client.list_sessions(parent=PARENT)] == [lasting.name]
        assert client.get_session(name=lasting.name) == lasting
    event = server.wait_for_event("sweep", timeout=DEADLINE_SECONDS)
    assert event is not None, server.log_tail()
    assert event["expired_sessions"] == 1


def test_sweeper_purges_after_retention(server_factory: ServerFactory) -> None:
    server = server_factory(env=NO_RETENTION)
    with SessionsClient(server.target) as client:
        agent = _agent(client)
        expired = _trigger(client, agent, ttl=Duration(nanos=1_000_000))
        deleted = client.delete_session(name=_trigger(client, agent).name)
        lasting = _trigger(client, agent, ttl=Duration(seconds=365 * 86400))
        for name in (expired.name, deleted.name):
            wait_until(partial(_is_gone, partial(client.get_session, name=name)), f"the purge of {name}")
        assert client.get_session(name=lasting.name) == lasting
    assert "sweep_failed" not in server.log_text()


def test_sweeper_keeps_deleted_participants_that_sessions_name(server_factory: ServerFactory) -> None:
    server = server_factory(env=NO_RETENTION)
    with SessionsClient(server.target) as client:
        agent = _agent(client)
        user = Participant(kind=Participant.KIND_USER)
        guest = client.create_participant(parent=PARENT, participant_id="guest", participant=user).name
        session = _trigger(client, agent)
        client.add_member(parent=session.name, member=Member(participant=guest, role=Member.ROLE_OBSERVER))
        client.delete_participant(name=agent)
        client.delete_participant(name=guest)
        # Deleted last, so its purge_time is the latest: once it is purged, a
        # sweep has weighed the other two.
        witness = client.create_participant(parent=PARENT, participant_id="witness", participant=user).name
        client.delete_participant(name=witness)
        wait_until(lambda: _is_gone(lambda: client.get_participant(name=witness)), "the witness's purge")

        assert client.get_participant(name=agent).HasField("delete_time")
        assert _is_gone(lambda: client.get_participant(name=guest))
        kept = client.get_session(name=session.name)
        assert not kept.HasField("delete_time")
        assert kept.member_count == 1
        assert [m.participant for m in client.list_members(parent=session.name)] == [agent]


# --- the data layer, directly -------------------------------------------------------------------


@pytest_asyncio.fixture
async def db(server_factory: ServerFactory) -> AsyncIterator[Database]:
    """A Database on a fresh, migrated database of the backend under test."""
    url = server_factory.new_database()
    await migrate(url)
    engine = create_engine(url)
    try:
        yield Database(engine, RETENTION)
    finally:
        await engine.dispose()


T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _row(**values: Any) -> dict[str, Any]:
    return {"uid": str(uuid.uuid4()), "labels": {}, "create_time": T0, "update_time": T0, **values}


async def _add_participant(conn: AsyncConnection, pid: str, *, ns: str = NS, **values: Any) -> None:
    row = _row(namespace=ns, participant=pid, kind=Participant.KIND_AGENT, **values)
    await conn.execute(insert(participants).values(row))


async def _add_session(
    conn: AsyncConnection,
    sid: str,
    *,
    ns: str = NS,
    agent: str = "bot",
    extra: tuple[str, ...] = (),
    **values: Any,
) -> None:
    """A session with its agent (and `extra` participants) as members."""
    row = _row(
        namespace=ns,
        session=sid,
        kind=Session.KIND_TRIGGER,
        agent=agent,
        channel="web",
        last_activity_time=T0,
        member_count=1 + len(extra),
        **values,
    )
    await conn.execute(insert(sessions).values(row))
    people = [(agent, Member.ROLE_OWNER)] + [(p, Member.ROLE_MEMBER) for p in extra]
    await conn.execute(
        insert(members),
        [
            {"namespace": ns, "session": sid, "participant": p, "role": r, "join_time": T0, "update_time": T0}
            for p, r in people
        ],
    )


async def _sessions(db: Database, ns: str = NS) -> dict[str, Any]:
    async with db.read() as conn:
        rows = (await conn.execute(select(sessions).where(sessions.c.namespace == ns))).mappings().all()
    return {row["session"]: row for row in rows}


async def _count(db: Database, table: Any) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_sweep_expires_then_purges(db: Database) -> None:
    deleted: dict[str, Any] = {"delete_time": T0, "purge_time": T0 + timedelta(hours=1)}
    async with db.transaction() as conn:
        await _add_participant(conn, "bot")
        await _add_session(conn, "due", expire_time=T0 + timedelta(hours=1))
        await _add_session(conn, "later", expire_time=T0 + timedelta(days=10))
        await _add_session(conn, "never")
        await _add_session(conn, "gone", **deleted)
    now = T0 + timedelta(hours=2)

    assert await sweep(db, now=now) == SweepResult(expired_sessions=1, purged_sessions=1)
    rows = await _sessions(db)
    assert sorted(rows) == ["due", "later", "never"]
    due = rows["due"]
    assert (due["delete_time"], due["purge_time"], due["update_time"]) == (now, now + RETENTION, now)
    assert due["version"] == 2
    assert all(rows[s]["delete_time"] is None and rows[s]["version"] == 1 for s in ("later", "never"))
    assert await _count(db, members) == 3  # "gone"'s member went with it
    assert await sweep(db, now=now) == SweepResult()  # nothing left to do

    # Past "due"'s purge_time, "later" has expired too.
    assert await sweep(db, now=now + RETENTION) == SweepResult(expired_sessions=1, purged_sessions=1)
    rows = await _sessions(db)
    assert sorted(rows) == ["later", "never"]
    assert rows["later"]["delete_time"] == now + RETENTION


async def test_sweep_works_through_a_backlog_in_batches(db: Database) -> None:
    async with db.transaction() as conn:
        await _add_participant(conn, "bot")
        for i in range(7):
            await _add_session(conn, f"exp-{i}", expire_time=T0)
        for i in range(5):
            await _add_session(conn, f"del-{i}", delete_time=T0, purge_time=T0)
    result = await sweep(db, now=T0 + timedelta(seconds=1), batch_size=2)
    assert result == SweepResult(expired_sessions=7, purged_sessions=5)
    rows = await _sessions(db)
    assert sorted(rows) == [f"exp-{i}" for i in range(7)]
    assert all(row["delete_time"] is not None for row in rows.values())


async def test_sweep_purges_only_participants_no_session_names(db: Database) -> None:
    due: dict[str, Any] = {"delete_time": T0, "purge_time": T0}
    async with db.transaction() as conn:
        for pid in ("bot", "user", "guest", "loner"):
            await _add_participant(conn, pid, **due)
        await _add_participant(conn, "recent", delete_time=T0, purge_time=T0 + timedelta(days=1))
        await _add_participant(conn, "live")
        # "bot" serves a live session, "user" is named by a soft-deleted one;
        # "guest" is only a plain member (its membership goes with it).
        await _add_session(conn, "live-session", extra=("guest", "recent", "live"))
        later = T0 + timedelta(days=2)
        await _add_session(conn, "old", agent="live", user="user", delete_time=T0, purge_time=later)
    now = T0 + timedelta(hours=1)

    assert await sweep(db, now=now) == SweepResult(purged_participants=2)  # guest, loner
    async with db.read() as conn:
        left = set((await conn.execute(select(participants.c.participant))).scalars())
        member_ids = set((await conn.execute(select(members.c.participant))).scalars())
    assert left == {"bot", "user", "recent", "live"}
    assert "guest" not in member_ids
    session = (await _sessions(db))["live-session"]
    assert (session["member_count"], session["version"], session["update_time"]) == (3, 2, now)
    assert session["delete_time"] is None

    # Once "old" is purged, "user" goes in the same sweep (sessions are purged first).
    final = await sweep(db, now=T0 + timedelta(days=3))
    assert final == SweepResult(purged_sessions=1, purged_participants=2)  # "old"; user, recent
    assert sorted(await _sessions(db)) == ["live-session"]


async def test_a_purged_participant_takes_its_events_and_the_counts_follow(db: Database) -> None:
    async with db.transaction() as conn:
        await _add_participant(conn, "bot")
        await _add_participant(conn, "guest", delete_time=T0, purge_time=T0)
        await _add_session(conn, "room", extra=("guest",), event_count=3, last_sequence=3)
        authors = ["bot", "guest", "guest"]
        await conn.execute(
            insert(schema.events),
            [
                {
                    "namespace": NS,
                    "session": "room",
                    "sequence": i,
                    "event": f"e{i}",
                    "uid": str(uuid.uuid4()),
                    "author": a,
                    "labels": {},
                    "event_time": T0,
                    "create_time": T0,
                }
                for i, a in enumerate(authors, 1)
            ],
        )
    assert await sweep(db, now=T0 + timedelta(hours=1)) == SweepResult(purged_participants=1)
    async with db.read() as conn:
        left = list((await conn.execute(select(schema.events.c.author))).scalars())
    room = (await _sessions(db))["room"]
    assert (left, room["event_count"], room["last_sequence"], room["member_count"]) == (["bot"], 1, 3, 1)


async def test_sweep_drops_expired_idempotency_records(db: Database) -> None:
    table = schema.idempotency
    values = {
        "method": "CreateSession",
        "fingerprint": "0" * 64,
        "resource": f"{PARENT}/sessions/s",
        "create_time": T0,
    }
    rows = [
        {"namespace": NS, "request_id": str(uuid.uuid4()), "expire_time": T0 + timedelta(hours=h), **values}
        for h in (1, 2, 5)
    ]
    async with db.transaction() as conn:
        await conn.execute(insert(table), rows)
    result = await sweep(db, now=T0 + timedelta(hours=2), batch_size=1)
    assert result == SweepResult(purged_idempotency=2)
    async with db.read() as conn:
        assert list((await conn.execute(select(table.c.request_id))).scalars()) == [rows[2]["request_id"]]


async def test_concurrent_sweeps_do_each_row_once(db: Database) -> None:
    """Two sweepers (two engines, as two replicas would) share the work without
    errors, waiting or double counting."""
    async with db.transaction() as conn:
        await _add_participant(conn, "bot")
        for i in range(40):
            await _add_session(conn, f"exp-{i}", expire_time=T0)
        for i in range(30):
            await _add_session(conn, f"del-{i}", delete_time=T0, purge_time=T0)
    other = Database(create_engine(db.engine.url.render_as_string(hide_password=False)), RETENTION)
    try:
        now = T0 + timedelta(seconds=1)
        results = await asyncio.gather(sweep(db, now=now, batch_size=3), sweep(other, now=now, batch_size=3))
    finally:
        await other.engine.dispose()
    assert sum(r.expired_sessions for r in results) == 40, results
    assert sum(r.purged_sessions for r in results) == 30
    rows = await _sessions(db)
    assert len(rows) == 40
    assert {(row["delete_time"], row["version"]) for row in rows.values()} == {(now, 2)}


# --- purge_sessions -----------------------------------------------------------------------------


async def _purge_fixture(db: Database) -> None:
    """default: a1..a4 (team a; a4 soft-deleted), b1, b2 (team b); other: x1 (team a)."""
    async with db.transaction() as conn:
        await conn.execute(insert(namespaces).values(_row(namespace="other")))
        await _add_participant(conn, "bot")
        await _add_participant(conn, "bot", ns="other")
        await _add_participant(conn, "guest")
        for sid in ("a1", "a2", "a3"):
            await _add_session(conn, sid, labels={"team": "a"}, extra=("guest",))
        await _add_session(conn, "a4", labels={"team": "a"}, delete_time=T0, purge_time=T0 + RETENTION)
        for sid in ("b1", "b2"):
            await _add_session(conn, sid, labels={"team": "b"}, extra=("guest",))
        await _add_session(conn, "x1", ns="other", labels={"team": "a"})


def _team(name: str) -> Any:
    return compile_filter(f'labels.team = "{name}"', SESSION_FILTER_FIELDS, namespace=NS)


def _names(*ids: str) -> list[str]:
    return [f"{PARENT}/sessions/{i}" for i in ids]


async def test_purge_without_force_counts_and_samples(db: Database) -> None:
    await _purge_fixture(db)
    assert await purge_sessions(db, NS, _team("a"), force=False) == (4, _names("a1", "a2", "a3", "a4"))
    assert await purge_sessions(db, NS, _team("a"), force=False, sample_size=2) == (4, _names("a1", "a2"))
    assert await purge_sessions(db, NS, None, force=False) == (6, _names("a1", "a2", "a3", "a4", "b1", "b2"))
    assert await purge_sessions(db, NS, _team("c"), force=False) == (0, [])
    assert len(await _sessions(db)) == 6
    assert await _count(db, members) == 12  # nothing went


async def test_purge_with_force_deletes_exactly_the_matches(db: Database) -> None:
    await _purge_fixture(db)
    count, sample = await purge_sessions(db, NS, _team("a"), force=True, batch_size=2)
    assert count == 4
    assert sorted(sample) == _names("a1", "a2", "a3", "a4")  # the soft-deleted one too
    assert sorted(await _sessions(db)) == ["b1", "b2"]
    assert list(await _sessions(db, "other")) == ["x1"]
    async with db.read() as conn:
        member_sessions = set((await conn.execute(select(members.c.session))).scalars())
    assert member_sessions == {"b1", "b2", "x1"}
    assert await purge_sessions(db, NS, _team("a"), force=True) == (0, [])


async def test_purge_with_force_by_member_and_a_small_sample(db: Database) -> None:
    await _purge_fixture(db)
    guest = compile_filter(f'member = "{PARENT}/participants/guest"', SESSION_FILTER_FIELDS, namespace=NS)
    count, sample = await purge_sessions(db, NS, guest, force=True, sample_size=3, batch_size=2)
    assert count == 5
    assert len(sample) == 3
    assert set(sample) <= set(_names("a1", "a2", "a3", "b1", "b2"))
    assert sorted(await _sessions(db)) == ["a4"]
