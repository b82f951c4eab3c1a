"""`DialOutStore`: SIP calls placed from a room's video session, one short transaction each.

States: dialling → live → ended, or dialling → failed. A conference dial-out is inserted as `dialling` before the
platform is asked to dial, so the partial unique index (one open conference dial-out per room) decides races between
requests and instances; a refused insert is `ConferenceDialOutOpen`. A dial-out still `dialling` after
`STALE_DIALLING_S` belongs to a server that died mid-request (the SDK's HTTP timeout is far shorter): the next
attempt for that room marks it failed rather than staying blocked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from dialbridge.store import tables as t
from dialbridge.store.database import writing

DIALLING = "dialling"
LIVE = "live"
ENDED = "ended"
FAILED = "failed"
OPEN_STATES = (DIALLING, LIVE)
STALE_DIALLING_S = 120.0
RATE_WINDOW_S = 3600.0

CONFERENCE = "conference"
PHONE = "phone"


class ConferenceDialOutOpen(Exception):
    """The room already has a conference dial-out dialling or live."""


class DialOutLimitReached(Exception):
    """The room has placed as many dial-outs as it may within the window."""

    def __init__(self, room_id: str, retry_after_s: int) -> None:
        super().__init__(room_id)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class DialOut:
    id: str
    room_id: str
    kind: str
    target: str
    state: str
    platform_call_id: str | None
    connection_id: str | None
    stream_id: str | None
    call_uuid: str | None
    created_at: float
    ended_at: float | None
    progress: str | None = None  # the SIP call's last reported state (gateway/events.py's DIAL_OUT_STATES)


class DialOutStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(
        self,
        *,
        dial_out_id: str,
        room_id: str,
        kind: str,
        target: str,
        now: float,
        limit: int | None = None,
        window_s: float = RATE_WINDOW_S,
    ) -> DialOut:
        """Record a dial-out as dialling; with `limit`, only if the room placed fewer than that within `window_s`
        (`DialOutLimitReached` otherwise). The count and the insert are one statement, so concurrent requests
        cannot both take the last place."""
        recent = (
            select(func.count())
            .select_from(t.dial_outs)
            .where(t.dial_outs.c.room_id == room_id, t.dial_outs.c.created_at > now - window_s)
            .scalar_subquery()
        )
        row = select(
            literal(dial_out_id), literal(room_id), literal(kind), literal(target), literal(DIALLING), literal(now)
        )
        if limit is not None:
            row = row.where(recent < limit)
        columns = ["id", "room_id", "kind", "target", "state", "created_at"]
        try:
            with writing(self.engine) as conn:
                # The room's row locked first: PostgreSQL's transactions do not see each other's uncommitted
                # inserts, so two could each count four and insert a fifth and a sixth; the lock makes them take
                # turns. (On SQLite the write lock is already held from BEGIN, and FOR UPDATE is not rendered.)
                conn.execute(select(t.rooms.c.room_id).where(t.rooms.c.room_id == room_id).with_for_update())
                conn.execute(
                    update(t.dial_outs)
                    .where(
                        t.dial_outs.c.room_id == room_id,
                        t.dial_outs.c.state == DIALLING,
                        t.dial_outs.c.created_at < now - STALE_DIALLING_S,
                    )
                    .values(state=FAILED, ended_at=now)
                )
                # preserve_rowcount: SQLAlchemy keeps an INSERT's rowcount only when asked, and psycopg forgets it
                # once the cursor is closed (-1, which read as "placed" even when the limit refused the row).
                inserted = conn.execute(
                    insert(t.dial_outs).from_select(columns, row), execution_options={"preserve_rowcount": True}
                ).rowcount
                oldest = None
                if inserted == 0:
                    oldest = conn.execute(
                        select(func.min(t.dial_outs.c.created_at)).where(
                            t.dial_outs.c.room_id == room_id, t.dial_outs.c.created_at > now - window_s
                        )
                    ).scalar_one()
        except IntegrityError:
            if kind == CONFERENCE and self.open_conference(room_id) is not None:
                raise ConferenceDialOutOpen(room_id) from None
            raise
        if inserted == 0:
            retry_after = math.ceil((oldest if oldest is not None else now) + window_s - now)
            raise DialOutLimitReached(room_id, max(1, retry_after))
        return self._get_existing(dial_out_id)

    def mark_live(
        self,
        dial_out_id: str,
        *,
        platform_call_id: str,
        connection_id: str,
        stream_id: str | None,
        progress: str | None = None,
    ) -> DialOut:
        """`progress`: the call's state once placed, unless a report of it arrived first (the gateway may post
        "answered" before the platform's answer to the dial reaches us)."""
        self._set(
            dial_out_id,
            (DIALLING,),
            state=LIVE,
            platform_call_id=platform_call_id,
            connection_id=connection_id,
            stream_id=stream_id,
            progress=func.coalesce(t.dial_outs.c.progress, progress),
        )
        return self._get_existing(dial_out_id)

    def mark_failed(self, dial_out_id: str, now: float) -> None:
        self._set(dial_out_id, (DIALLING,), state=FAILED, ended_at=now)

    def fail_all_open(self, now: float) -> int:
        """Close every dial-out still dialling or live as failed; how many. For a gateway that starts afresh: it
        holds no call, so what an earlier one left open (serve killed, the machine restarted) can never end."""
        with writing(self.engine) as conn:
            closed = conn.execute(
                update(t.dial_outs)
                .where(t.dial_outs.c.state.in_(OPEN_STATES))
                .values(state=FAILED, progress=FAILED, ended_at=now)
            ).rowcount
        return int(closed)

    def mark_ended(self, dial_out_id: str, now: float) -> DialOut:
        self._set(dial_out_id, OPEN_STATES, state=ENDED, ended_at=now)
        return self._get_existing(dial_out_id)

    def mark_progress(
        self, dial_out_id: str, progress: str, *, final: bool, now: float, unlinked_only: bool = False
    ) -> DialOut | None:
        """Record how the dial-out's SIP call went; a final state also closes the record (ended, or failed when
        the call never connected). Nothing changes for a dial-out already closed, or unknown (None), or, with
        `unlinked_only`, one whose call has been linked (`mark_call`): the check and the write are one statement,
        so a link racing the close either lands first (and the close is refused) or is refused itself."""
        values: dict[str, Any] = {"progress": progress}
        if final:
            values.update(state=ENDED if progress == "completed" else FAILED, ended_at=now)
        where = (t.dial_outs.c.call_uuid.is_(None),) if unlinked_only else ()
        return self.get(dial_out_id) if self._set(dial_out_id, OPEN_STATES, *where, **values) else None

    def mark_call(self, dial_out_id: str, call_uuid: str) -> bool:
        """Link the phone call Vonage created for this dial-out (the answer webhook sees its SIP header): only a
        dial-out still open and not linked yet; False otherwise (its room side is gone, or the call is another)."""
        where = (t.dial_outs.c.call_uuid.is_(None),)
        return self._set(dial_out_id, OPEN_STATES, *where, call_uuid=call_uuid)

    def get(self, dial_out_id: str) -> DialOut | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.dial_outs).where(t.dial_outs.c.id == dial_out_id)).first()
        return DialOut(**row._mapping) if row else None

    def live_by_connection(self, connection_id: str) -> DialOut | None:
        """The live dial-out whose SIP participant is this connection of its room's session."""
        query = select(t.dial_outs).where(t.dial_outs.c.connection_id == connection_id, t.dial_outs.c.state == LIVE)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DialOut(**row._mapping) if row else None

    def open_conference(self, room_id: str) -> DialOut | None:
        query = select(t.dial_outs).where(
            t.dial_outs.c.room_id == room_id,
            t.dial_outs.c.kind == CONFERENCE,
            t.dial_outs.c.state.in_(OPEN_STATES),
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return DialOut(**row._mapping) if row else None

    def for_room(self, room_id: str) -> list[DialOut]:
        query = select(t.dial_outs).where(t.dial_outs.c.room_id == room_id).order_by(t.dial_outs.c.created_at)
        with self.engine.connect() as conn:
            return [DialOut(**row._mapping) for row in conn.execute(query)]

    def _set(self, dial_out_id: str, from_states: tuple[str, ...], *where: Any, **values: Any) -> bool:
        # Transitions only from the states named: a late answer never reopens an ended or failed dial-out.
        with writing(self.engine) as conn:
            changed = conn.execute(
                update(t.dial_outs)
                .where(t.dial_outs.c.id == dial_out_id, t.dial_outs.c.state.in_(from_states), *where)
                .values(**values)
            ).rowcount
        return bool(changed == 1)

    def _get_existing(self, dial_out_id: str) -> DialOut:
        found = self.get(dial_out_id)
        if found is None:
            raise LookupError(f"dial-out {dial_out_id} vanished")
        return found
