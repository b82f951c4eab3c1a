"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 19:28:44.333428
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_uuid", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("conversation_uuid", sa.String(length=64), nullable=False),
        sa.Column("caller", sa.String(length=256), nullable=False),
        sa.Column("callee", sa.String(length=256), nullable=False),
        sa.Column("timestamp", sa.String(length=64), nullable=False),
        sa.Column("start_time", sa.String(length=64), nullable=False),
        sa.Column("end_time", sa.String(length=64), nullable=False),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_events")),
    )
    with op.batch_alter_table("call_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_call_events_call_uuid"), ["call_uuid"], unique=False)

    op.create_table(
        "pin_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_uuid", sa.String(length=64), nullable=False),
        sa.Column("caller", sa.String(length=256), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("guessed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pin_attempts")),
    )
    with op.batch_alter_table("pin_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pin_attempts_call_uuid"), ["call_uuid"], unique=False)
        batch_op.create_index("ix_pin_attempts_caller_at", ["caller", "at"], unique=False)

    op.create_table(
        "rooms",
        sa.Column("room_id", sa.String(length=64), nullable=False),
        sa.Column("pin", sa.String(length=20), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_rooms")),
        sa.UniqueConstraint("pin", name=op.f("uq_rooms_pin")),
        sa.UniqueConstraint("session_id", name=op.f("uq_rooms_session_id")),
    )
    # Expression index (autogenerate cannot see it): answers max(length(pin)) without a table scan.
    op.create_index("ix_rooms_pin_length", "rooms", [sa.text("length(pin)")], unique=False)
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_keys")),
    )
    op.create_table(
        "calls",
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("conversation_uuid", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.String(length=64), nullable=True),
        sa.Column("caller", sa.String(length=256), nullable=False),
        sa.Column("callee", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.room_id"], name=op.f("fk_calls_room_id_rooms"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_calls")),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calls_room_id"), ["room_id"], unique=False)
        batch_op.create_index("ix_calls_status", ["status"], unique=False)

    op.create_table(
        "dial_outs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("platform_call_id", sa.String(length=128), nullable=True),
        sa.Column("connection_id", sa.String(length=128), nullable=True),
        sa.Column("stream_id", sa.String(length=128), nullable=True),
        sa.Column("call_uuid", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.room_id"], name=op.f("fk_dial_outs_room_id_rooms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dial_outs")),
    )
    with op.batch_alter_table("dial_outs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dial_outs_room_id"), ["room_id"], unique=False)
        batch_op.create_index(
            "uq_dial_outs_open_conference",
            ["room_id"],
            unique=True,
            sqlite_where=sa.text("kind = 'conference' AND state IN ('dialling', 'live')"),
            postgresql_where=sa.text("kind = 'conference' AND state IN ('dialling', 'live')"),
        )


def downgrade() -> None:
    with op.batch_alter_table("dial_outs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_dial_outs_open_conference",
            sqlite_where=sa.text("kind = 'conference' AND state IN ('dialling', 'live')"),
            postgresql_where=sa.text("kind = 'conference' AND state IN ('dialling', 'live')"),
        )
        batch_op.drop_index(batch_op.f("ix_dial_outs_room_id"))

    op.drop_table("dial_outs")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index("ix_calls_status")
        batch_op.drop_index(batch_op.f("ix_calls_room_id"))

    op.drop_table("calls")
    op.drop_table("server_keys")
    op.drop_index("ix_rooms_pin_length", table_name="rooms")
    op.drop_table("rooms")
    with op.batch_alter_table("pin_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_pin_attempts_caller_at")
        batch_op.drop_index(batch_op.f("ix_pin_attempts_call_uuid"))

    op.drop_table("pin_attempts")
    with op.batch_alter_table("call_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_call_events_call_uuid"))

    op.drop_table("call_events")
