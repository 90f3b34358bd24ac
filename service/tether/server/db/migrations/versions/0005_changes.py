"""Changes: what WatchSessions streams (DESIGN.md "WatchSessions").

The `changes` table, written only by triggers, so that no write to a session, a
member or an event commits without its change and no change exists without its
write, whichever statement or transaction made it (RPCs, PurgeSessions, the
sweeper, foreign-key cascades). Each change holds the session as it was right
after it (before it, for PURGED, so that a watcher's filter still applies).

The revision, per namespace strictly increasing and delivered gap-free:

- PostgreSQL: `(transaction id << 20) | n`, n counting the transaction's changes. A
  watcher delivers only revisions below `pg_snapshot_xmin(pg_current_snapshot()) << 20`:
  every transaction with a smaller id has finished, and no new one can get one, so
  that prefix of the table is final and a late commit is never skipped. Writers never
  wait on each other for it (a per-namespace counter row would serialize every write
  of a namespace on one lock held through the commit: measured with pgbench at 32
  clients, 1,990 commits/s against 11,800 for the transaction-id stamp). A session
  row remembers the transaction that changed it last (`sessions.revision`); a writer
  whose transaction id is older than that (it took its id before queueing on the row
  lock) is refused with SQLSTATE TX001 and retried by the server in a new
  transaction, so one session's changes are in revision order as they happened.
- SQLite: writers take turns on the database, so the next revision is one more than the
  last (`change_clock`; the first is 2, so that `start_revision = 1` is "every change
  held" on both).

`namespaces.compacted_revision`: changes up to it may be gone (a resume point below
it is OUT_OF_RANGE).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Change types: WatchSessionsResponse.ChangeType's numbers.
CREATED, UPDATED, DELETED, UNDELETED, PURGED = 1, 2, 3, 4, 5
MEMBER_ADDED, MEMBER_REMOVED, ACTIVITY, EVENT_APPENDED, EVENT_DELETED, MEMBER_UPDATED = 6, 7, 8, 9, 10, 11

# ---------------------------------------------------------------- PostgreSQL

_PG_FUNCTIONS = f"""
-- The next revision of this transaction: its id, then how many changes it made so far.
CREATE FUNCTION tether_revision() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  n integer := coalesce(nullif(current_setting('tether.changes', true), ''), '0')::integer;
  xid bigint := pg_current_xact_id()::text::bigint;
BEGIN
  IF n >= 1048576 OR xid >= 8796093022208 THEN
    RAISE EXCEPTION 'tether: revision space exhausted (% changes in one transaction)', n
      USING ERRCODE = '54000';
  END IF;
  PERFORM set_config('tether.changes', (n + 1)::text, true);
  RETURN (xid << 20) | n;
END
$$;

-- Before a session row changes or goes: refuse a transaction older than the session's
-- last writer (see the migration's docstring), remember this one, and record the change.
-- (BEFORE: one trigger does all of it, and an UPDATE or DELETE that reaches a BEFORE ROW
-- trigger happens, or the statement fails and takes the change with it.)
CREATE FUNCTION tether_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  xid bigint := pg_current_xact_id()::text::bigint;
  kind smallint;
BEGIN
  IF (OLD.revision >> 20) > xid THEN
    RAISE EXCEPTION 'tether: session % changed by a newer transaction', OLD.session
      USING ERRCODE = 'TX001';
  END IF;
  IF TG_OP = 'DELETE' THEN
    -- A namespace being deleted takes its changes with it.
    IF EXISTS (SELECT 1 FROM namespaces WHERE namespace = OLD.namespace) THEN
      INSERT INTO changes (namespace, revision, type, session, snapshot, change_time)
      VALUES (OLD.namespace, tether_revision(), {PURGED}, OLD.session, to_jsonb(OLD), clock_timestamp());
    END IF;
    RETURN OLD;
  END IF;
  NEW.revision := xid << 20;
  IF NEW.member_count <> OLD.member_count OR NEW.event_count <> OLD.event_count THEN
    RETURN NEW;  -- the member's or the event's own change reports it
  ELSIF OLD.delete_time IS NULL AND NEW.delete_time IS NOT NULL THEN
    kind := {DELETED};
  ELSIF OLD.delete_time IS NOT NULL AND NEW.delete_time IS NULL THEN
    kind := {UNDELETED};
  ELSIF NEW.version <> OLD.version THEN
    kind := {UPDATED};
  ELSIF NEW.last_activity_time <> OLD.last_activity_time THEN
    kind := {ACTIVITY};
  ELSE
    RETURN NEW;  -- nothing a watcher sees moved
  END IF;
  INSERT INTO changes (namespace, revision, type, session, snapshot, change_time)
  VALUES (NEW.namespace, tether_revision(), kind, NEW.session, to_jsonb(NEW), clock_timestamp());
  RETURN NEW;
END
$$;

-- After a session row is inserted (AFTER: an INSERT ... ON CONFLICT DO NOTHING that
-- finds the key inserts nothing, and must record nothing).
CREATE FUNCTION tether_session_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO changes (namespace, revision, type, session, snapshot, change_time)
  VALUES (NEW.namespace, tether_revision(), {CREATED}, NEW.session, to_jsonb(NEW), clock_timestamp());
  RETURN NULL;
END
$$;

-- Members and events: the session as it is at the end of the statement; nothing when
-- the session itself is being purged (its PURGED says it all).
CREATE FUNCTION tether_member_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  m members;
  snap jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN m := OLD; ELSE m := NEW; END IF;
  IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
    RETURN NULL;
  END IF;
  SELECT to_jsonb(s) INTO snap FROM sessions s WHERE s.namespace = m.namespace AND s.session = m.session;
  -- A member added while the session is at version 1 is one it was created with (every
  -- later membership change moves the version first): its CREATED says it.
  IF snap IS NOT NULL AND NOT (TG_OP = 'INSERT' AND (snap ->> 'version')::bigint = 1) THEN
    INSERT INTO changes (namespace, revision, type, session, participant, snapshot, member, change_time)
    VALUES (m.namespace, tether_revision(),
            CASE TG_OP WHEN 'INSERT' THEN {MEMBER_ADDED} WHEN 'UPDATE' THEN {MEMBER_UPDATED}
                       ELSE {MEMBER_REMOVED} END,
            m.session, m.participant, snap, to_jsonb(m), clock_timestamp());
  END IF;
  RETURN NULL;
END
$$;

CREATE FUNCTION tether_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  e events;
  snap jsonb;
BEGIN
  IF TG_OP = 'INSERT' THEN e := NEW; ELSE e := OLD; END IF;
  SELECT to_jsonb(s) INTO snap FROM sessions s WHERE s.namespace = e.namespace AND s.session = e.session;
  IF snap IS NOT NULL THEN
    INSERT INTO changes (namespace, revision, type, session, event, sequence, snapshot, change_time)
    VALUES (e.namespace, tether_revision(),
            CASE TG_OP WHEN 'INSERT' THEN {EVENT_APPENDED} ELSE {EVENT_DELETED} END,
            e.session, e.event, e.sequence, snap, clock_timestamp());
  END IF;
  RETURN NULL;
END
$$;
"""

_PG_TRIGGERS = [
    "CREATE TRIGGER tether_session_changed BEFORE UPDATE OR DELETE ON sessions "
    "FOR EACH ROW EXECUTE FUNCTION tether_session_changed()",
    "CREATE TRIGGER tether_session_created AFTER INSERT ON sessions "
    "FOR EACH ROW EXECUTE FUNCTION tether_session_created()",
    "CREATE TRIGGER tether_member_change AFTER INSERT OR UPDATE OR DELETE ON members "
    "FOR EACH ROW EXECUTE FUNCTION tether_member_change()",
    "CREATE TRIGGER tether_event_change AFTER INSERT OR DELETE ON events "
    "FOR EACH ROW EXECUTE FUNCTION tether_event_change()",
]

_PG_DROP = """
DROP TRIGGER IF EXISTS tether_event_change ON events;
DROP TRIGGER IF EXISTS tether_member_change ON members;
DROP TRIGGER IF EXISTS tether_session_created ON sessions;
DROP TRIGGER IF EXISTS tether_session_changed ON sessions;
DROP FUNCTION IF EXISTS tether_event_change();
DROP FUNCTION IF EXISTS tether_member_change();
DROP FUNCTION IF EXISTS tether_session_created();
DROP FUNCTION IF EXISTS tether_session_changed();
DROP FUNCTION IF EXISTS tether_revision();
"""

# ---------------------------------------------------------------- SQLite

# The columns as of this migration (frozen here: a later column needs a later migration
# to add it to the snapshot). JSON columns are embedded as JSON, not as strings.
_SESSION_COLUMNS = [
    "namespace",
    "session",
    "uid",
    "kind",
    "display_name",
    "description",
    "agent",
    "user",
    "peer_agent",
    "agent_pair",
    "channel",
    "external_conversation_id",
    "group_name",
    "enabled",
    "managed",
    "auto_created",
    "labels",
    "session_state",
    "create_time",
    "update_time",
    "last_activity_time",
    "expire_time",
    "delete_time",
    "purge_time",
    "member_count",
    "version",
    "event_count",
    "last_sequence",
    "revision",
]
_MEMBER_COLUMNS = ["namespace", "session", "participant", "role", "join_time", "update_time", "version"]
_JSON_COLUMNS = {"labels", "session_state"}


def _json_object(row: str, columns: Sequence[str]) -> str:
    def value(column: str) -> str:
        ref = f'{row}."{column}"'
        return f"json({ref})" if column in _JSON_COLUMNS else ref

    return "json_object(" + ", ".join(f"'{c}', {value(c)}" for c in columns) + ")"


# SQLite's last revision handed out lives in `change_clock` (one row); each change moves it
# first. It starts at 1, so revisions start at 2 (PostgreSQL's are far larger), and
# `start_revision = 1` means "every change held" on both (0 means "from now").
_SQLITE_TICK = "UPDATE change_clock SET revision = revision + 1; "
_SQLITE_NEXT = "(SELECT revision FROM change_clock)"
# Microseconds, as the UTC columns store them.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"


def _sqlite_insert(ns: str, kind: str, session: str, who: str, ev: str, seq: str, snap: str, mem: str) -> str:
    return _SQLITE_TICK + (
        "INSERT INTO changes (namespace, revision, type, session, participant, event, sequence, "
        f"snapshot, member, change_time) VALUES ({ns}, {_SQLITE_NEXT}, {kind}, {session}, {who}, "
        f"{ev}, {seq}, {snap}, {mem}, {_SQLITE_NOW});"
    )


def _session_of(row: str) -> str:
    return (
        f"(SELECT {_json_object('s', _SESSION_COLUMNS)} FROM sessions s "
        f"WHERE s.namespace = {row}.namespace AND s.session = {row}.session)"
    )


def _session_exists(row: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM sessions s WHERE s.namespace = {row}.namespace AND s.session = {row}.session)"
    )


_SQLITE_UPDATE_KIND = (
    f"CASE WHEN OLD.delete_time IS NULL AND NEW.delete_time IS NOT NULL THEN {DELETED} "
    f"WHEN OLD.delete_time IS NOT NULL AND NEW.delete_time IS NULL THEN {UNDELETED} "
    f"WHEN NEW.version <> OLD.version THEN {UPDATED} ELSE {ACTIVITY} END"
)

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER tether_session_created AFTER INSERT ON sessions BEGIN "
    + _sqlite_insert(
        "NEW.namespace",
        str(CREATED),
        "NEW.session",
        "NULL",
        "NULL",
        "NULL",
        _json_object("NEW", _SESSION_COLUMNS),
        "NULL",
    )
    + " END",
    "CREATE TRIGGER tether_session_changed AFTER UPDATE ON sessions "
    "WHEN NEW.member_count = OLD.member_count AND NEW.event_count = OLD.event_count "
    "AND (NEW.version <> OLD.version OR NEW.last_activity_time <> OLD.last_activity_time "
    "OR NEW.delete_time IS NOT OLD.delete_time) BEGIN "
    + _sqlite_insert(
        "NEW.namespace",
        _SQLITE_UPDATE_KIND,
        "NEW.session",
        "NULL",
        "NULL",
        "NULL",
        _json_object("NEW", _SESSION_COLUMNS),
        "NULL",
    )
    + " END",
    "CREATE TRIGGER tether_session_purged AFTER DELETE ON sessions "
    "WHEN EXISTS (SELECT 1 FROM namespaces WHERE namespace = OLD.namespace) BEGIN "
    + _sqlite_insert(
        "OLD.namespace",
        str(PURGED),
        "OLD.session",
        "NULL",
        "NULL",
        "NULL",
        _json_object("OLD", _SESSION_COLUMNS),
        "NULL",
    )
    + " END",
    "CREATE TRIGGER tether_member_added AFTER INSERT ON members WHEN (SELECT s.version > 1 FROM sessions s "
    "WHERE s.namespace = NEW.namespace AND s.session = NEW.session) BEGIN "
    + _sqlite_insert(
        "NEW.namespace",
        str(MEMBER_ADDED),
        "NEW.session",
        "NEW.participant",
        "NULL",
        "NULL",
        _session_of("NEW"),
        _json_object("NEW", _MEMBER_COLUMNS),
    )
    + " END",
    "CREATE TRIGGER tether_member_updated AFTER UPDATE ON members "
    f"WHEN NEW.version <> OLD.version AND {_session_exists('NEW')} BEGIN "
    + _sqlite_insert(
        "NEW.namespace",
        str(MEMBER_UPDATED),
        "NEW.session",
        "NEW.participant",
        "NULL",
        "NULL",
        _session_of("NEW"),
        _json_object("NEW", _MEMBER_COLUMNS),
    )
    + " END",
    f"CREATE TRIGGER tether_member_removed AFTER DELETE ON members WHEN {_session_exists('OLD')} BEGIN "
    + _sqlite_insert(
        "OLD.namespace",
        str(MEMBER_REMOVED),
        "OLD.session",
        "OLD.participant",
        "NULL",
        "NULL",
        _session_of("OLD"),
        _json_object("OLD", _MEMBER_COLUMNS),
    )
    + " END",
    f"CREATE TRIGGER tether_event_appended AFTER INSERT ON events WHEN {_session_exists('NEW')} BEGIN "
    + _sqlite_insert(
        "NEW.namespace",
        str(EVENT_APPENDED),
        "NEW.session",
        "NULL",
        "NEW.event",
        "NEW.sequence",
        _session_of("NEW"),
        "NULL",
    )
    + " END",
    f"CREATE TRIGGER tether_event_deleted AFTER DELETE ON events WHEN {_session_exists('OLD')} BEGIN "
    + _sqlite_insert(
        "OLD.namespace",
        str(EVENT_DELETED),
        "OLD.session",
        "NULL",
        "OLD.event",
        "OLD.sequence",
        _session_of("OLD"),
        "NULL",
    )
    + " END",
]
_SQLITE_TRIGGER_NAMES = [
    "tether_session_created",
    "tether_session_changed",
    "tether_session_purged",
    "tether_member_added",
    "tether_member_updated",
    "tether_member_removed",
    "tether_event_appended",
    "tether_event_deleted",
]


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("revision", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "namespaces",
        sa.Column("compacted_revision", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "changes",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("revision", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("session", sa.String(63), nullable=False),
        sa.Column("participant", sa.String(63), nullable=True),
        sa.Column("event", sa.String(63), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("snapshot", JSON, nullable=False),
        sa.Column("member", JSON, nullable=True),
        sa.Column("change_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace"],
            ["namespaces.namespace"],
            name="fk_changes_namespace_namespaces",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("namespace", "revision", name="pk_changes"),
    )
    # SQLite numbers changes from here (PostgreSQL leaves it alone).
    op.create_table(
        "change_clock",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_clock"),
    )
    op.execute("INSERT INTO change_clock (id, revision) VALUES (1, 1)")
    if op.get_bind().dialect.name == "postgresql":
        # One statement per execute (asyncpg prepares each); the functions are separated
        # by blank lines and hold none.
        for statement in [*_PG_FUNCTIONS.strip().split("\n\n"), *_PG_TRIGGERS]:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_DROP.strip().splitlines():
            op.execute(statement)
    else:
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("change_clock")
    op.drop_table("changes")
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("compacted_revision")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("revision")
