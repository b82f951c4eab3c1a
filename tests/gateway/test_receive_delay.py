"""`shorten_receive_delay`: aiortc's audio receivers stop holding four packets back (80 ms), and a receiver of an
unknown shape (another aiortc) is left alone, with a warning, rather than broken."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from aiortc import RTCPeerConnection

from dialbridge.gateway.webrtc import shorten_receive_delay
from tests.aio import run_in_thread


def test_an_audio_receiver_releases_each_packet_as_the_next_arrives() -> None:
    async def scenario() -> tuple[int, int, int]:
        peer = RTCPeerConnection()
        peer.addTransceiver("audio", direction="recvonly")
        peer.addTransceiver("video", direction="recvonly")  # video keeps aiortc's own buffer
        receivers = {t.kind: t.receiver for t in peer.getTransceivers()}
        shortened = shorten_receive_delay(peer)
        audio = receivers["audio"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        video = receivers["video"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        await peer.close()
        return shortened, audio._prefetch, video.capacity

    shortened, audio_prefetch, video_capacity = run_in_thread(scenario)
    assert shortened == 1
    assert audio_prefetch == 0
    assert video_capacity == 512  # untouched


def test_a_receiver_of_another_shape_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    transceiver = SimpleNamespace(kind="audio", receiver=SimpleNamespace())  # no jitter buffer where 1.16 has one
    peer = SimpleNamespace(getTransceivers=lambda: [transceiver])
    with caplog.at_level(logging.WARNING, logger="dialbridge.gateway.webrtc"):
        assert shorten_receive_delay(peer) == 0
    assert "80 ms receive delay kept" in caplog.text
    assert shorten_receive_delay(object()) == 0  # no receivers at all
