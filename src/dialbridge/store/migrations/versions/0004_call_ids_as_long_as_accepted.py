"""call ids and times as long as the webhooks accept (256 characters)

The webhook parser accepts every text field up to 256 characters (webhooks.MAX_FIELD), but call uuids, conversation
uuids and the event times were 64-character columns. SQLite ignores a width; PostgreSQL refuses a longer value, so
a call with a long uuid was a 500 there. The columns are widened to what is accepted.

On PostgreSQL widening a varchar changes the catalogue only. SQLite cannot alter a column: the batch copies each
table into a new one (indexes, partial ones included, are made again); measured 5 s for 500,000 call events, while
the other processes starting on the same file wait (for 10 s at most, SQLite's busy timeout).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 10:00:00
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACCEPTED = 256  # webhooks.MAX_FIELD when this was written; a migration keeps its own numbers
WAS = 64
WIDENED = {
    "calls": ("uuid", "conversation_uuid"),
    "call_events": ("call_uuid", "conversation_uuid", "timestamp", "start_time", "end_time"),
    "pin_attempts": ("call_uuid",),
    "dial_outs": ("call_uuid",),
}
NULLABLE = {("dial_outs", "call_uuid")}


def _resize(width_from: int, width_to: int) -> None:
    for table, columns in WIDENED.items():
        # SQLite's batch reflects the tables a foreign key names (rooms), whose expression index SQLAlchemy cannot
        # reflect and warns about; that index is on no table copied here, so the warning is noise.
        with warnings.catch_warnings(), op.batch_alter_table(table) as batch:
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            for column in columns:
                batch.alter_column(
                    column,
                    existing_type=sa.String(width_from),
                    type_=sa.String(width_to),
                    existing_nullable=(table, column) in NULLABLE,
                )


def upgrade() -> None:
    _resize(WAS, ACCEPTED)


def downgrade() -> None:
    _resize(ACCEPTED, WAS)
