"""Migrations keep what is there: 0003 turns each recorded response of a request id into
the name of what it created, and drops the records of FindOrCreate calls that found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.support.server import ServerFactory
from tether.server.db.engine import create_engine
from tether.server.db.migrate import migrate
from tether.v1 import participant_pb2, session_pb2
from tether.v1 import session_service_pb2 as pb

SESSION = "namespaces/default/sessions/s1"
PARTICIPANT = "namespaces/default/participants/p1"


async def test_request_id_records_keep_the_created_name(server_factory: ServerFactory) -> None:
    url = server_factory.new_database()
    await migrate(url, "0002")
    now = datetime.now(UTC)
    recorded = {
        "r-create": ("CreateSession", session_pb2.Session(name=SESSION).SerializeToString()),
        "r-made": (
            "FindOrCreateParticipant",
            pb.FindOrCreateParticipantResponse(
                participant=participant_pb2.Participant(name=PARTICIPANT), created=True
            ).SerializeToString(),
        ),
        "r-found": (
            "FindOrCreateSession",
            pb.FindOrCreateSessionResponse(session=session_pb2.Session(name=SESSION)).SerializeToString(),
        ),
    }
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for request_id, (method, response) in recorded.items():
                await conn.execute(
                    text(
                        "INSERT INTO idempotency (namespace, request_id, method, fingerprint, response, "
                        "create_time, expire_time) VALUES ('default', :r, :m, :f, :b, :now, :later)"
                    ),
                    {
                        "r": request_id,
                        "m": method,
                        "f": "0" * 64,
                        "b": response,
                        "now": now,
                        "later": now + timedelta(hours=1),
                    },
                )
        await engine.dispose()
        await migrate(url)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT request_id, method, resource FROM idempotency ORDER BY request_id")
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [
        ("r-create", "CreateSession", SESSION),
        ("r-made", "FindOrCreateParticipant", PARTICIPANT),
    ]
