"""The gateway's audio holds no delay it need not: aiortc's audio receivers stop holding four packets back (80 ms;
a receiver of an unknown shape is left alone, with a warning), the inbound buffer gives back a frame it never
needed, and the outbound frames reach aiortc's Opus encoder at 48 kHz, exactly one frame per tick."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame

from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    MAX_SHRINK_WINDOW_TAKES,
    SHRINK_WINDOW_TAKES,
    InboundAudio,
    OpusPackets,
    PacedAudioTrack,
    Upsampler,
    negotiated_audio_codec,
    shorten_receive_delay,
)
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


def frame(value: int = 1000) -> np.ndarray:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def test_inbound_audio_gives_back_a_frame_it_never_needed_and_waits_longer_after_an_underrun() -> None:
    inbound = InboundAudio()
    inbound.add_samples(frame())
    assert inbound.take_frame() is None  # waiting for its 40 ms
    inbound.add_samples(frame())
    for _ in range(SHRINK_WINDOW_TAKES):  # steady arrivals, one per take: a frame always to spare
        assert inbound.take_frame() is not None
        inbound.add_samples(frame())
    assert inbound.shrunk_frames == 1
    assert inbound.buffered_samples == FRAME_SAMPLES  # 20 ms less delay from here on
    assert inbound.take_frame() is not None and inbound.underruns == 0

    assert inbound.take_frame() is None  # a late arrival: an underrun, and a longer wait before shrinking again
    assert inbound.underruns == 1
    inbound.add_samples(frame())
    inbound.add_samples(frame())
    for _ in range(SHRINK_WINDOW_TAKES):
        assert inbound.take_frame() is not None
        inbound.add_samples(frame())
    assert inbound.shrunk_frames == 1  # not yet: the window is now twice as long
    for _ in range(SHRINK_WINDOW_TAKES):
        inbound.take_frame()
        inbound.add_samples(frame())
    assert inbound.shrunk_frames == 2
    for _ in range(20):  # underruns never stretch the window past its bound
        inbound.add_samples(frame())
        inbound.add_samples(frame())
        for _ in range(3):
            inbound.take_frame()
    assert inbound.underruns > 5
    assert inbound._shrink_window == MAX_SHRINK_WINDOW_TAKES


def test_inbound_audio_that_needed_its_depth_keeps_it() -> None:
    inbound = InboundAudio()
    inbound.add_samples(frame())
    inbound.add_samples(frame())
    for tick in range(3 * SHRINK_WINDOW_TAKES):
        assert inbound.take_frame() is not None
        if tick % 10 == 0:  # now and then a frame comes late and the buffer is down to its last one
            assert inbound.take_frame() is not None
            inbound.add_samples(frame())
        inbound.add_samples(frame())
    assert inbound.shrunk_frames == 0 and inbound.underruns == 0


def test_the_upsampler_gives_exactly_960_stereo_samples_a_frame_a_clean_tone_and_about_1_ms_of_delay() -> None:
    upsampler = Upsampler()
    t = np.arange(8000) / 8000
    tone = (10_000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    frames = [upsampler.upsample(tone[i : i + FRAME_SAMPLES]) for i in range(0, tone.size, FRAME_SAMPLES)]
    assert {f.size for f in frames} == {2 * 960}  # stereo, one Opus frame each: nothing for aiortc to wait for
    wide = np.concatenate(frames)
    assert np.array_equal(wide[0::2], wide[1::2])
    mono = wide[0::2][24_000:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    freqs = np.fft.rfftfreq(mono.size, 1 / 48_000)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 2
    assert abs(np.sqrt(np.mean(mono**2)) - 10_000 / np.sqrt(2)) < 100  # unity gain
    images = spectrum[freqs > 4_500].max() / spectrum.max()  # 8 kHz's images (7, 9, 15 kHz ...) filtered out
    assert 20 * np.log10(images) < -55

    impulse = np.zeros(FRAME_SAMPLES, np.int16)
    impulse[0] = 10_000
    peak_at = int(np.argmax(Upsampler().upsample(impulse)[0::2]))
    assert peak_at / 48 < 1.5  # ms


ANSWER = """v=0\r
o=- 1 1 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r
a=rtpmap:111 opus/48000/2\r
a=rtpmap:0 PCMU/8000\r
"""


def test_the_negotiated_codec_is_the_answers_first() -> None:
    assert negotiated_audio_codec(ANSWER) == "opus"
    assert negotiated_audio_codec(ANSWER.replace("SAVPF 111 0", "SAVPF 0 111")) == "pcmu"
    assert negotiated_audio_codec(ANSWER.replace("m=audio 9", "m=audio 0")) is None  # audio refused
    assert negotiated_audio_codec("v=0\r\n") is None


def test_opus_packets_carry_the_tracks_audio_one_packet_a_frame() -> None:
    async def scenario() -> tuple[list[int], np.ndarray]:
        source = PacedAudioTrack()
        packets = OpusPackets(source)
        t = np.arange(8000) / 8000
        tone = (8000 * np.sin(2 * np.pi * 700 * t)).astype(np.int16)
        decoder = OpusDecoder()
        stamps, decoded = [], []
        for i in range(0, tone.size, FRAME_SAMPLES):
            source.push(tone[i : i + FRAME_SAMPLES])
            packet = await packets.recv()
            stamps.append(int(packet.pts))
            frame = JitterFrame(data=bytes(packet), timestamp=int(packet.pts))
            decoded += [f.to_ndarray().reshape(-1)[0::2] for f in decoder.decode(frame)]
        packets.stop()
        return stamps, np.concatenate(decoded)

    stamps, decoded = run_in_thread(scenario)
    assert np.all(np.diff(stamps) == 960)  # one 20 ms packet per tick, in 48 kHz units
    spectrum = np.abs(np.fft.rfft(decoded[24_000:] * np.hanning(decoded[24_000:].size)))
    freqs = np.fft.rfftfreq(decoded[24_000:].size, 1 / 48_000)
    assert abs(freqs[np.argmax(spectrum)] - 700) < 3
