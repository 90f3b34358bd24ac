"""SQLAlchemy Core tables: the one schema for SQLite and PostgreSQL.

Every key leads with `namespace`, so the schema can be distributed by
namespace (Citus) without a redesign. Uniqueness that the contract promises is
enforced here by (partial) unique indexes, never by select-then-insert.
Alembic migrations in `tether.server.db.migrations` create exactly this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases.

    PostgreSQL stores `timestamptz`; SQLite has no timezone type, so values are
    stored as naive UTC (fixed-width ISO strings that sort correctly) and come
    back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON on SQLite, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")

ID = String(63)
UID = String(36)


def _ts(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, UTCDateTime(), nullable=nullable)


naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=naming_convention)

namespaces = Table(
    "namespaces",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("uid", UID, nullable=False, unique=True),
    Column("display_name", Text, nullable=False, server_default=text("''")),
    Column("labels", JSONType, nullable=False),
    _ts("create_time"),
    _ts("update_time"),
    # Row version: bumped by every write; the etag is derived from it.
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    # Changes up to this revision may have been compacted away (see `changes`).
    Column("compacted_revision", BigInteger, nullable=False, server_default=text("0")),
)

participants = Table(
    "participants",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("participant", ID, primary_key=True),
    Column("uid", UID, nullable=False, unique=True),
    Column("kind", SmallInteger, nullable=False),
    Column("display_name", Text, nullable=False, server_default=text("''")),
    Column("avatar_uri", Text, nullable=False, server_default=text("''")),
    # NULL when the caller gave none, so it stays out of the unique index.
    Column("external_id", Text, nullable=True),
    Column("labels", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("managed", Boolean, nullable=False, server_default=text("false")),
    _ts("create_time"),
    _ts("update_time"),
    _ts("delete_time", nullable=True),
    _ts("purge_time", nullable=True),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    ForeignKeyConstraint(["namespace"], ["namespaces.namespace"], ondelete="CASCADE"),
)

# external_id is unique per namespace + kind among participants not deleted.
participants_live_external_id = Index(
    "uq_participants_live_external_id",
    participants.c.namespace,
    participants.c.kind,
    participants.c.external_id,
    unique=True,
    sqlite_where=text("delete_time IS NULL AND external_id IS NOT NULL"),
    postgresql_where=text("delete_time IS NULL AND external_id IS NOT NULL"),
)
Index("ix_participants_create_time", participants.c.namespace, participants.c.create_time, participants.c.uid)
Index("ix_participants_update_time", participants.c.namespace, participants.c.update_time, participants.c.uid)
Index(
    "ix_participants_display_name", participants.c.namespace, participants.c.display_name, participants.c.uid
)

sessions = Table(
    "sessions",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("session", ID, primary_key=True),
    Column("uid", UID, nullable=False, unique=True),
    Column("kind", SmallInteger, nullable=False),
    Column("display_name", Text, nullable=False, server_default=text("''")),
    Column("description", Text, nullable=False, server_default=text("''")),
    # Participant ids in the same namespace (the FKs below make a
    # cross-namespace reference impossible).
    Column("agent", ID, nullable=False),
    Column("user", ID, nullable=True),
    Column("peer_agent", ID, nullable=True),
    # "<low>/<high>" participant ids of an AGENT_TO_AGENT session: makes the
    # unordered pair a plain unique key on both databases.
    Column("agent_pair", Text, nullable=True),
    Column("channel", String(32), nullable=False),
    Column("external_conversation_id", Text, nullable=True),
    Column("group_name", Text, nullable=False, server_default=text("''")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("managed", Boolean, nullable=False, server_default=text("false")),
    Column("auto_created", Boolean, nullable=False, server_default=text("false")),
    Column("labels", JSONType, nullable=False),
    Column("session_state", JSONType, nullable=True),
    _ts("create_time"),
    _ts("update_time"),
    _ts("last_activity_time"),
    _ts("expire_time", nullable=True),
    _ts("delete_time", nullable=True),
    _ts("purge_time", nullable=True),
    Column("member_count", Integer, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    Column("event_count", BigInteger, nullable=False, server_default=text("0")),
    # The sequence of the latest event appended (0 before the first): the next
    # append takes last_sequence + 1 under the session row's lock, so sequences
    # are gapless at append time. Deletes leave it alone (sequences are not reused).
    Column("last_sequence", BigInteger, nullable=False, server_default=text("0")),
    # PostgreSQL: the last writing transaction's id << 20, set by a trigger (migration
    # 0005), so that one session's changes get revisions in the order they happened.
    Column("revision", BigInteger, nullable=False, server_default=text("0")),
    ForeignKeyConstraint(["namespace"], ["namespaces.namespace"], ondelete="CASCADE"),
    ForeignKeyConstraint(
        ["namespace", "agent"], ["participants.namespace", "participants.participant"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["namespace", "user"], ["participants.namespace", "participants.participant"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["namespace", "peer_agent"],
        ["participants.namespace", "participants.participant"],
        ondelete="CASCADE",
    ),
)

# One live session per agent + channel + external conversation id.
sessions_live_conversation = Index(
    "uq_sessions_live_conversation",
    sessions.c.namespace,
    sessions.c.agent,
    sessions.c.channel,
    sessions.c.external_conversation_id,
    unique=True,
    sqlite_where=text("delete_time IS NULL AND external_conversation_id IS NOT NULL"),
    postgresql_where=text("delete_time IS NULL AND external_conversation_id IS NOT NULL"),
)
# One live AGENT_TO_AGENT session per unordered agent pair.
sessions_live_agent_pair = Index(
    "uq_sessions_live_agent_pair",
    sessions.c.namespace,
    sessions.c.agent_pair,
    unique=True,
    sqlite_where=text("delete_time IS NULL AND agent_pair IS NOT NULL"),
    postgresql_where=text("delete_time IS NULL AND agent_pair IS NOT NULL"),
)
# Keyset pagination: one index per order_by key, uid breaks ties.
Index("ix_sessions_last_activity_time", sessions.c.namespace, sessions.c.last_activity_time, sessions.c.uid)
Index("ix_sessions_create_time", sessions.c.namespace, sessions.c.create_time, sessions.c.uid)
Index("ix_sessions_update_time", sessions.c.namespace, sessions.c.update_time, sessions.c.uid)
Index("ix_sessions_display_name", sessions.c.namespace, sessions.c.display_name, sessions.c.uid)
Index("ix_sessions_agent", sessions.c.namespace, sessions.c.agent)
Index("ix_sessions_user", sessions.c.namespace, sessions.c.user)
Index("ix_sessions_expire_time", sessions.c.expire_time)
Index("ix_sessions_purge_time", sessions.c.purge_time)

members = Table(
    "members",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("session", ID, primary_key=True),
    Column("participant", ID, primary_key=True),
    Column("role", SmallInteger, nullable=False),
    _ts("join_time"),
    _ts("update_time"),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    ForeignKeyConstraint(
        ["namespace", "session"], ["sessions.namespace", "sessions.session"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["namespace", "participant"],
        ["participants.namespace", "participants.participant"],
        ondelete="CASCADE",
    ),
)
# `member = "<participant>"` filters and "sessions of a participant".
Index("ix_members_participant", members.c.namespace, members.c.participant)

# A session's conversation: an append-only log keyed by (namespace, session, sequence),
# so "the last N" is a backward range scan of the primary key however many events the
# namespace holds. Purging a session (or its namespace) takes its events with it.
events = Table(
    "events",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("session", ID, primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("event", ID, nullable=False),
    Column("uid", UID, nullable=False),
    # A participant id in the same namespace; NULL for system events.
    Column("author", ID, nullable=True),
    Column("invocation_id", Text, nullable=False, server_default=text("''")),
    Column("branch", Text, nullable=False, server_default=text("''")),
    Column("labels", JSONType, nullable=False),
    Column("content", JSONType, nullable=True),
    Column("state_delta", JSONType, nullable=True),
    _ts("event_time"),
    _ts("create_time"),
    ForeignKeyConstraint(
        ["namespace", "session"], ["sessions.namespace", "sessions.session"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["namespace", "author"],
        ["participants.namespace", "participants.participant"],
        ondelete="CASCADE",
    ),
)
# GetEvent and DeleteEvent by id; a client-chosen event_id is unique within its session.
Index("uq_events_event", events.c.namespace, events.c.session, events.c.event, unique=True)
# The author's foreign key (a purged participant takes what it wrote with it).
Index("ix_events_author", events.c.namespace, events.c.author)

# What WatchSessions streams: one row per change to a session, a member or an event,
# written only by the triggers of migration 0005 in the transaction of the write
# itself. `revision` is per namespace strictly increasing (the migration says how it
# stays gap-free to a reader); `snapshot` is the session row as it was right after the
# change (before it, for PURGED); `member` the member row of a member change.
changes = Table(
    "changes",
    metadata,
    Column("namespace", ID, primary_key=True),
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("type", SmallInteger, nullable=False),
    Column("session", ID, nullable=False),
    Column("participant", ID, nullable=True),
    Column("event", ID, nullable=True),
    Column("sequence", BigInteger, nullable=True),
    Column("snapshot", JSONType, nullable=False),
    Column("member", JSONType, nullable=True),
    _ts("change_time"),
    ForeignKeyConstraint(["namespace"], ["namespaces.namespace"], ondelete="CASCADE"),
)
# SQLite: the last revision handed out (one row; PostgreSQL's revisions come from
# transaction ids and leave it alone).
change_clock = Table(
    "change_clock",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)

# PostgreSQL: RFC 7396 JSON merge patch of jsonb values, created by migration 0004
# (SQLite has `json_patch`). AppendEvent merges an event's state_delta with it.
MERGE_PATCH_FUNCTION = "tether_merge_patch"

# AIP-155 request ids: what a creating call created, so a retry answers it
# (as it is now). Written in the statement or transaction of the call's effect;
# a FindOrCreate call that finds writes nothing here.
idempotency = Table(
    "idempotency",
    metadata,
    # "" for calls that are not inside a namespace (CreateNamespace).
    Column("namespace", ID, primary_key=True),
    Column("request_id", String(36), primary_key=True),
    Column("method", String(64), nullable=False),
    # SHA-256 of the request without its request_id: a reuse with another
    # payload is REQUEST_ID_CONFLICT.
    Column("fingerprint", String(64), nullable=False),
    # The created resource's name (a replay reads the resource as it is now).
    Column("resource", Text, nullable=False),
    # What else the call created, as the response's flags that were true (AppendEvent:
    # "session_created,author_created"), so a replay answers them as the first call did.
    Column("also_created", Text, nullable=True),
    _ts("create_time"),
    _ts("expire_time"),
)
Index("ix_idempotency_expire_time", idempotency.c.expire_time)
