"""`Store`: every read and write dialbridge makes, one short transaction each.

Methods are synchronous. With SQLite each is a few tens of microseconds on a local file, cheaper than a hop to a
worker thread, so the async web layer calls them inline; a networked database goes through `Database.run`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import CallEvent, CallParty
from dialbridge.store import tables as t


@dataclass(frozen=True, slots=True)
class CallRecord:
    uuid: str
    conversation_uuid: str
    room_id: str | None
    caller: str
    callee: str
    status: str
    created_at: float
    updated_at: float
    ended_at: float | None
    duration_s: int | None


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- rooms -------------------------------------------------------------------------------------------------
    def room(self, room_id: str) -> Room | None:
        return self._one_room(t.rooms.c.room_id == room_id)

    def room_by_pin(self, pin: str) -> Room | None:
        return self._one_room(t.rooms.c.pin == pin)

    def room_by_session(self, session_id: str) -> Room | None:
        return self._one_room(t.rooms.c.session_id == session_id)

    def _one_room(self, condition: Any) -> Room | None:
        query = select(t.rooms.c.room_id, t.rooms.c.session_id, t.rooms.c.pin).where(
            condition, t.rooms.c.session_id.is_not(None)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Room(row.room_id, row.session_id, row.pin) if row else None

    def room_count(self) -> int:
        """Rooms holding a PIN, completed or being created: what the PIN space is shared among."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.rooms)).scalar_one())

    def longest_pin(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(func.length(t.rooms.c.pin)))).scalar_one()
        return int(value or 0)

    def room_state(self, room_id: str) -> tuple[str | None, float | None] | None:
        """(session_id, lease_until) of a room row, complete or not; None when there is no row."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.rooms.c.session_id, t.rooms.c.lease_until).where(t.rooms.c.room_id == room_id)
            ).first()
        return (row.session_id, row.lease_until) if row else None

    def claim_room(self, room_id: str, pin: str, now: float, lease_until: float) -> bool:
        """Insert a room being created. False when the room id is taken; IntegrityError on a PIN collision."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.rooms).values(room_id=room_id, pin=pin, created_at=now, lease_until=lease_until))
        except IntegrityError:
            if self.room_state(room_id) is not None:
                return False
            raise
        return True

    def take_over_room(self, room_id: str, now: float, lease_until: float) -> bool:
        """Take over the creation of a room whose creator let its lease run out (crashed, or hung)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t.rooms)
                .where(
                    t.rooms.c.room_id == room_id,
                    t.rooms.c.session_id.is_(None),
                    t.rooms.c.lease_until < now,
                )
                .values(lease_until=lease_until)
            )
        return result.rowcount == 1

    def complete_room(self, room_id: str, session_id: str) -> Room:
        with self.engine.begin() as conn:
            conn.execute(
                update(t.rooms).where(t.rooms.c.room_id == room_id).values(session_id=session_id, lease_until=None)
            )
            row = conn.execute(select(t.rooms.c.pin).where(t.rooms.c.room_id == room_id)).one()
        return Room(room_id, session_id, row.pin)

    def abandon_room(self, room_id: str) -> None:
        """Remove a claimed room whose video session could not be created: nothing half-written stays."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.rooms).where(t.rooms.c.room_id == room_id, t.rooms.c.session_id.is_(None)))

    # ---- calls -------------------------------------------------------------------------------------------------
    def record_call(self, call: CallParty, status: str, now: float, room_id: str | None = None) -> None:
        """Create the call if new, else refresh what is known of it."""
        with self.engine.begin() as conn:
            self._upsert_call(conn, call, status, now, room_id)

    def _upsert_call(
        self,
        conn: Any,
        call: CallParty,
        status: str,
        now: float,
        room_id: str | None,
        ended: bool = False,
        duration_s: int | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if room_id is not None:
            values["room_id"] = room_id
        if ended:
            values["ended_at"] = now
        if duration_s is not None:
            values["duration_s"] = duration_s
        for field in ("conversation_uuid", "caller", "callee"):
            if getattr(call, field):
                values[field] = getattr(call, field)
        changed = conn.execute(update(t.calls).where(t.calls.c.uuid == call.uuid).values(**values)).rowcount
        if changed:
            return
        try:
            with conn.begin_nested():
                conn.execute(insert(t.calls).values({"uuid": call.uuid, "created_at": now, **values}))
        except IntegrityError:  # another request inserted it first: fall back to the update
            conn.execute(update(t.calls).where(t.calls.c.uuid == call.uuid).values(**values))

    def assign_call_to_room(self, call: CallParty, room_id: str, now: float) -> None:
        with self.engine.begin() as conn:
            self._upsert_call(conn, call, "in_conference", now, room_id)

    def record_call_event(self, event: CallEvent, payload: Mapping[str, Any], now: float) -> str | None:
        """Store one event against its call (created if unknown) and return the call's room, where known."""
        with self.engine.begin() as conn:
            room_id = conn.execute(
                select(t.calls.c.room_id).where(t.calls.c.uuid == event.call.uuid)
            ).scalar_one_or_none()
            conn.execute(
                insert(t.call_events).values(
                    call_uuid=event.call.uuid,
                    room_id=room_id,
                    status=event.status,
                    conversation_uuid=event.call.conversation_uuid,
                    caller=event.call.caller,
                    callee=event.call.callee,
                    timestamp=event.timestamp,
                    start_time=event.start_time,
                    end_time=event.end_time,
                    duration_s=event.duration,
                    received_at=now,
                    payload=json.dumps(payload, separators=(",", ":"), default=str),
                )
            )
            self._upsert_call(
                conn, event.call, event.status, now, None, ended=event.is_final, duration_s=event.duration
            )
        return room_id

    def call(self, uuid: str) -> CallRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.calls).where(t.calls.c.uuid == uuid)).first()
        return CallRecord(**row._mapping) if row else None

    def call_events(self, uuid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.call_events).where(t.call_events.c.call_uuid == uuid).order_by(t.call_events.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def calls_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.calls.c.status, func.count()).group_by(t.calls.c.status)).all()
        return {status: int(count) for status, count in rows}

    # ---- PIN attempts ------------------------------------------------------------------------------------------
    def record_pin_attempt(self, call: CallParty, outcome: str, guessed: bool, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.pin_attempts).values(
                    call_uuid=call.uuid, caller=call.caller, at=now, outcome=outcome, guessed=int(guessed)
                )
            )

    def pin_failures(self, call_uuid: str, caller: str, since: float) -> tuple[int, int]:
        """(failures on this call, wrong guesses from this caller number since `since`) in one round trip."""
        failed = t.pin_attempts.c.outcome != "accepted"
        a = t.pin_attempts.c
        on_call = func.sum(case((a.call_uuid == call_uuid, 1), else_=0))
        by_caller = func.sum(case((and_(a.caller == caller, a.at >= since, a.guessed == 1), 1), else_=0))
        query = select(on_call, by_caller).where(
            failed,
            or_(
                t.pin_attempts.c.call_uuid == call_uuid,
                and_(t.pin_attempts.c.caller == caller, t.pin_attempts.c.at >= since),
            ),
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).one()
        return int(row[0] or 0), int(row[1] or 0)

    # ---- server keys -------------------------------------------------------------------------------------------
    def server_key(self, name: str, make: Any, now: float) -> str:
        """The named key, created with `make()` on first use; every instance sharing the database agrees on it."""
        with self.engine.begin() as conn:
            value = conn.execute(select(t.server_keys.c.value).where(t.server_keys.c.name == name)).scalar_one_or_none()
            if value is not None:
                return str(value)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.server_keys).values(name=name, value=make(), created_at=now))
        except IntegrityError:
            pass
        with self.engine.connect() as conn:
            return str(conn.execute(select(t.server_keys.c.value).where(t.server_keys.c.name == name)).scalar_one())
