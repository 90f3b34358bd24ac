"""Initial schema: namespaces, participants, sessions, members; the `default` namespace.

Written out by hand (not `metadata.create_all`) so that it stays what it was
when later migrations change `schema.py`. `schema_drift()` in
`tether.server.db.migrate` checks that the migrated database matches the schema.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON (text) on SQLite.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.String(63)
UID = sa.String(36)

# Partial unique indexes: the database enforces "unique among live rows".
LIVE_EXTERNAL_ID = "delete_time IS NULL AND external_id IS NOT NULL"
LIVE_CONVERSATION = "delete_time IS NULL AND external_conversation_id IS NOT NULL"
LIVE_AGENT_PAIR = "delete_time IS NULL AND agent_pair IS NOT NULL"


def _ts(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=False, server_default=sa.text("''"))


def _flag(name: str, default: bool) -> sa.Column[bool]:
    return sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.text(str(default).lower()))


def _version() -> sa.Column[int]:
    return sa.Column("version", sa.BigInteger(), nullable=False, server_default=sa.text("1"))


def _partial_unique(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        table,
        columns,
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def _participant_fk(column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["namespace", column],
        ["participants.namespace", "participants.participant"],
        name=f"fk_sessions_namespace_{column}_participants",
        ondelete="CASCADE",
    )


def _create_namespaces() -> sa.Table:
    return op.create_table(
        "namespaces",
        sa.Column("namespace", ID, nullable=False),
        sa.Column("uid", UID, nullable=False),
        _text("display_name"),
        sa.Column("labels", JSON, nullable=False),
        _ts("create_time"),
        _ts("update_time"),
        _version(),
        sa.PrimaryKeyConstraint("namespace", name="pk_namespaces"),
        sa.UniqueConstraint("uid", name="uq_namespaces_uid"),
    )


def _create_participants() -> None:
    op.create_table(
        "participants",
        sa.Column("namespace", ID, nullable=False),
        sa.Column("participant", ID, nullable=False),
        sa.Column("uid", UID, nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        _text("display_name"),
        _text("avatar_uri"),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=True),
        _flag("enabled", True),
        _flag("managed", False),
        _ts("create_time"),
        _ts("update_time"),
        _ts("delete_time", nullable=True),
        _ts("purge_time", nullable=True),
        _version(),
        sa.PrimaryKeyConstraint("namespace", "participant", name="pk_participants"),
        sa.ForeignKeyConstraint(
            ["namespace"],
            ["namespaces.namespace"],
            name="fk_participants_namespace_namespaces",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("uid", name="uq_participants_uid"),
    )
    _partial_unique(
        "uq_participants_live_external_id",
        "participants",
        ["namespace", "kind", "external_id"],
        LIVE_EXTERNAL_ID,
    )
    for column in ("create_time", "update_time", "display_name"):
        op.create_index(f"ix_participants_{column}", "participants", ["namespace", column, "uid"])


def _create_sessions() -> None:
    op.create_table(
        "sessions",
        sa.Column("namespace", ID, nullable=False),
        sa.Column("session", ID, nullable=False),
        sa.Column("uid", UID, nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        _text("display_name"),
        _text("description"),
        sa.Column("agent", ID, nullable=False),
        sa.Column("user", ID, nullable=True),
        sa.Column("peer_agent", ID, nullable=True),
        sa.Column("agent_pair", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("external_conversation_id", sa.Text(), nullable=True),
        _text("group_name"),
        _flag("enabled", True),
        _flag("managed", False),
        _flag("auto_created", False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("session_state", JSON, nullable=True),
        _ts("create_time"),
        _ts("update_time"),
        _ts("last_activity_time"),
        _ts("expire_time", nullable=True),
        _ts("delete_time", nullable=True),
        _ts("purge_time", nullable=True),
        sa.Column("member_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _version(),
        sa.PrimaryKeyConstraint("namespace", "session", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["namespace"],
            ["namespaces.namespace"],
            name="fk_sessions_namespace_namespaces",
            ondelete="CASCADE",
        ),
        _participant_fk("agent"),
        _participant_fk("user"),
        _participant_fk("peer_agent"),
        sa.UniqueConstraint("uid", name="uq_sessions_uid"),
    )
    _partial_unique(
        "uq_sessions_live_conversation",
        "sessions",
        ["namespace", "agent", "channel", "external_conversation_id"],
        LIVE_CONVERSATION,
    )
    _partial_unique("uq_sessions_live_agent_pair", "sessions", ["namespace", "agent_pair"], LIVE_AGENT_PAIR)
    # Keyset pagination: one index per order_by key, uid breaks ties.
    for column in ("last_activity_time", "create_time", "update_time", "display_name"):
        op.create_index(f"ix_sessions_{column}", "sessions", ["namespace", column, "uid"])
    op.create_index("ix_sessions_agent", "sessions", ["namespace", "agent"])
    op.create_index("ix_sessions_user", "sessions", ["namespace", "user"])
    op.create_index("ix_sessions_expire_time", "sessions", ["expire_time"])
    op.create_index("ix_sessions_purge_time", "sessions", ["purge_time"])


def _create_members() -> None:
    op.create_table(
        "members",
        sa.Column("namespace", ID, nullable=False),
        sa.Column("session", ID, nullable=False),
        sa.Column("participant", ID, nullable=False),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        _ts("join_time"),
        _ts("update_time"),
        _version(),
        sa.PrimaryKeyConstraint("namespace", "session", "participant", name="pk_members"),
        sa.ForeignKeyConstraint(
            ["namespace", "session"],
            ["sessions.namespace", "sessions.session"],
            name="fk_members_namespace_session_sessions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["namespace", "participant"],
            ["participants.namespace", "participants.participant"],
            name="fk_members_namespace_participant_participants",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_members_participant", "members", ["namespace", "participant"])


def _seed_default_namespace(namespaces: sa.Table) -> None:
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        # schema.UTCDateTime stores naive UTC on SQLite.
        now = now.replace(tzinfo=None)
    op.bulk_insert(
        namespaces,
        [
            {
                "namespace": "default",
                "uid": str(uuid.uuid4()),
                "display_name": "Default",
                "labels": {},
                "create_time": now,
                "update_time": now,
                "version": 1,
            }
        ],
    )


def upgrade() -> None:
    namespaces = _create_namespaces()
    _create_participants()
    _create_sessions()
    _create_members()
    _seed_default_namespace(namespaces)


def downgrade() -> None:
    for table in ("members", "sessions", "participants", "namespaces"):
        op.drop_table(table)
