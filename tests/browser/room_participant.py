"""A SIP participant of an embedded room as the gateway makes one (its `RoomParticipant`, on an event loop of its
own thread), for tests and scripts that need the room's phone bridge without a gateway process."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
from live_server import LiveServer

from dialbridge.gateway.room import RoomParticipant
from dialbridge.gateway.webrtc import FRAME_SAMPLES, SAMPLE_RATE
from dialbridge.store.dial_outs import CONFERENCE
from dialbridge.tokens import Role


class ParticipantThread:
    """A RoomParticipant on an event loop of its own thread, fed a tone every 20 ms as the gateway's tick does."""

    def __init__(self, participant: RoomParticipant, tone_hz: float = 1000.0) -> None:
        self.participant = participant
        self.tone_hz = tone_hz
        self.loop = asyncio.new_event_loop()
        self.heard_peak = 0
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
                self.participant.hear((8000 * np.sin(2 * np.pi * self.tone_hz * t)).astype(np.int16))
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


def participant_for(
    server: LiveServer, room_id: str, over: list[str], data: str = '{"sip":true}', name: str = "Phone"
) -> RoomParticipant:
    """A SIP participant of `room_id` with a publisher's token carrying `data`, as the gateway gets one."""
    room = server.run(server.services.rooms.find(room_id))
    assert room is not None
    token = server.services.tokens.issue(
        session_id=room.session_id, room_id=room_id, now=time.time(), role=Role.PUBLISHER, data=data
    )
    return RoomParticipant(
        signalling_url=server.base_url.replace("http://", "ws://") + "/rt/signalling",
        session_id=room.session_id,
        token=token,
        name=name,
        on_over=over.append,
    )


def bridge_joins(server: LiveServer, room_id: str) -> tuple[ParticipantThread, str]:
    """The room's phone bridge as `POST /dial-out {}` leaves it: a live conference dial-out on record and its SIP
    participant (token data as dialout.py writes it) in the room, publishing audio. The participant and the
    dial-out's id."""
    data = json.dumps({"sip": True, "role": "client", "name": "Phone", "dialOut": CONFERENCE})
    store = server.services.dial_outs.store
    dial_out_id = "do_test" + str(time.monotonic_ns())
    # As dialout.py does: on record (dialling) before the participant joins, live once it has.
    store.start(dial_out_id=dial_out_id, room_id=room_id, kind=CONFERENCE, target="sip:dialin", now=time.time())
    runner = ParticipantThread(participant_for(server, room_id, [], data))
    runner.run(runner.participant.join())
    runner.start_ticking()
    connection_id = runner.participant.connection_id
    assert connection_id is not None
    store.mark_live(dial_out_id, platform_call_id="gw-call", connection_id=connection_id, stream_id=None)
    return runner, dial_out_id
