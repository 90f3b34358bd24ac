"""Request ids (AIP-155): the `idempotency` table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "request_id", name="pk_idempotency"),
    )
    op.create_index("ix_idempotency_expire_time", "idempotency", ["expire_time"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_expire_time", table_name="idempotency")
    op.drop_table("idempotency")
