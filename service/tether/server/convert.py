"""Wire conversion: database rows to tether.v1 messages and back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from tether.server import names
from tether.server.etags import format_etag
from tether.v1 import event_pb2, namespace_pb2, participant_pb2, session_pb2

Row = Mapping[Any, Any]


etag = format_etag


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp, in integer arithmetic (several per response:
    `Timestamp.FromDatetime` costs far more)."""
    delta = value - _EPOCH  # days may be negative; seconds and microseconds never are
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def struct_to_json(value: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(value)
    return result


def json_to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def namespace_to_proto(row: Row) -> namespace_pb2.Namespace:
    return namespace_pb2.Namespace(
        name=names.namespace_name(row["namespace"]),
        uid=row["uid"],
        display_name=row["display_name"],
        labels=row["labels"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["uid"], row["version"]),
    )


def participant_to_proto(row: Row) -> participant_pb2.Participant:
    message = participant_pb2.Participant(
        name=names.participant_name(row["namespace"], row["participant"]),
        uid=row["uid"],
        kind=row["kind"],
        display_name=row["display_name"],
        avatar_uri=row["avatar_uri"],
        external_id=row["external_id"] or "",
        labels=row["labels"],
        metadata=json_to_struct(row["metadata"]),
        enabled=row["enabled"],
        managed=row["managed"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["uid"], row["version"]),
    )
    if row["delete_time"] is not None:
        message.delete_time.CopyFrom(timestamp(row["delete_time"]))
    if row["purge_time"] is not None:
        message.purge_time.CopyFrom(timestamp(row["purge_time"]))
    return message


def _participant_ref(namespace: str, participant: str | None) -> str:
    return names.participant_name(namespace, participant) if participant else ""


def session_to_proto(row: Row) -> session_pb2.Session:
    namespace = row["namespace"]
    message = session_pb2.Session(
        name=names.session_name(namespace, row["session"]),
        uid=row["uid"],
        display_name=row["display_name"],
        description=row["description"],
        kind=row["kind"],
        agent=_participant_ref(namespace, row["agent"]),
        user=_participant_ref(namespace, row["user"]),
        peer_agent=_participant_ref(namespace, row["peer_agent"]),
        channel=row["channel"],
        external_conversation_id=row["external_conversation_id"] or "",
        group_name=row["group_name"],
        enabled=row["enabled"],
        managed=row["managed"],
        auto_created=row["auto_created"],
        labels=row["labels"],
        session_state=json_to_struct(row["session_state"]),
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        last_activity_time=timestamp(row["last_activity_time"]),
        member_count=row["member_count"],
        etag=etag(row["uid"], row["version"]),
        event_count=row["event_count"],
    )
    for column in ("expire_time", "delete_time", "purge_time"):
        if row[column] is not None:
            getattr(message, column).CopyFrom(timestamp(row[column]))
    return message


def member_to_proto(row: Row) -> session_pb2.Member:
    """`row` is a members row joined with the participant's `kind` and `uid`."""
    return session_pb2.Member(
        name=names.member_name(row["namespace"], row["session"], row["participant"]),
        participant=names.participant_name(row["namespace"], row["participant"]),
        role=row["role"],
        join_time=timestamp(row["join_time"]),
        participant_kind=row["participant_kind"],
        etag=etag(row["participant_uid"], row["version"]),
    )


def event_to_proto(row: Row) -> event_pb2.Event:
    namespace = row["namespace"]
    return event_pb2.Event(
        name=names.event_name(namespace, row["session"], row["event"]),
        uid=row["uid"],
        sequence=row["sequence"],
        author=_participant_ref(namespace, row["author"]),
        invocation_id=row["invocation_id"],
        branch=row["branch"],
        labels=row["labels"],
        content=json_to_struct(row["content"]),
        state_delta=json_to_struct(row["state_delta"]),
        event_time=timestamp(row["event_time"]),
        create_time=timestamp(row["create_time"]),
    )
