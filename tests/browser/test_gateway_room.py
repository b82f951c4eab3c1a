"""The gateway's room participant against a real room page: it joins the embedded signalling as a browser does,
hears the page's microphone, and the page hears what it publishes (Chromium, real WebRTC over loopback)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from live_server import LiveServer
from playwright.sync_api import BrowserContext, Page

from dialbridge.gateway.room import RoomJoinFailed, RoomParticipant
from dialbridge.gateway.webrtc import FRAME_SAMPLES, SAMPLE_RATE
from dialbridge.tokens import Role
from tests.media_probe import SUBSCRIBER_PEAK

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
WAIT_MS = 30_000
TONE_HZ = 1000.0


class ParticipantThread:
    """A RoomParticipant on an event loop of its own thread, fed a tone every 20 ms as the gateway's tick does."""

    def __init__(self, participant: RoomParticipant) -> None:
        self.participant = participant
        self.loop = asyncio.new_event_loop()
        self.heard_peak = 0
        self.over: list[str] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._ticker: asyncio.Future[None] | None = None

    def run(self, coroutine: object, timeout: float = 30) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def start_ticking(self) -> None:
        async def tick() -> None:
            phase = 0
            while True:
                t = (np.arange(FRAME_SAMPLES) + phase) / SAMPLE_RATE
                phase += FRAME_SAMPLES
                self.participant.hear((8000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16))
                mix = self.participant.take_mix()
                if mix is not None:
                    self.heard_peak = max(self.heard_peak, int(np.abs(mix.astype(np.int32)).max()))
                await asyncio.sleep(0.02)

        self._ticker = asyncio.run_coroutine_threadsafe(tick(), self.loop)  # type: ignore[assignment]

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self.run(self.participant.leave())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def join_page(context: BrowserContext, server: LiveServer, room_id: str) -> Page:
    page = context.new_page()
    page.goto(f"{server.base_url}/room/{room_id}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    return page


def participant_for(server: LiveServer, room_id: str, over: list[str]) -> RoomParticipant:
    room = server.run(server.services.rooms.find(room_id))
    assert room is not None
    token = server.services.tokens.issue(
        session_id=room.session_id, room_id=room_id, now=time.time(), role=Role.PUBLISHER, data='{"sip":true}'
    )
    return RoomParticipant(
        signalling_url=server.base_url.replace("http://", "ws://") + "/rt/signalling",
        session_id=room.session_id,
        token=token,
        name="Phone",
        on_over=over.append,
    )


def test_the_participant_hears_the_page_and_the_page_hears_it(
    context: BrowserContext, live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    page = join_page(context, live_server, "gateway-room")
    over: list[str] = []
    runner = ParticipantThread(participant_for(live_server, "gateway-room", over))
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
