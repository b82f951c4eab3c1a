"""The gateway's SIP leg → WebRTC side: what the far end sends is heard as each packet arrives, on no clock of ours.

A playout clock here would add a jitter buffer's delay and up to a tick more, by a phase against the far end's clock
that is chance (issue 15's latency goal held in some runs and missed in others); the browser's own jitter buffer is
the one on the path. SIPp is the callee: it answers the gateway's INVITE and plays a second of tone at it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from dialbridge.gateway.shell import Gateway, GatewaySettings
from dialbridge.media import g711
from tests.aio import run_in_thread
from tests.engine import sipp
from tests.engine.rtp_media import RtpStream, tone
from tests.engine.stack import free_port

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs sip-tester"),
    pytest.mark.timeout(60),
]


class HeardSide:
    """A WebRTC side that keeps what it is given to hear."""

    peer_count = 1

    def __init__(self, frames_wanted: int) -> None:
        self.heard: list[npt.NDArray[np.int16]] = []
        self.frames_wanted = frames_wanted
        self.all_heard = asyncio.Event()

    def take_mix(self) -> npt.NDArray[np.int16] | None:
        return None

    def hear(self, samples: npt.NDArray[np.int16]) -> None:
        self.heard.append(samples.copy())
        if len(self.heard) >= self.frames_wanted:
            self.all_heard.set()

    async def leave(self) -> None:
        return None


def test_the_far_ends_audio_is_heard_as_each_packet_arrives_with_the_media_clock_stopped(tmp_path: Path) -> None:
    media = RtpStream(ssrc=0x7E57)
    media.audio(tone([1000.0], 1.0))  # 50 packets of PCMA, 20 ms apart
    sent = b"".join(packet[12:] for _, packet in media.packets)
    callee_port = free_port()
    xml = sipp.scenario(
        '<recv request="INVITE"/>\n',
        sipp.uas_answer("8"),
        sipp.UAS_RECV_ACK,
        sipp.play(media.write_pcap(tmp_path / "tone.pcap")),
        sipp.REMOTE_BYE.format(timeout_ms=20_000),
    )
    run = sipp.start(tmp_path / "sipp", xml, target=None, sip_port=callee_port, media_port=free_port())

    async def scenario() -> tuple[list[npt.NDArray[np.int16]], str]:
        low = 43000 + (callee_port % 100) * 20
        gateway = Gateway(
            GatewaySettings(
                sip_host="127.0.0.1",
                sip_port=free_port(),
                contact_host="127.0.0.1",
                rtp_ports=(low, low + 19),
                signalling_url="wss://127.0.0.1:9/rt/signalling",  # no room: this call's WebRTC side is HeardSide
            )
        )
        await gateway.start()
        clock = gateway._tick_task  # stopped: no tick may play the leg's audio out
        assert clock is not None
        clock.cancel()
        side = HeardSide(frames_wanted=50)
        call = gateway.open_call("tone", side)
        await asyncio.sleep(0.3)  # SIPp is listening
        gateway.place_leg(
            call, f"sip:callee@127.0.0.1:{callee_port}", ("127.0.0.1", callee_port), from_uri="sip:gw@127.0.0.1",
            from_display="Gateway",
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(side.all_heard.wait(), 15)
        state = call.state
        gateway.end("tone", "the test is over")
        await gateway.stop()
        return side.heard, state

    heard, state = run_in_thread(scenario, use_uvloop=True)  # as `dialbridge gateway` runs
    assert run.wait(20) == 0, run.errors()
    assert state == "answered"
    assert len(heard) == 50
    assert np.array_equal(np.concatenate(heard), g711.decode("PCMA", sent))  # every sample, in order, as sent
