"""The schema. Times are Unix seconds (float) so that window queries are plain comparisons on every database.

Widths are what the parsers accept, no less: SQLite ignores them, but PostgreSQL refuses a longer value (a 500).
Webhook text (call ids, numbers, times) is up to `MAX_FIELD`; room ids up to 64 (`ROOM_ID`); PINs up to 20 digits
(the longest `PIN_LENGTH`); a webhook token's record up to 124 (`MAX_JTI_LENGTH` and its prefix). The other columns
hold values dialbridge makes itself, or the platform's ids.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)

from dialbridge.conference.webhooks import MAX_DIGITS, MAX_FIELD

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A room row is written in two steps: claimed (pin set, session_id NULL, lease running) while its video session
# is created, then completed (session_id set). Only completed rooms are visible; an expired lease may be taken over.
rooms = Table(
    "rooms",
    metadata,
    Column("room_id", String(64), primary_key=True),
    Column("pin", String(20), nullable=False, unique=True),
    Column("session_id", String(255), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
)
Index("ix_rooms_pin_length", func.length(rooms.c.pin))

calls = Table(
    "calls",
    metadata,
    Column("uuid", String(MAX_FIELD), primary_key=True),
    Column("conversation_uuid", String(MAX_FIELD), nullable=False, default=""),
    Column("room_id", String(64), ForeignKey("rooms.room_id", ondelete="SET NULL"), nullable=True, index=True),
    Column("caller", String(MAX_FIELD), nullable=False, default=""),
    Column("callee", String(MAX_FIELD), nullable=False, default=""),
    Column("status", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("duration_s", Integer, nullable=True),
    # Failed PIN entries on this call, kept on the call's own row: the input webhook reads it with the call, and a
    # failure updates a page that the call's status change dirties anyway (migration 0002 says more).
    Column("pin_failures", Integer, nullable=False, default=0, server_default="0"),
    # Whether the call is muted in its conference (set by the mute API and the *6 keypad command), and the keypad
    # command the caller has started (`*` awaiting its digit): both shared by every worker (migration 0006).
    Column("muted", Integer, nullable=False, default=0, server_default="0"),
    Column("keypad", String(8), nullable=False, default="", server_default=""),
)

call_events = Table(
    "call_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_uuid", String(MAX_FIELD), nullable=False, index=True),
    Column("room_id", String(64), nullable=True),
    Column("status", String(32), nullable=False),
    Column("conversation_uuid", String(MAX_FIELD), nullable=False, default=""),
    Column("caller", String(MAX_FIELD), nullable=False, default=""),
    Column("callee", String(MAX_FIELD), nullable=False, default=""),
    Column("timestamp", String(MAX_FIELD), nullable=False, default=""),
    Column("start_time", String(MAX_FIELD), nullable=False, default=""),
    Column("end_time", String(MAX_FIELD), nullable=False, default=""),
    Column("duration_s", Integer, nullable=True),
    Column("received_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
)

# One row per failed PIN decision (wrong PIN, or an empty entry); accepted entries are not recorded here.
pin_attempts = Table(
    "pin_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_uuid", String(MAX_FIELD), nullable=False),
    Column("caller", String(MAX_FIELD), nullable=False),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    # An empty entry (timeout, bare #) costs the call an attempt but is no guess against the caller's quota.
    Column("guessed", Integer, nullable=False),
)
# The caller-number lockout counts wrong guesses by caller within a window: only guesses are indexed, and the count
# is read from the index alone.
_GUESSES = text("guessed = 1")
Index(
    "ix_pin_attempts_caller_guesses",
    pin_attempts.c.caller,
    pin_attempts.c.at,
    pin_attempts.c.guessed,  # redundant with the WHERE, but it lets SQLite answer from the index alone
    sqlite_where=_GUESSES,
    postgresql_where=_GUESSES,
)

# Each PIN entry decided, by what names it (`PinInput`: its call, the input webhook's `timestamp`, its digits and
# whether it timed out), with what its decision saw. A retried webhook names the same entry: it is decided again on
# these counts and this room, so it gets the same answer, and nothing is recorded again (migration 0008).
pin_entries = Table(
    "pin_entries",
    metadata,
    Column("call_uuid", String(MAX_FIELD), primary_key=True),
    Column("sent_at", String(MAX_FIELD), primary_key=True),
    Column("digits", String(MAX_DIGITS), primary_key=True),
    Column("timed_out", Integer, primary_key=True, autoincrement=False),
    Column("failures_on_call", Integer, nullable=False),
    Column("caller_failures", Integer, nullable=False),
    Column("room_id", String(64), nullable=True),
    sqlite_with_rowid=False,  # the key is the row: one B-tree per entry, not two
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# SIP calls a room's video session placed (Vonage backend today; the embedded engine later).
# `id` is dialbridge's own call id; at most one conference dial-out per room is open (dialling or live).
dial_outs = Table(
    "dial_outs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("room_id", String(64), ForeignKey("rooms.room_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # "conference" | "phone"
    Column("target", String(512), nullable=False),
    Column("state", String(16), nullable=False),  # "dialling" | "live" | "ended" | "failed"
    # How its SIP call went, as the gateway reports it: ringing | answered | busy | no_answer | failed | completed.
    Column("progress", String(16), nullable=True),
    Column("platform_call_id", String(128), nullable=True),
    Column("connection_id", String(128), nullable=True),
    Column("stream_id", String(128), nullable=True),
    # Indexed: every call's final event closes the dial-out it was, if any, looking it up by its call.
    Column("call_uuid", String(MAX_FIELD), nullable=True, index=True),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
)
_OPEN_CONFERENCE = "kind = 'conference' AND state IN ('dialling', 'live')"
Index(
    "uq_dial_outs_open_conference",
    dial_outs.c.room_id,
    unique=True,
    sqlite_where=text(_OPEN_CONFERENCE),
    postgresql_where=text(_OPEN_CONFERENCE),
)

# Signed webhooks already accepted: a token is good once (its `jti`, or its signature where the signer sends no
# jti), until `good_until`, after which the verifier refuses it as too old anyway and the row is deleted.
# The primary key makes "first to insert wins" race-free across workers and instances on one database.
webhook_tokens = Table(
    "webhook_tokens",
    metadata,
    Column("token", String(128), primary_key=True),
    Column("good_until", Float, nullable=False, index=True),
    sqlite_with_rowid=False,  # the key is the row: one B-tree less to update per webhook
)
