"""A browser standing in for /phone's page, in aiortc: a microphone of a steady tone, a `dtmf` data channel, full ICE
gathering before the offer (as phone.js does); and what its tests share to run it on a loop of their own."""

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

from dialbridge.gateway.webrtc import install_loopback_fallback
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


# On any other host a call would use real interfaces (tests without a peer run anywhere).
needs_loopback_only = pytest.mark.skipif(
    not _only_loopback(),
    reason="WebRTC would use this host's interfaces: run inside `unshare -n` with only lo up (scripts/run-tests)",
)


def run(coroutine: Coroutine[Any, Any, T], *, timeout: float = 20.0) -> T:
    """Run on uvloop, as the gateway does, and never longer than `timeout`."""

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
        install_loopback_fallback()  # or, in a namespace holding only lo, it would offer no candidate at all
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


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        # Polls: the states watched belong to aiortc or the peer and have nothing to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def tick(seconds: float, each: Callable[[int, float], None]) -> None:
    """The gateway's 20 ms clock: `each(tick_number, now)` on an absolute schedule."""
    start = time.monotonic()
    for number in range(round(seconds / TICK_S)):
        now = time.monotonic()
        each(number, now)
        await asyncio.sleep(max(0.0, start + (number + 1) * TICK_S - time.monotonic()))
