"""`DialOutStore`: the states a dial-out moves through, and the links the call webhooks will use."""

from __future__ import annotations

import threading

import pytest

from dialbridge.conference.webhooks import MAX_FIELD, CallEvent
from dialbridge.store.database import create_db_engine, migrate
from dialbridge.store.dial_outs import ConferenceDialOutOpen, DialOutLimitReached, DialOutStore
from dialbridge.store.store import Store
from tests.conftest import on_both_databases
from tests.helpers import run_async

pytestmark = on_both_databases
NOW = 1_800_000_000.0


@pytest.fixture
def store(db_url: str) -> Store:
    engine = create_db_engine(db_url)
    migrate(engine)
    rooms = Store(engine)

    async def make_rooms() -> None:
        for room_id, pin in (("standup", "123456"), ("retro", "654321")):
            await rooms.claim_room(room_id, pin, NOW, NOW + 30)
            await rooms.complete_room(room_id, f"session-{room_id}")

    run_async(make_rooms())
    return rooms


@pytest.fixture
def dial_outs(store: Store) -> DialOutStore:
    return DialOutStore(store.engine)


def call_ended(store: Store, call_uuid: str, now: float, status: str = "completed") -> None:
    """The call's final event, as the event webhook records it (which closes the dial-out the call was)."""
    event = CallEvent.parse({"uuid": call_uuid, "status": status})

    async def record() -> None:
        await store.record_call_event(event, {"uuid": call_uuid, "status": status}, now)

    run_async(record())


def start_conference(store: DialOutStore, dial_out_id: str, room_id: str = "standup") -> None:
    store.start(dial_out_id=dial_out_id, room_id=room_id, kind="conference", target="+14155550100", now=NOW)


def test_one_open_conference_dial_out_per_room_while_phones_and_other_rooms_may_dial(dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")

    with pytest.raises(ConferenceDialOutOpen):
        start_conference(dial_outs, "do_2")
    dial_outs.start(dial_out_id="do_3", room_id="standup", kind="phone", target="+447700900123", now=NOW)
    start_conference(dial_outs, "do_4", room_id="retro")

    assert [d.id for d in dial_outs.for_room("standup")] == ["do_1", "do_3"]


@pytest.mark.parametrize("close", ["failed", "ended"])
def test_a_closed_conference_dial_out_frees_the_room(close: str, dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")
    if close == "failed":
        dial_outs.mark_failed("do_1", NOW + 1)
    else:
        dial_outs.mark_live("do_1", platform_call_id="sip-1", connection_id="conn-1", stream_id="stream-1")
        dial_outs.mark_ended("do_1", NOW + 1)

    start_conference(dial_outs, "do_2")

    closed = dial_outs.get("do_1")
    assert closed is not None
    assert (closed.state, closed.ended_at) == (close, NOW + 1)
    assert dial_outs.open_conference("standup") == dial_outs.get("do_2")


def test_a_dial_out_left_dialling_by_a_dead_server_stops_blocking_the_room(dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")
    with pytest.raises(ConferenceDialOutOpen):
        dial_outs.start(dial_out_id="do_2", room_id="standup", kind="conference", target="+1", now=NOW + 60)

    dial_outs.start(dial_out_id="do_3", room_id="standup", kind="conference", target="+1", now=NOW + 121)

    stale = dial_outs.get("do_1")
    assert stale is not None
    assert stale.state == "failed"
    assert dial_outs.open_conference("standup") == dial_outs.get("do_3")


def test_a_late_answer_does_not_reopen_a_failed_dial_out(dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")
    dial_outs.mark_failed("do_1", NOW + 1)

    dial_outs.mark_live("do_1", platform_call_id="sip-1", connection_id="conn-1", stream_id=None)

    found = dial_outs.get("do_1")
    assert found is not None
    assert (found.state, found.connection_id) == ("failed", None)


def test_the_phone_call_vonage_creates_is_linked_and_its_end_closes_the_dial_out(
    store: Store, dial_outs: DialOutStore
) -> None:
    start_conference(dial_outs, "do_1")
    dial_outs.mark_live("do_1", platform_call_id="sip-1", connection_id="conn-1", stream_id="stream-1")

    assert dial_outs.mark_call("do_1", "CALL-UUID-1") is True
    call_ended(store, "CALL-UUID-1", NOW + 30, status="answered")  # not final: the dial-out stays open
    assert dial_outs.open_conference("standup") is not None
    call_ended(store, "CALL-UUID-1", NOW + 60)

    ended = dial_outs.get("do_1")
    assert ended is not None
    assert (ended.id, ended.state, ended.call_uuid, ended.ended_at) == ("do_1", "ended", "CALL-UUID-1", NOW + 60)
    assert dial_outs.open_conference("standup") is None


def test_a_call_uuid_as_long_as_the_webhooks_accept_is_linked(store: Store, dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")

    assert dial_outs.mark_call("do_1", "u" * MAX_FIELD) is True

    call_ended(store, "u" * MAX_FIELD, NOW + 60)
    ended = dial_outs.get("do_1")
    assert ended is not None and (ended.state, ended.call_uuid) == ("ended", "u" * MAX_FIELD)


def test_unknown_ids_link_nothing_and_end_nothing(store: Store, dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")
    assert dial_outs.mark_call("do_unknown", "CALL-UUID-1") is False
    call_ended(store, "CALL-UUID-unknown", NOW)
    assert dial_outs.open_conference("standup") is not None


def test_a_closed_dial_out_links_no_call_and_a_linked_one_links_no_second(dial_outs: DialOutStore) -> None:
    start_conference(dial_outs, "do_1")
    dial_outs.mark_ended("do_1", NOW + 1)
    assert dial_outs.mark_call("do_1", "LATE-CALL") is False  # its room side is gone: the answer ends the call

    start_conference(dial_outs, "do_2")
    assert dial_outs.mark_call("do_2", "CALL-1") is True
    assert dial_outs.mark_call("do_2", "CALL-2") is False
    linked = dial_outs.get("do_2")
    assert linked is not None and linked.call_uuid == "CALL-1"


def test_closing_an_orphan_unless_linked_yields_to_a_link_that_landed_first(dial_outs: DialOutStore) -> None:
    """SipParticipantWatch closes a dial-out whose participant left only while no call is linked to it; the
    check is part of the write, so the answer webhook's link and the close cannot both land."""
    start_conference(dial_outs, "do_1")
    dial_outs.mark_call("do_1", "CALL-1")
    assert dial_outs.mark_progress("do_1", "failed", final=True, now=NOW + 3, unlinked_only=True) is None
    still = dial_outs.get("do_1")
    assert still is not None and (still.state, still.ended_at) == ("dialling", None)

    start_conference(dial_outs, "do_2", room_id="retro")
    closed = dial_outs.mark_progress("do_2", "failed", final=True, now=NOW + 3, unlinked_only=True)
    assert closed is not None and (closed.state, closed.progress, closed.ended_at) == ("failed", "failed", NOW + 3)
    assert dial_outs.mark_call("do_2", "LATE-CALL") is False


def test_concurrent_dial_outs_never_exceed_the_rooms_limit(db_url: str, dial_outs: DialOutStore) -> None:
    """Twenty requests from two server processes (two engines on one file) race for the room's last five places."""
    other_process = DialOutStore(create_db_engine(db_url))
    barrier = threading.Barrier(20)
    outcomes: list[str] = []

    def dial(n: int) -> None:
        store = dial_outs if n % 2 else other_process
        barrier.wait()
        try:
            store.start(
                dial_out_id=f"do_{n}", room_id="standup", kind="phone", target="+447700900123", now=NOW, limit=5
            )
            outcomes.append("placed")
        except DialOutLimitReached as refused:
            outcomes.append(f"refused {refused.retry_after_s}")

    threads = [threading.Thread(target=dial, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["placed"] * 5 + ["refused 3600"] * 15
    assert len(dial_outs.for_room("standup")) == 5
