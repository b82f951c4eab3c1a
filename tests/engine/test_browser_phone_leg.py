"""The browser phone's WebRTC leg against a Python aiortc peer standing in for the browser, over loopback.

Run inside a network namespace holding only `lo` (scripts/run-tests does), e.g.
`unshare -n sh -c 'ip link set lo up && .venv/bin/pytest tests/engine/test_browser_phone_leg.py'`: WebRTC
advertises every interface address, and there the only one is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import av
import ifaddr
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.engine.browser_phone import BrowserPhoneLeg
from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    MAX_BUFFERED_FRAMES,
    SAMPLE_RATE,
    InboundAudio,
    PacedAudioTrack,
    install_loopback_fallback,
)
from dialbridge.media import g711
from tests.aio import run_in_thread

T = TypeVar("T")
TICK_S = 0.020
BROWSER_RATE = 48_000  # what a browser captures at and aiortc's Opus decoder yields


def _only_loopback() -> bool:
    return all(
        (ip.ip == "127.0.0.1") if isinstance(ip.ip, str) else ip.ip[0] == "::1"
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
    )


# On any other host the call would use real interfaces; the pure buffer tests further down run anywhere.
needs_loopback_only = pytest.mark.skipif(
    not _only_loopback(),
    reason="WebRTC would use this host's interfaces: run inside `unshare -n` with only lo up (scripts/run-tests)",
)


def run(coroutine: Coroutine[Any, Any, T], *, timeout: float = 20.0) -> T:
    """Run on uvloop, as the engine does, and never longer than `timeout`."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coroutine

    return run_in_thread(bounded, use_uvloop=True)


def tone(frequency: float, rate: int, start: int, count: int, amplitude: float = 8000.0) -> npt.NDArray[np.int16]:
    n = np.arange(start, start + count)
    return (amplitude * np.sin(2 * math.pi * frequency * n / rate)).astype(np.int16)


def dominant_frequency(samples: npt.NDArray[Any], rate: int) -> tuple[float, float]:
    """(peak frequency, share of the signal's energy within 30 Hz of it), DC removed."""
    signal = samples.astype(np.float64) - float(np.mean(samples))
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size))) ** 2
    freqs = np.fft.rfftfreq(signal.size, 1 / rate)
    peak = float(freqs[int(np.argmax(spectrum))])
    near = spectrum[np.abs(freqs - peak) <= 30.0].sum()
    return peak, float(near / max(spectrum.sum(), 1e-9))


def rms(samples: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


class ToneTrack(MediaStreamTrack):
    """A microphone hearing a steady tone: 20 ms frames of 48 kHz mono, paced in real time like a browser's."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self.frequency = frequency
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = BROWSER_RATE // 50
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._sent / BROWSER_RATE - time.monotonic()))
        frame = av.AudioFrame.from_ndarray(
            tone(self.frequency, BROWSER_RATE, self._sent, count).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = BROWSER_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, BROWSER_RATE)
        self._sent += count
        return frame


class FakeBrowser:
    """What phone.js does, in aiortc: microphone track, a `dtmf` data channel, full ICE gathering, then the offer."""

    def __init__(self, *, mic_frequency: float = 440.0, wire_codec: str | None = None) -> None:
        self.peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sender = self.peer.addTrack(ToneTrack(mic_frequency))
        if wire_codec is not None:
            transceiver = next(t for t in self.peer.getTransceivers() if t.sender is sender)
            capabilities = RTCRtpSender.getCapabilities("audio").codecs
            transceiver.setCodecPreferences([c for c in capabilities if c.mimeType == f"audio/{wire_codec}"])
        self.channel = self.peer.createDataChannel("dtmf")
        self.heard: list[npt.NDArray[np.int16]] = []  # first channel of every frame received from the leg
        self.heard_rate = 0
        self._reader: asyncio.Task[None] | None = None
        self.peer.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            self.heard_rate = frame.sample_rate
            channels = len(frame.layout.channels)
            self.heard.append(frame.to_ndarray().reshape(-1, channels)[:, 0].astype(np.int16))

    async def offer(self) -> str:
        await self.peer.setLocalDescription(await self.peer.createOffer())
        assert self.peer.localDescription is not None
        return self.peer.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.peer.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def wait_connected(self) -> None:
        await until(lambda: self.peer.connectionState == "connected" and self.channel.readyState == "open", 10.0)

    async def close(self) -> None:
        await self.peer.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class CallRecord:
    def __init__(self) -> None:
        self.digits: list[str] = []
        self.closed = 0

    def on_digit(self, digit: str) -> None:
        self.digits.append(digit)

    def on_closed(self) -> None:
        self.closed += 1


async def connected_call(
    browser: FakeBrowser, record: CallRecord, *, codec: str = "PCMU", connect_timeout: float = 30.0
) -> BrowserPhoneLeg:
    install_loopback_fallback()  # the fake browser gathers before the leg ever runs
    leg, answer = await BrowserPhoneLeg.answer(
        await browser.offer(),
        on_digit=record.on_digit,
        on_closed=record.on_closed,
        codec=codec,
        connect_timeout=connect_timeout,
    )
    assert "a=candidate:" in answer and "127.0.0.1" in answer  # final answer: candidates already in it
    await browser.accept(answer)
    await browser.wait_connected()
    return leg


async def tick(seconds: float, each: Callable[[int, float], None]) -> None:
    """The engine's 20 ms clock: `each(tick_number, now)` on an absolute schedule."""
    start = time.monotonic()
    for number in range(round(seconds / TICK_S)):
        now = time.monotonic()
        each(number, now)
        await asyncio.sleep(max(0.0, start + (number + 1) * TICK_S - time.monotonic()))


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        # Polls: the states watched belong to aiortc or the leg and have nothing to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@needs_loopback_only
@pytest.mark.parametrize(
    ("wire_codec", "codec"),
    [("opus", "PCMU"), ("opus", "PCMA"), ("PCMU", "PCMU")],
    ids=["opus-pcmu", "opus-pcma", "g711"],
)
def test_what_the_browser_says_plays_out_as_g711_frames_of_its_tone(wire_codec: str, codec: str) -> None:
    async def scenario() -> list[bytes]:
        browser, record = FakeBrowser(mic_frequency=440.0, wire_codec=wire_codec), CallRecord()
        leg = await connected_call(browser, record, codec=codec)
        frames: list[bytes] = []
        await tick(1.5, lambda _, now: frames.append(leg.playout(now)))
        await leg.close()
        await browser.close()
        return frames

    frames = run(scenario())
    assert all(len(frame) == FRAME_SAMPLES for frame in frames)
    heard = g711.decode(codec, b"".join(frames[-40:]))  # the last 800 ms, well after the call set up
    peak, share = dominant_frequency(heard, SAMPLE_RATE)
    assert abs(peak - 440.0) < 15.0, f"peak at {peak} Hz"
    assert share > 0.8
    assert rms(heard) > 1000.0  # the tone itself, not a faint leak


@needs_loopback_only
def test_before_audio_arrives_playout_is_g711_silence() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        browser, record = FakeBrowser(), CallRecord()
        install_loopback_fallback()
        leg, _ = await BrowserPhoneLeg.answer(
            await browser.offer(), on_digit=record.on_digit, on_closed=record.on_closed, codec="PCMA"
        )
        silent = leg.playout(time.monotonic())
        await leg.close()
        after_close = leg.playout(time.monotonic())
        await browser.close()
        return silent, after_close

    silent, after_close = run(scenario())
    assert silent == after_close == bytes([g711.SILENCE["PCMA"]]) * FRAME_SAMPLES


@needs_loopback_only
@pytest.mark.parametrize("wire_codec", ["opus", "PCMU"])
def test_what_the_engine_sends_the_browser_hears_as_its_tone(wire_codec: str) -> None:
    async def scenario() -> tuple[npt.NDArray[np.int16], int]:
        browser, record = FakeBrowser(wire_codec=wire_codec), CallRecord()
        leg = await connected_call(browser, record)
        ticks = 0

        def each(number: int, now: float) -> None:
            nonlocal ticks
            ticks = number
            leg.send(g711.encode("PCMU", tone(1000.0, SAMPLE_RATE, number * FRAME_SAMPLES, FRAME_SAMPLES)), now)

        await tick(1.5, each)
        await leg.close()
        await browser.close()
        return np.concatenate(browser.heard), browser.heard_rate

    heard, rate = run(scenario())
    last = heard[-int(0.8 * rate) :]
    peak, share = dominant_frequency(last, rate)
    assert abs(peak - 1000.0) < 15.0, f"peak at {peak} Hz"
    assert share > 0.8
    assert rms(last) > 1000.0


@needs_loopback_only
def test_data_channel_digits_reach_on_digit_once_each_in_order_and_nothing_else_does() -> None:
    async def scenario() -> CallRecord:
        browser, record = FakeBrowser(), CallRecord()
        leg = await connected_call(browser, record)
        for message in ["1", "2", "#", "x", "12", "", "A", "9" * 5000, "*", "0"]:
            browser.channel.send(message)
        browser.channel.send(b"5")
        browser.channel.send("7")
        await until(lambda: "7" in record.digits)
        await asyncio.sleep(0.3)  # anything duplicated or late would show up now
        await leg.close()
        await browser.close()
        return record

    record = run(scenario())
    assert record.digits == ["1", "2", "#", "*", "0", "7"]


@needs_loopback_only
def test_the_browser_closing_its_peer_connection_fires_on_closed_once() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhoneLeg]:
        browser, record = FakeBrowser(), CallRecord()
        leg = await connected_call(browser, record)
        await browser.close()
        await until(lambda: record.closed > 0)
        await asyncio.sleep(0.3)
        leg.send(bytes(FRAME_SAMPLES), time.monotonic())  # after the end: ignored, not an error
        await leg.close()
        return record, leg

    record, leg = run(scenario())
    assert record.closed == 1
    assert leg.closed
    assert leg.end_reason == "connection closed"


@needs_loopback_only
def test_a_bye_on_the_data_channel_ends_the_call() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhoneLeg]:
        browser, record = FakeBrowser(), CallRecord()
        leg = await connected_call(browser, record)
        browser.channel.send("bye")
        await until(lambda: record.closed > 0)
        await until(lambda: browser.peer.connectionState == "closed")  # the leg released the connection too
        await browser.close()
        await leg.close()
        return record, leg

    record, leg = run(scenario())
    assert record.closed == 1
    assert leg.end_reason == "the browser hung up"


@needs_loopback_only
def test_the_engine_closing_the_leg_does_not_call_back_and_the_browser_sees_the_end() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhoneLeg]:
        browser, record = FakeBrowser(), CallRecord()
        leg = await connected_call(browser, record)
        await leg.close()
        await until(lambda: browser.peer.connectionState == "closed")
        await browser.close()
        await asyncio.sleep(0.2)
        return record, leg

    record, leg = run(scenario())
    assert record.closed == 0
    assert leg.closed


@needs_loopback_only
def test_an_answer_the_browser_never_uses_times_out_and_fires_on_closed() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhoneLeg]:
        browser, record = FakeBrowser(), CallRecord()
        install_loopback_fallback()
        leg, _ = await BrowserPhoneLeg.answer(
            await browser.offer(), on_digit=record.on_digit, on_closed=record.on_closed, connect_timeout=0.5
        )
        await until(lambda: record.closed > 0, seconds=3.0)
        await leg.close()
        await browser.close()
        return record, leg

    record, leg = run(scenario())
    assert record.closed == 1
    assert leg.end_reason == "not connected within 0.5 s"


@needs_loopback_only
def test_buffers_stay_bounded_when_nobody_reads_and_playout_resumes_with_recent_audio() -> None:
    async def scenario() -> tuple[int, int, int, int, bytes]:
        browser, record = FakeBrowser(mic_frequency=440.0), CallRecord()
        leg = await connected_call(browser, record)
        await asyncio.sleep(1.0)  # 50 frames arrive; the engine reads none of them
        buffered, dropped = leg.inbound.buffered_samples, leg.inbound.dropped_samples
        for _ in range(100):  # the engine sends a burst far faster than 20 ms apart
            leg.send(g711.encode("PCMU", tone(1000.0, SAMPLE_RATE, 0, FRAME_SAMPLES)), time.monotonic())
        queued, dropped_out = leg.outbound.queued_frames, leg.outbound.dropped_frames
        frame = leg.playout(time.monotonic())
        await leg.close()
        await browser.close()
        return buffered, dropped, queued, dropped_out, frame

    buffered, dropped, queued, dropped_out, frame = run(scenario())
    assert buffered <= MAX_BUFFERED_FRAMES * FRAME_SAMPLES
    assert dropped >= 30 * FRAME_SAMPLES  # most of the second was dropped, not kept as delay
    assert queued <= MAX_BUFFERED_FRAMES
    assert dropped_out >= 90
    assert rms(g711.decode("PCMU", frame)) > 1000.0  # the newest audio is still there to play


@needs_loopback_only
def test_an_offer_without_audio_or_not_sdp_is_refused() -> None:
    async def scenario() -> list[str]:
        refusals: list[str] = []
        channel_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel_only.createDataChannel("dtmf")
        install_loopback_fallback()
        await channel_only.setLocalDescription(await channel_only.createOffer())
        assert channel_only.localDescription is not None
        garbage = ["hello", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n", "m=audio " + "x" * 70_000]
        for offer in [channel_only.localDescription.sdp, *garbage]:
            with pytest.raises(ValueError) as refused:
                await BrowserPhoneLeg.answer(offer, on_digit=lambda _: None, on_closed=lambda: None)
            refusals.append(str(refused.value))
        await channel_only.close()
        return refusals

    refusals = run(scenario())
    assert refusals[0] == "the offer has no audio"
    assert refusals[3] == "the offer is over 65536 characters"


def test_loopback_fallback_adds_127_0_0_1_only_when_the_host_has_no_other_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioice.ice

    found: list[str] = []

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return list(found)

    monkeypatch.setattr(aioice.ice, "get_host_addresses", host_addresses)
    assert install_loopback_fallback()
    assert install_loopback_fallback()  # idempotent: wraps once
    patched = aioice.ice.get_host_addresses
    assert patched(True, True) == ["127.0.0.1"]
    assert patched(False, True) == []
    found.extend(["192.0.2.7", "2001:db8::7"])
    assert patched(True, True) == ["192.0.2.7", "2001:db8::7"]  # a real host advertises what it always did


def test_loopback_fallback_leaves_an_unknown_aioice_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool, interfaces: list[str]) -> list[str]:
        return []

    monkeypatch.setattr(aioice.ice, "get_host_addresses", host_addresses)
    assert not install_loopback_fallback()
    assert getattr(aioice.ice, "get_host_addresses") is host_addresses  # noqa: B009 - typed as aioice's own
    assert "no loopback fallback" in caplog.text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(min_value=0, max_value=2000), st.none()), max_size=60))
def test_inbound_audio_never_holds_more_than_its_bound(steps: list[int | None]) -> None:
    inbound = InboundAudio()
    for step in steps:
        if step is None:
            frame = inbound.take_frame()
            assert frame is None or frame.shape == (FRAME_SAMPLES,)
        else:
            inbound.add_samples(np.arange(step, dtype=np.int16))
        assert inbound.buffered_samples <= MAX_BUFFERED_FRAMES * FRAME_SAMPLES


def test_inbound_audio_keeps_the_newest_samples_and_resamples_48k_stereo_to_8k_mono() -> None:
    inbound = InboundAudio()
    inbound.add_samples(np.arange(2000, dtype=np.int16))
    first = inbound.take_frame()
    assert first is not None and first[0] == 2000 - MAX_BUFFERED_FRAMES * FRAME_SAMPLES  # oldest went

    resampled = InboundAudio(max_frames=50)
    for index in range(25):  # half a second of a 48 kHz stereo 440 Hz tone, as aiortc's Opus decoder yields it
        mono = tone(440.0, BROWSER_RATE, index * 960, 960)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = BROWSER_RATE
        resampled.add_frame(frame)
    out = [resampled.take_frame() for _ in range(20)]
    samples = np.concatenate([frame for frame in out if frame is not None])
    assert samples.size >= 18 * FRAME_SAMPLES
    peak, _ = dominant_frequency(samples, SAMPLE_RATE)
    assert abs(peak - 440.0) < 15.0


def test_engine_audio_track_keeps_at_most_its_bound_and_paces_20_ms() -> None:
    async def scenario() -> tuple[int, list[float], list[int]]:
        track = PacedAudioTrack()
        for value in range(12):
            track.push(np.full(FRAME_SAMPLES, value, dtype=np.int16))
        queued = track.queued_frames
        times, firsts = [], []
        for _ in range(8):
            frame = await track.recv()
            times.append(time.monotonic())
            firsts.append(int(frame.to_ndarray()[0, 0]))
        track.stop()
        return queued, times, firsts

    queued, times, firsts = run(scenario())
    assert queued == MAX_BUFFERED_FRAMES
    assert firsts == [7, 8, 9, 10, 11, 0, 0, 0]  # newest five, then silence
    gaps = np.diff(times)
    assert 0.015 < float(np.mean(gaps)) < 0.03
