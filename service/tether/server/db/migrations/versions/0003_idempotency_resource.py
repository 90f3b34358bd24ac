"""Request ids keep the created resource's name, not a copy of the response.

A replay answers the resource as it is now (DESIGN.md "Writes"). Existing rows are
converted: the name is read from the recorded response; a FindOrCreate response
that found (created = false) is dropped, because a call that finds records nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = sa.table(
    "idempotency",
    sa.column("namespace", sa.String),
    sa.column("request_id", sa.String),
    sa.column("method", sa.String),
    sa.column("response", sa.LargeBinary),
    sa.column("resource", sa.Text),
)


def _created_name(method: str, response: bytes | None) -> str | None:
    """The name of what the recorded response created, or None (nothing created)."""
    from tether.v1 import namespace_pb2, participant_pb2, session_pb2
    from tether.v1 import session_service_pb2 as pb

    if response is None:
        return None
    if method == "FindOrCreateSession":
        found = pb.FindOrCreateSessionResponse.FromString(response)
        return found.session.name if found.created else None
    if method == "FindOrCreateParticipant":
        participant = pb.FindOrCreateParticipantResponse.FromString(response)
        return participant.participant.name if participant.created else None
    message_type = {
        "CreateNamespace": namespace_pb2.Namespace,
        "CreateParticipant": participant_pb2.Participant,
        "CreateSession": session_pb2.Session,
        "AddMember": session_pb2.Member,
    }.get(method)
    if message_type is None:
        return None
    name: str = message_type.FromString(response).name  # type: ignore[attr-defined]
    return name or None


def upgrade() -> None:
    op.add_column("idempotency", sa.Column("resource", sa.Text(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_TABLE.c.namespace, _TABLE.c.request_id, _TABLE.c.method, _TABLE.c.response)
    )
    for namespace, request_id, method, response in list(rows):
        key = (_TABLE.c.namespace == namespace) & (_TABLE.c.request_id == request_id)
        name = _created_name(method, response)
        if name is None:
            connection.execute(sa.delete(_TABLE).where(key))
        else:
            connection.execute(sa.update(_TABLE).where(key).values(resource=name))
    with op.batch_alter_table("idempotency") as batch:
        batch.drop_column("response")
        batch.alter_column("resource", existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    # The responses are gone: the rows cannot be turned back; retries after a downgrade
    # run their call again (within the request id TTL, a create then reports a conflict).
    op.execute(sa.delete(_TABLE))
    with op.batch_alter_table("idempotency") as batch:
        batch.add_column(sa.Column("response", sa.LargeBinary(), nullable=True))
        batch.drop_column("resource")
