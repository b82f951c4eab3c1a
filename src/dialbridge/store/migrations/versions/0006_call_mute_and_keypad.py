"""calls: mute state and a pending keypad command

The room's participant list shows whether each phone caller is muted, and callers key commands (`*6`, `*1`) one
digit per webhook, possibly to different workers: both live on the call's row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("muted", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("calls", sa.Column("keypad", sa.String(8), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("keypad")
        batch.drop_column("muted")
