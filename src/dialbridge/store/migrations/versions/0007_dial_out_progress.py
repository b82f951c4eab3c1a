"""dial-outs remember how their SIP call went

`progress`: the last state the gateway reported for a dial-out's SIP leg (ringing, answered, busy, no_answer,
failed, completed), beside `state`, which stays the record's own life (dialling, live, ended, failed) that the
one-open-conference index is written against.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dial_outs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dial_outs", schema=None) as batch_op:
        batch_op.drop_column("progress")
