"""leaner call writes: per-call PIN failures on the call row, fewer indexes to keep up

Every webhook writes a call row and every failed PIN entry a pin_attempts row; each index on those tables is one
more B-tree to update, one more page to write to the WAL and to re-read after another worker's commit.
- calls.pin_failures replaces counting pin_attempts by call (and its index on call_uuid).
- ix_calls_status is dropped: it only served the calls-by-state metric, which is computed off the event loop on a
  scrape and may scan the table.
- ix_pin_attempts_caller_at becomes ix_pin_attempts_caller_guesses, partial on guessed = 1: the lockout counts
  only guesses, and now reads them from the index alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

GUESSES = sa.text("guessed = 1")


def upgrade() -> None:
    op.add_column("calls", sa.Column("pin_failures", sa.Integer(), nullable=False, server_default="0"))
    # Until now pin_attempts held only failures, one row each: their count per call is the call's failures.
    op.execute(
        "UPDATE calls SET pin_failures = (SELECT count(*) FROM pin_attempts WHERE pin_attempts.call_uuid = calls.uuid)"
    )
    op.drop_index("ix_calls_status", table_name="calls")
    op.drop_index("ix_pin_attempts_call_uuid", table_name="pin_attempts")
    op.drop_index("ix_pin_attempts_caller_at", table_name="pin_attempts")
    op.create_index(
        "ix_pin_attempts_caller_guesses",
        "pin_attempts",
        ["caller", "at", "guessed"],
        sqlite_where=GUESSES,
        postgresql_where=GUESSES,
    )


def downgrade() -> None:
    op.drop_index("ix_pin_attempts_caller_guesses", table_name="pin_attempts")
    op.create_index("ix_pin_attempts_caller_at", "pin_attempts", ["caller", "at"])
    op.create_index("ix_pin_attempts_call_uuid", "pin_attempts", ["call_uuid"])
    op.create_index("ix_calls_status", "calls", ["status"])
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("pin_failures")
