"""PIN entries are kept to recognise a retried input webhook (`Store.settle_pin_entry`); once their call has ended
a while ago no retry can come, and the table must not grow with the call history."""

from __future__ import annotations

from sqlalchemy import func, select

from dialbridge.conference.webhooks import CallEvent, CallParty, PinInput
from dialbridge.store import tables as t
from dialbridge.store.database import create_db_engine, migrate
from dialbridge.store.store import PIN_ENTRY_KEPT_S, SWEEP_S, PinRecord, Store
from tests.conftest import on_both_databases
from tests.helpers import run_async

NOW = 1_800_000_000.0


def wrong_pin(_on_call: int, _by_caller: int, _room: object) -> tuple[None, PinRecord]:
    return None, PinRecord("wrong_pin", True, True, "awaiting_pin")


def enter(store: Store, call_uuid: str, now: float) -> None:
    entry = PinInput(CallParty.parse({"uuid": call_uuid, "from": "447700900001"}), "999999", False, f"at {now}")

    async def settle() -> None:
        await store.settle_pin_entry(entry, now - 3600, now, wrong_pin)

    run_async(settle())


def end(store: Store, call_uuid: str, now: float) -> None:
    async def record() -> None:
        await store.record_call_event(CallEvent.parse({"uuid": call_uuid, "status": "completed"}), {}, now)

    run_async(record())


def entries_of(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(row[0] for row in conn.execute(select(t.pin_entries.c.call_uuid)))


@on_both_databases
def test_the_entries_of_calls_long_ended_are_swept_and_the_others_kept(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    store = Store(engine)
    enter(store, "ENDED-LONG-AGO", NOW)
    enter(store, "ENDED-JUST-NOW", NOW)
    enter(store, "STILL-LIVE", NOW)
    end(store, "ENDED-LONG-AGO", NOW + 10)
    later = NOW + 10 + PIN_ENTRY_KEPT_S + SWEEP_S
    end(store, "ENDED-JUST-NOW", later - 5)

    enter(store, "NEXT-CALLER", later)

    assert entries_of(store) == ["ENDED-JUST-NOW", "NEXT-CALLER", "STILL-LIVE"]
    with store.engine.connect() as conn:  # the sweep forgets entries, not the wrong guesses the lockout counts
        assert conn.execute(select(func.count()).select_from(t.pin_attempts)).scalar() == 4
