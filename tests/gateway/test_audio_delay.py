"""The gateway's audio holds no delay it need not: aiortc's audio receivers stop holding four packets back (80 ms;
a receiver of an unknown shape is left alone, with a warning), the inbound buffer gives back a frame it never
needed, and the outbound frames reach aiortc's Opus encoder at 48 kHz, exactly one frame per tick."""

from __future__ import annotations

import fractions
import logging
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    MAX_SHRINK_WINDOW_TAKES,
    SHRINK_WINDOW_TAKES,
    AudioOnArrival,
    Downsampler,
    InboundAudio,
    OpusPackets,
    PacedAudioTrack,
    Upsampler,
    decode_on_arrival,
    negotiated_audio_codec,
    receive_codecs,
)
from dialbridge.media import g711
from tests.aio import run_in_thread


def test_an_audio_receiver_decodes_each_packet_as_it_arrives_and_video_keeps_aiortcs_buffer() -> None:
    async def scenario() -> tuple[int, object, int]:
        peer = RTCPeerConnection()
        peer.addTransceiver("audio", direction="recvonly")
        peer.addTransceiver("video", direction="recvonly")
        receivers = {t.kind: t.receiver for t in peer.getTransceivers()}
        installed = decode_on_arrival(peer, InboundAudio())
        audio = receivers["audio"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        video = receivers["video"]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        await peer.close()
        return installed, audio, video.capacity

    installed, audio, video_capacity = run_in_thread(scenario)
    assert installed == 1
    assert isinstance(audio, AudioOnArrival)
    assert video_capacity == 512  # untouched


def test_a_receiver_of_another_shape_is_left_alone_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    transceiver = SimpleNamespace(kind="audio", receiver=SimpleNamespace())  # no jitter buffer where 1.16 has one
    peer = SimpleNamespace(getTransceivers=lambda: [transceiver])
    with caplog.at_level(logging.WARNING, logger="dialbridge.gateway.webrtc"):
        assert decode_on_arrival(peer, InboundAudio()) == 0
    assert "80 ms receive delay kept" in caplog.text
    assert decode_on_arrival(object(), InboundAudio()) == 0  # no receivers at all
    assert not hasattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer")


OFFER_TO_RECEIVE = """v=0\r
o=- 1 1 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 96 0 8\r
a=rtpmap:96 opus/48000/2\r
a=rtpmap:0 PCMU/8000\r
m=video 9 UDP/TLS/RTP/SAVPF 97\r
a=rtpmap:97 VP8/90000\r
"""


def opus_packets(tone_hz: float, frames: int, amplitude: int = 10_000) -> list[bytes]:
    """A tone as a browser sends it: 48 kHz stereo through libopus, one 20 ms packet each."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate, encoder.format, encoder.layout, encoder.sample_rate = 64_000, "s16", "stereo", 48_000
    encoder.time_base = fractions.Fraction(1, 48_000)
    t = np.arange(960 * frames) / 48_000
    tone = (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
    packets: list[bytes] = []
    for i in range(frames):
        chunk = av.AudioFrame.from_ndarray(np.repeat(tone[i * 960 : (i + 1) * 960], 2)[None, :], "s16", "stereo")
        chunk.sample_rate, chunk.pts = 48_000, i * 960
        packets += [bytes(packet) for packet in encoder.encode(chunk)]
    return packets


def rtp(sequence: int, payload: bytes, payload_type: int = 96) -> RtpPacket:
    return RtpPacket(
        payload_type=payload_type, sequence_number=sequence % 65536, timestamp=sequence * 960, payload=payload
    )


def test_arriving_opus_is_heard_at_8_khz_at_once_and_a_late_or_duplicate_packet_is_dropped() -> None:
    inbound = InboundAudio(max_frames=200, prefill_frames=1)
    arrival = AudioOnArrival(inbound, lambda: OFFER_TO_RECEIVE)
    packets = opus_packets(1000, 60)
    assert arrival.add(rtp(65530, packets[0])) == (False, None)  # aiortc's receiver is handed no frame to decode
    assert inbound.buffered_samples == FRAME_SAMPLES  # decoded on arrival, not when the next packet comes
    for sequence, payload in enumerate(packets[1:], start=65531):  # through the wrap of the sequence number
        arrival.add(rtp(sequence, payload))
    assert inbound.buffered_samples == 60 * FRAME_SAMPLES
    arrival.add(rtp(65531, packets[1]))  # a duplicate
    arrival.add(rtp(65530 + 40, packets[40]))  # overtaken
    assert inbound.buffered_samples == 60 * FRAME_SAMPLES and arrival.late_packets == 2

    heard = np.concatenate([inbound.take_frame() for _ in range(60)])[1600:].astype(np.float64)  # type: ignore[misc]
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(heard.size)))
    freqs = np.fft.rfftfreq(heard.size, 1 / 8000)
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    assert 6_000 < np.sqrt(np.mean(heard**2)) < 8_000  # the tone's 7,071 RMS, give or take Opus


def test_pcmu_arrives_as_is_and_what_cannot_be_decoded_is_counted_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbound = InboundAudio(max_frames=10, prefill_frames=1)
    arrival = AudioOnArrival(inbound, lambda: OFFER_TO_RECEIVE)
    samples = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    arrival.add(rtp(1, g711.encode("PCMU", samples), payload_type=0))
    assert np.abs(inbound.take_frame() - samples).max() < 40  # type: ignore[operator]  # G.711's own step

    with caplog.at_level(logging.WARNING, logger="dialbridge.gateway.webrtc"):
        arrival.add(rtp(2, b"\xff" * 7))  # not Opus
        arrival.add(rtp(3, b""))
        arrival.add(rtp(4, b"\x00" * 160, payload_type=97))  # a payload type it does not receive as audio
        arrival.add(rtp(5, opus_packets(440, 1)[0]))  # and the stream goes on
    assert arrival.undecodable_packets == 3
    assert caplog.text.count("undecodable") == 1
    assert inbound.buffered_samples == FRAME_SAMPLES


def test_the_downsampler_keeps_speech_and_filters_what_would_alias() -> None:
    t = np.arange(48_000) / 48_000

    def through(tone_hz: float) -> np.ndarray:
        downsampler = Downsampler()
        tone = (10_000 * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
        return np.concatenate([downsampler.downsample(tone[i : i + 960]) for i in range(0, tone.size, 960)])

    speech = through(1000)
    assert speech.size == 8000
    assert abs(np.sqrt(np.mean(speech[800:].astype(np.float64) ** 2)) - 10_000 / np.sqrt(2)) < 100  # unity gain
    alias = through(6000)  # would fold to 2 kHz
    assert np.sqrt(np.mean(alias[800:].astype(np.float64) ** 2)) < 10_000 / np.sqrt(2) / 1000  # 60 dB down
    with pytest.raises(ValueError, match="multiple of 6"):
        Downsampler().downsample(np.zeros(7, dtype=np.int16))


def test_the_codecs_a_peer_receives_are_read_from_its_own_sdp() -> None:
    assert receive_codecs(OFFER_TO_RECEIVE) == {96: "opus", 0: "pcmu", 8: "pcma"}  # 8: RFC 3551's static type
    assert receive_codecs(OFFER_TO_RECEIVE.replace("m=audio 9", "m=audio 0")) == {}
    assert receive_codecs("") == {}


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
