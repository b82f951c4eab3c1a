"""The gateway's browser phone peer against a Python aiortc peer standing in for the browser, over loopback.

Run inside a network namespace holding only `lo` (scripts/run-tests does), e.g.
`unshare -n sh -c 'ip link set lo up && .venv/bin/pytest tests/gateway/test_browser_phone_peer.py'`: WebRTC
advertises every interface address, and there the only one is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.gateway.phone import BrowserPhonePeer
from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    MAX_BUFFERED_FRAMES,
    OUTBOUND_MAX_WAITING,
    OUTBOUND_WAIT_S,
    SAMPLE_RATE,
    InboundAudio,
    PacedAudioTrack,
    install_loopback_fallback,
)
from tests.gateway.fake_browser import (
    BROWSER_RATE,
    FakeBrowser,
    dominant_frequency,
    needs_loopback_only,
    rms,
    run,
    tick,
    tone,
    until,
)


class CallRecord:
    def __init__(self) -> None:
        self.digits: list[str] = []
        self.connected = 0
        self.closed = 0

    def on_digit(self, digit: str) -> None:
        self.digits.append(digit)

    def on_connected(self) -> None:
        self.connected += 1

    def on_closed(self) -> None:
        self.closed += 1

    def peer(self, connect_timeout_s: float = 30.0) -> BrowserPhonePeer:
        return BrowserPhonePeer(
            on_digit=self.on_digit,
            on_connected=self.on_connected,
            on_closed=self.on_closed,
            connect_timeout_s=connect_timeout_s,
        )


async def connected_call(browser: FakeBrowser, record: CallRecord) -> BrowserPhonePeer:
    install_loopback_fallback()  # the fake browser gathers before the peer ever runs
    peer = record.peer()
    answer = await peer.answer(await browser.offer())
    assert "a=candidate:" in answer and "127.0.0.1" in answer  # final answer: candidates already in it
    await browser.accept(answer)
    await browser.wait_connected()
    await until(lambda: record.connected > 0)
    return peer


def played(frames: list[npt.NDArray[np.int16] | None]) -> npt.NDArray[np.int16]:
    """What the gateway's ticks took from the peer, silence where it had nothing."""
    return np.concatenate([np.zeros(FRAME_SAMPLES, np.int16) if frame is None else frame for frame in frames])


@needs_loopback_only
@pytest.mark.parametrize("wire_codec", ["opus", "PCMU"])
def test_what_the_browser_says_the_gateway_takes_as_8k_frames_of_its_tone(wire_codec: str) -> None:
    async def scenario() -> tuple[list[npt.NDArray[np.int16] | None], int]:
        browser, record = FakeBrowser(mic_frequency=440.0, wire_codec=wire_codec), CallRecord()
        peer = await connected_call(browser, record)
        frames: list[npt.NDArray[np.int16] | None] = []
        await tick(1.5, lambda _, now: frames.append(peer.take_mix()))
        await peer.leave()
        await browser.close()
        return frames, record.connected

    frames, connected = run(scenario())
    assert connected == 1
    assert all(frame is None or frame.shape == (FRAME_SAMPLES,) for frame in frames)
    heard = played(frames[-40:])  # the last 800 ms, well after the call set up
    peak, share = dominant_frequency(heard, SAMPLE_RATE)
    assert abs(peak - 440.0) < 15.0, f"peak at {peak} Hz"
    assert share > 0.8
    assert rms(heard) > 1000.0  # the tone itself, not a faint leak


@needs_loopback_only
def test_before_audio_arrives_and_after_leaving_the_peer_gives_nothing() -> None:
    async def scenario() -> tuple[object, object]:
        browser, record = FakeBrowser(), CallRecord()
        install_loopback_fallback()
        peer = record.peer()
        await peer.answer(await browser.offer())
        before = peer.take_mix()
        await peer.leave()
        after_leaving = peer.take_mix()
        await browser.close()
        return before, after_leaving

    assert run(scenario()) == (None, None)


@needs_loopback_only
@pytest.mark.parametrize("wire_codec", ["opus", "PCMU"])
def test_what_the_gateway_gives_the_peer_the_browser_hears_as_its_tone(wire_codec: str) -> None:
    async def scenario() -> tuple[npt.NDArray[np.int16], int]:
        browser, record = FakeBrowser(wire_codec=wire_codec), CallRecord()
        peer = await connected_call(browser, record)
        await tick(1.5, lambda number, _: peer.hear(tone(1000.0, SAMPLE_RATE, number * FRAME_SAMPLES, FRAME_SAMPLES)))
        await peer.leave()
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
        peer = await connected_call(browser, record)
        for message in ["1", "1", "2", "#", "x", "12", "", "A", "9" * 5000, "*", "0"]:
            browser.channel.send(message)
        browser.channel.send(b"5")
        browser.channel.send("7")
        await until(lambda: "7" in record.digits)
        await asyncio.sleep(0.3)  # anything duplicated or late would show up now
        await peer.leave()
        await browser.close()
        return record

    record = run(scenario())
    assert record.digits == ["1", "1", "2", "#", "*", "0", "7"]


@needs_loopback_only
def test_the_browser_closing_its_peer_connection_fires_on_closed_once() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhonePeer]:
        browser, record = FakeBrowser(), CallRecord()
        peer = await connected_call(browser, record)
        await browser.close()
        await until(lambda: record.closed > 0)
        await asyncio.sleep(0.3)
        peer.hear(np.zeros(FRAME_SAMPLES, np.int16))  # after the end: ignored, not an error
        await peer.leave()
        return record, peer

    record, peer = run(scenario())
    assert record.closed == 1
    assert peer.closed and peer.peer_count == 0
    assert peer.end_reason == "connection closed"


@needs_loopback_only
def test_a_bye_on_the_data_channel_ends_the_call() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhonePeer]:
        browser, record = FakeBrowser(), CallRecord()
        peer = await connected_call(browser, record)
        browser.channel.send("bye")
        await until(lambda: record.closed > 0)
        await until(lambda: browser.peer.connectionState == "closed")  # the peer released the connection too
        await browser.close()
        await peer.leave()
        return record, peer

    record, peer = run(scenario())
    assert record.closed == 1
    assert peer.end_reason == "the browser hung up"


@needs_loopback_only
def test_the_gateway_leaving_does_not_call_back_and_the_browser_sees_the_end() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhonePeer]:
        browser, record = FakeBrowser(), CallRecord()
        peer = await connected_call(browser, record)
        await peer.leave()
        await until(lambda: browser.peer.connectionState == "closed")
        await browser.close()
        await asyncio.sleep(0.2)
        return record, peer

    record, peer = run(scenario())
    assert record.closed == 0
    assert peer.closed


@needs_loopback_only
def test_an_answer_the_browser_never_uses_times_out_and_fires_on_closed() -> None:
    async def scenario() -> tuple[CallRecord, BrowserPhonePeer]:
        browser, record = FakeBrowser(), CallRecord()
        install_loopback_fallback()
        peer = record.peer(connect_timeout_s=0.5)
        await peer.answer(await browser.offer())
        await until(lambda: record.closed > 0, seconds=3.0)
        await peer.leave()
        await browser.close()
        return record, peer

    record, peer = run(scenario())
    assert (record.closed, record.connected) == (1, 0)
    assert peer.end_reason == "not connected within 0.5 s"


@needs_loopback_only
def test_buffers_stay_bounded_when_nobody_reads_and_the_newest_audio_still_plays() -> None:
    async def scenario() -> tuple[int, int, int, int, npt.NDArray[np.int16] | None]:
        browser, record = FakeBrowser(mic_frequency=440.0), CallRecord()
        peer = await connected_call(browser, record)
        await asyncio.sleep(1.0)  # 50 frames arrive; the gateway takes none of them
        buffered, dropped = peer.inbound.buffered_samples, peer.inbound.dropped_samples
        for _ in range(100):  # the gateway gives a burst far faster than 20 ms apart
            peer.hear(tone(1000.0, SAMPLE_RATE, 0, FRAME_SAMPLES))
        queued, dropped_out = peer.outbound.queued_frames, peer.outbound.dropped_frames
        frame = peer.take_mix()
        await peer.leave()
        await browser.close()
        return buffered, dropped, queued, dropped_out, frame

    buffered, dropped, queued, dropped_out, frame = run(scenario())
    assert buffered <= MAX_BUFFERED_FRAMES * FRAME_SAMPLES
    assert dropped >= 30 * FRAME_SAMPLES  # most of the second was dropped, not kept as delay
    assert queued <= OUTBOUND_MAX_WAITING
    assert dropped_out >= 100 - OUTBOUND_MAX_WAITING
    assert frame is not None and rms(frame) > 1000.0  # the newest audio is still there to play


@needs_loopback_only
def test_an_offer_without_audio_or_not_sdp_is_refused_and_leaves_nothing_open() -> None:
    async def scenario() -> tuple[list[str], list[bool]]:
        refusals: list[str] = []
        channel_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel_only.createDataChannel("dtmf")
        install_loopback_fallback()
        await channel_only.setLocalDescription(await channel_only.createOffer())
        assert channel_only.localDescription is not None
        garbage = ["hello", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n", "m=audio " + "x" * 70_000]
        peers = []
        for offer in [channel_only.localDescription.sdp, *garbage]:
            peer = CallRecord().peer()
            peers.append(peer)
            with pytest.raises(ValueError) as refused:
                await peer.answer(offer)
            refusals.append(str(refused.value))
        await channel_only.close()
        return refusals, [peer.closed for peer in peers]

    refusals, closed = run(scenario())
    assert refusals[0] == "the offer has no audio"
    assert refusals[3] == "the offer is over 61440 characters"
    assert all(closed)


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


def test_the_sip_legs_audio_track_hands_each_frame_on_at_once_keeps_a_burst_and_paces_silence_at_a_frames_time() -> (
    None
):
    async def scenario() -> tuple[int, list[int], list[int], list[float], int, float]:
        track = PacedAudioTrack()
        for value in range(12):  # arrivals ran ahead of aiortc (it stalled): only the newest few wait
            track.push(np.full(FRAME_SAMPLES, value * 1000, dtype=np.int16))
        queued = track.queued_frames

        def level(frame: av.AudioFrame) -> int:  # mid-frame, past the upsampling filter's first samples
            return round(int(frame.to_ndarray()[0, 1200]) / 1000)

        burst = [level(await track.recv()) for _ in range(queued)]
        silences, waits = [], []
        for _ in range(3):  # nothing arrives: silence after the wait, then one each frame's time
            started = time.monotonic()
            silences.append(level(await track.recv()))
            waits.append(time.monotonic() - started)

        async def arrive_later() -> None:
            await asyncio.sleep(0.005)
            track.push(np.full(FRAME_SAMPLES, 21_000, dtype=np.int16))

        pushing = asyncio.ensure_future(arrive_later())
        started = time.monotonic()
        pushed = level(await track.recv())
        handed_after = time.monotonic() - started
        await pushing
        track.stop()
        return queued, burst, silences, waits, pushed, handed_after

    queued, burst, silences, waits, pushed, handed_after = run(scenario())
    assert queued == OUTBOUND_MAX_WAITING
    assert burst == list(range(12 - OUTBOUND_MAX_WAITING, 12))  # the newest, in order: the oldest were dropped
    assert silences == [0, 0, 0]
    assert OUTBOUND_WAIT_S * 0.9 <= waits[0] < OUTBOUND_WAIT_S + 0.05
    assert all(FRAME_SECONDS * 0.9 <= wait < FRAME_SECONDS + 0.05 for wait in waits[1:])  # in step with the clock
    assert pushed == 21 and handed_after < 0.015  # on to aiortc as soon as it arrives
