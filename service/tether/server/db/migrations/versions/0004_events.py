"""Events: the conversation itself (DESIGN.md "Event").

The `events` table, the sessions' `event_count` and `last_sequence`, what else a
request id's call created (`idempotency.also_created`), and on PostgreSQL the RFC 7396
merge patch function that applies an event's `state_delta` (SQLite has `json_patch`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# RFC 7396, section 2: an object patch merges key by key (a null value removes the
# key), anything else replaces the target. IMMUTABLE, so the planner may fold it.
MERGE_PATCH = """
CREATE OR REPLACE FUNCTION tether_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  k text;
  v jsonb;
BEGIN
  IF patch IS NULL THEN
    RETURN target;
  END IF;
  IF jsonb_typeof(patch) <> 'object' THEN
    RETURN patch;
  END IF;
  IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
    target := '{}'::jsonb;
  END IF;
  FOR k, v IN SELECT key, value FROM jsonb_each(patch) LOOP
    IF jsonb_typeof(v) = 'null' THEN
      target := target - k;
    ELSE
      target := jsonb_set(target, ARRAY[k], tether_merge_patch(target -> k, v));
    END IF;
  END LOOP;
  RETURN target;
END
$$
"""


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("event_count", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "sessions", sa.Column("last_sequence", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("idempotency", sa.Column("also_created", sa.Text(), nullable=True))
    op.create_table(
        "events",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("session", sa.String(63), nullable=False),
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event", sa.String(63), nullable=False),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("author", sa.String(63), nullable=True),
        sa.Column("invocation_id", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("branch", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("content", JSON, nullable=True),
        sa.Column("state_delta", JSON, nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace", "session"],
            ["sessions.namespace", "sessions.session"],
            name="fk_events_namespace_session_sessions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["namespace", "author"],
            ["participants.namespace", "participants.participant"],
            name="fk_events_namespace_author_participants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("namespace", "session", "sequence", name="pk_events"),
    )
    op.create_index("uq_events_event", "events", ["namespace", "session", "event"], unique=True)
    op.create_index("ix_events_author", "events", ["namespace", "author"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(MERGE_PATCH)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tether_merge_patch(jsonb, jsonb)")
    op.drop_index("ix_events_author", table_name="events")
    op.drop_index("uq_events_event", table_name="events")
    op.drop_table("events")
    with op.batch_alter_table("idempotency") as batch:
        batch.drop_column("also_created")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("last_sequence")
        batch.drop_column("event_count")
