"""The gateway's room participant against a real room page: it joins the embedded signalling as a browser does,
hears the page's microphone, and the page hears what it publishes (Chromium, real WebRTC over loopback)."""

from __future__ import annotations

import time

import pytest
from live_server import LiveServer
from playwright.sync_api import BrowserContext, Page
from room_participant import ParticipantThread, participant_for

from dialbridge.gateway.room import RoomJoinFailed
from tests.media_probe import SUBSCRIBER_PEAK

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
WAIT_MS = 30_000
TONE_HZ = 1000.0


def join_page(context: BrowserContext, server: LiveServer, room_id: str) -> Page:
    page = context.new_page()
    page.goto(f"{server.base_url}/room/{room_id}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    return page


def test_the_participant_hears_the_page_and_the_page_hears_it(
    context: BrowserContext, live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    page = join_page(context, live_server, "gateway-room")
    over: list[str] = []
    runner = ParticipantThread(participant_for(live_server, "gateway-room", over), TONE_HZ)
    try:
        runner.run(runner.participant.join())
        assert runner.participant.browsers == 1
        runner.start_ticking()
        page.wait_for_function("() => document.querySelectorAll('#subscribers video').length === 1", timeout=WAIT_MS)
        deadline = time.monotonic() + 20
        while runner.heard_peak < 1000:  # Chromium's fake microphone beeps
            assert time.monotonic() < deadline, "the participant never heard the page's microphone"
            time.sleep(0.2)
        heard = page.evaluate(SUBSCRIBER_PEAK)
        assert abs(heard["hz"] - TONE_HZ) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not the tone"
        assert heard["db"] - heard["medianDb"] > 30, heard
        # The page leaving is the participant's cue: no browser is left in the room.
        page.close()
        deadline = time.monotonic() + 10
        while runner.participant.browsers != 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        runner.close()
    assert over == []  # it left on its own terms: no "over" report
    # The page's candidates follow its offer at once: none may reach the peer before the offer is applied (aiortc
    # drops such a candidate with this warning, and a lost host candidate can leave ICE with no pair).
    assert "without remote description" not in caplog.text


def test_a_token_of_another_room_is_refused_with_the_reason(live_server: LiveServer) -> None:
    live_server.run(live_server.services.rooms.get_or_create("gateway-a"))
    live_server.run(live_server.services.rooms.get_or_create("gateway-b"))
    over: list[str] = []
    participant = participant_for(live_server, "gateway-a", over)
    other = live_server.run(live_server.services.rooms.find("gateway-b"))
    assert other is not None
    participant.session_id = other.session_id
    runner = ParticipantThread(participant)
    try:
        with pytest.raises(RoomJoinFailed, match="another room"):
            runner.run(participant.join(timeout_s=5))
    finally:
        runner.close()
