"""The SQLite bench database: a fresh file, migrated with the server's own migrations, then
filled like the PostgreSQL one (`bench.database`: the namespace, AGENTS agents, USERS
users, N DIRECT sessions with conversation ids, EVENT_SESSIONS event sessions with their
members) through the server's SQLAlchemy tables (`tether.server.db.schema`), so values are
stored exactly as the server stores them."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy

from bench.database import AGENTS, EVENT_SESSIONS, MEMBER, NAMESPACE, OWNER, USERS
from tether.server.db import schema
from tether.server.db.migrate import migrate_sync

BATCH = 5000


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def prepare(path: Path, sessions: int) -> None:
    """Migrate a new database at `path` and seed it with `sessions` sessions s-0 .. s-<n-1>
    and the event sessions e-0 .. e-<EVENT_SESSIONS - 1> (no events: the SQLite cells only
    append)."""
    migrate_sync(url_of(path))
    engine = sqlalchemy.create_engine(url_of(path))
    now = datetime.now(UTC)
    rng = random.Random(5)
    try:
        with engine.begin() as conn:
            conn.execute(
                schema.namespaces.insert(),
                [
                    {
                        "namespace": NAMESPACE,
                        "uid": str(uuid.uuid4()),
                        "display_name": "bench",
                        "labels": {},
                        "create_time": now,
                        "update_time": now,
                    }
                ],
            )
            participants = [
                {
                    "namespace": NAMESPACE,
                    "participant": f"{prefix}-{i}",
                    "uid": str(uuid.uuid4()),
                    "kind": kind,
                    "external_id": f"{prefix}-{i}",
                    "labels": {},
                    "create_time": now,
                    "update_time": now,
                }
                for prefix, kind, count in (("agent", 2, AGENTS), ("user", 1, USERS))
                for i in range(count)
            ]
            conn.execute(schema.participants.insert(), participants)
            for start in range(0, sessions, BATCH):
                rows: list[dict[str, Any]] = []
                for i in range(start, min(start + BATCH, sessions)):
                    t = now - timedelta(seconds=rng.random() * 30 * 86400)
                    rows.append(
                        {
                            "namespace": NAMESPACE,
                            "session": f"s-{i}",
                            "uid": str(uuid.uuid4()),
                            "kind": 1,
                            "agent": f"agent-{i % AGENTS}",
                            "user": f"user-{i % USERS}",
                            "channel": "web",
                            "external_conversation_id": f"c-{i}",
                            "labels": {},
                            "create_time": t,
                            "update_time": t,
                            "last_activity_time": t,
                        }
                    )
                conn.execute(schema.sessions.insert(), rows)
            conn.execute(
                schema.sessions.insert(),
                [
                    {
                        "namespace": NAMESPACE,
                        "session": f"e-{i}",
                        "uid": str(uuid.uuid4()),
                        "kind": 1,
                        "agent": f"agent-{i % AGENTS}",
                        "user": f"user-{i % USERS}",
                        "channel": "web",
                        "external_conversation_id": f"e-{i}",
                        "labels": {},
                        "create_time": now,
                        "update_time": now,
                        "last_activity_time": now,
                        "member_count": 2,
                    }
                    for i in range(EVENT_SESSIONS)
                ],
            )
            conn.execute(
                schema.members.insert(),
                [
                    {
                        "namespace": NAMESPACE,
                        "session": f"e-{i}",
                        "participant": participant,
                        "role": role,
                        "join_time": now,
                        "update_time": now,
                    }
                    for i in range(EVENT_SESSIONS)
                    for participant, role in ((f"agent-{i % AGENTS}", OWNER), (f"user-{i % USERS}", MEMBER))
                ],
            )
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()
