"""dial-outs looked up by their call

Every call's final event closes the dial-out the call was, if any (`UPDATE dial_outs ... WHERE call_uuid = ?`,
in the event's own write): without an index that scanned the table, with the write lock held, on every call end.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_dial_outs_call_uuid", "dial_outs", ["call_uuid"])


def downgrade() -> None:
    op.drop_index("ix_dial_outs_call_uuid", table_name="dial_outs")
