"""LiveCallJournal: what a crashed engine's successor learns of the calls it left, from a real file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dialbridge.engine.calls import journal as journal_module
from dialbridge.engine.calls.journal import FinalEventRetry, LiveCallJournal
from dialbridge.engine.calls.payloads import CallInfo, event_payload


def event(status: str, uuid: str, now: float, **extra: Any) -> dict[str, Any]:
    return event_payload(status, CallInfo(uuid, "CON-" + uuid, "+15550001111", "dialin"), now, **extra)


def test_the_calls_a_crashed_engine_left_are_ended_as_vonage_would_end_them(tmp_path: Path) -> None:
    path = tmp_path / "live-calls.jsonl"
    crashed = LiveCallJournal(path)
    assert crashed.recover(now=1000.0) == []
    for uuid in ("answered", "ringing", "ended"):
        crashed.observe(event("started", uuid, 1000.0), 1000.0)
    crashed.observe(event("answered", "answered", 1001.0), 1001.0)
    crashed.observe(event("answered", "ended", 1001.0), 1001.0)
    crashed.observe(event("completed", "ended", 1005.0, start_time=1001.0, end_time=1005.0), 1005.0)
    crashed.delivered("ended")  # the application acknowledged it
    crashed.close()  # the process dies here, with no final events: the kernel lets its lock go

    successor = LiveCallJournal(path)
    left = {payload["uuid"]: payload for payload in successor.recover(now=1010.0)}
    assert set(left) == {"answered", "ringing"}
    completed = left["answered"]
    assert (completed["status"], completed["reason"], completed["duration"]) == ("completed", "engine_restarted", "9")
    assert (completed["from"], completed["to"], completed["conversation_uuid"]) == (
        "+15550001111",
        "dialin",
        "CON-answered",
    )
    assert (left["ringing"]["status"], left["ringing"]["reason"]) == ("failed", "engine_restarted")
    for uuid in left:
        successor.delivered(uuid)  # the application acknowledged them
    successor.close()
    assert LiveCallJournal(path).recover(now=1011.0) == [], "recovered calls are ended once"


def test_a_line_cut_short_by_the_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "live-calls.jsonl"
    journal = LiveCallJournal(path)
    journal.recover(now=0.0)
    journal.observe(event("started", "a", 1.0), 1.0)
    with path.open("a") as file:
        file.write('{"call":"b","conversa')
    journal.close()
    assert [payload["uuid"] for payload in LiveCallJournal(path).recover(now=2.0)] == ["a"]


def test_the_file_stays_small_however_many_calls_come_and_go(tmp_path: Path) -> None:
    path = tmp_path / "live-calls.jsonl"
    journal = LiveCallJournal(path)
    journal.recover(now=0.0)
    journal.observe(event("started", "long-call", 0.0), 0.0)  # one call lives throughout: never "nothing live"
    for n in range(5000):
        journal.observe(event("started", f"c{n}", n), n)
        journal.observe(event("answered", f"c{n}", n), n)
        journal.observe(event("completed", f"c{n}", n + 1, start_time=n, end_time=n + 1), n + 1)
        journal.delivered(f"c{n}")
    assert len(path.read_text().splitlines()) <= 1100
    journal.observe(event("completed", "long-call", 6000.0, start_time=0.0, end_time=6000.0), 6000.0)
    assert "long-call" in path.read_text(), "its final event is held until the application has it"
    journal.delivered("long-call")
    assert path.read_text() == "", "with no call held the file starts afresh"
    journal.close()
    assert LiveCallJournal(path).recover(now=6001.0) == []


def test_a_journal_another_live_engine_owns_is_left_alone(tmp_path: Path) -> None:
    """Two engines on one VOICE_DIR and SIP port (two network namespaces on one disk): the second must not end the
    first's live calls as a crashed engine's, nor write into its journal."""
    path = tmp_path / "live-calls.jsonl"
    first = LiveCallJournal(path)
    first.recover(now=0.0)
    first.observe(event("started", "live", 1.0), 1.0)
    second = LiveCallJournal(path)
    assert second.recover(now=2.0) == []
    second.observe(event("started", "other", 2.0), 2.0)
    assert "other" not in path.read_text() and "live" in path.read_text()
    first.close()  # the first dies: its call is now the successor's to end
    assert [payload["uuid"] for payload in LiveCallJournal(path).recover(now=3.0)] == ["live"]


def test_a_final_event_the_application_never_acknowledged_is_sent_again_by_the_next_engine(tmp_path: Path) -> None:
    path = tmp_path / "live-calls.jsonl"
    stopped = LiveCallJournal(path)
    stopped.recover(now=0.0)
    stopped.observe(event("started", "a", 1.0), 1.0)
    stopped.observe(event("answered", "a", 2.0), 2.0)
    final = event("completed", "a", 9.0, start_time=2.0, end_time=9.0)
    stopped.observe(final, 9.0)  # sent; the application was down: no acknowledgement
    assert stopped.undelivered == 1
    stopped.close()

    successor = LiveCallJournal(path)
    assert successor.recover(now=500.0) == [final]  # the very event, not one made up at the restart
    successor.close()
    again = LiveCallJournal(path)
    assert again.recover(now=600.0) == [final], "still held: the successor did not have it acknowledged either"
    again.delivered("a")
    again.close()
    assert LiveCallJournal(path).recover(now=700.0) == []


def test_final_events_held_for_the_application_are_bounded_oldest_given_up_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "MAX_UNDELIVERED", 3)
    path = tmp_path / "live-calls.jsonl"
    journal = LiveCallJournal(path)
    journal.recover(now=0.0)
    for n in range(5):
        journal.observe(event("started", f"c{n}", n), n)
        journal.observe(event("failed", f"c{n}", n), n)
    assert journal.undelivered == 3
    journal.close()
    assert [payload["uuid"] for payload in LiveCallJournal(path).recover(now=9.0)] == ["c2", "c3", "c4"]


def test_final_event_retries_back_off_to_a_minute() -> None:
    retry = FinalEventRetry()
    assert [retry.delay(n) for n in (1, 2, 3, 6, 7, 100)] == [1.0, 2.0, 4.0, 32.0, 60.0, 60.0]
