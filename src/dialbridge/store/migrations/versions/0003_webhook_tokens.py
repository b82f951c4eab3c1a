"""webhook_tokens: each signed webhook token is accepted once (replay protection)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_tokens",
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("good_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_webhook_tokens"),
        sqlite_with_rowid=False,  # the key is the row: one B-tree less to update per webhook
    )
    op.create_index("ix_webhook_tokens_good_until", "webhook_tokens", ["good_until"])


def downgrade() -> None:
    op.drop_index("ix_webhook_tokens_good_until", table_name="webhook_tokens")
    op.drop_table("webhook_tokens")
