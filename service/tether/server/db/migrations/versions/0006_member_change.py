"""Changes: a member's trigger skips the members a session is created with before it
copies the session (migration 0005 copied the session to JSON first, then skipped: two
copies for nothing per CreateSession of a DIRECT or AGENT_TO_AGENT session).

PostgreSQL only (SQLite's trigger already decides in its WHEN clause).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MEMBER_ADDED, MEMBER_REMOVED, MEMBER_UPDATED = 6, 7, 11

_BODY = """
CREATE OR REPLACE FUNCTION tether_member_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  m members;
  snap jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN m := OLD; ELSE m := NEW; END IF;
  IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
    RETURN NULL;
  END IF;
  -- A member added while the session is at version 1 is one it was created with (every
  -- later membership change moves the version first): its CREATED says it.
  SELECT to_jsonb(s) INTO snap FROM sessions s
  WHERE s.namespace = m.namespace AND s.session = m.session AND NOT (TG_OP = 'INSERT' AND s.version = 1);
  IF snap IS NOT NULL THEN
    INSERT INTO changes (namespace, revision, type, session, participant, snapshot, member, change_time)
    VALUES (m.namespace, tether_revision(),
            CASE TG_OP WHEN 'INSERT' THEN {added} WHEN 'UPDATE' THEN {updated} ELSE {removed} END,
            m.session, m.participant, snap, to_jsonb(m), clock_timestamp());
  END IF;
  RETURN NULL;
END
$$
"""


def _function(skip_first_members_early: bool) -> str:
    body = _BODY.format(added=MEMBER_ADDED, updated=MEMBER_UPDATED, removed=MEMBER_REMOVED)
    if skip_first_members_early:
        return body
    # 0005's: copy first, then skip.
    return body.replace(
        " AND NOT (TG_OP = 'INSERT' AND s.version = 1);\n  IF snap IS NOT NULL THEN",
        ";\n  IF snap IS NOT NULL AND NOT (TG_OP = 'INSERT' AND (snap ->> 'version')::bigint = 1) THEN",
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(skip_first_members_early=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(skip_first_members_early=False))
