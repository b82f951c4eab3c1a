"""pin_entries: a PIN entry is decided once, however often its input webhook is delivered

A sender that gets no answer in time sends the input webhook again (the embedded engine once, as Vonage does); each
delivery was decided and recorded, so one entry counted as two failed attempts against the call and the caller's
quota. Each decided entry is now kept with the counts and room its decision saw, so that a second delivery of it is
decided alike (the same NCCO) and records nothing. Entries decided before this migration have no row: their retries
are long over.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# webhooks.MAX_FIELD and MAX_DIGITS when this was written; a migration keeps its own numbers
MAX_FIELD = 256
MAX_DIGITS = 64


def upgrade() -> None:
    op.create_table(
        "pin_entries",
        sa.Column("call_uuid", sa.String(MAX_FIELD), nullable=False),
        sa.Column("sent_at", sa.String(MAX_FIELD), nullable=False),
        sa.Column("digits", sa.String(MAX_DIGITS), nullable=False),
        sa.Column("timed_out", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("failures_on_call", sa.Integer(), nullable=False),
        sa.Column("caller_failures", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("call_uuid", "sent_at", "digits", "timed_out", name="pk_pin_entries"),
        sqlite_with_rowid=False,  # the key is the row: one B-tree per entry, not two
    )


def downgrade() -> None:
    op.drop_table("pin_entries")
