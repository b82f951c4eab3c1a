"""WebRTC audio shared by every leg that ends in aiortc: 20 ms frames of 8 kHz audio in and out of a peer.

Both directions cross between two free-running 20 ms clocks (a media tick and aiortc's packet flow), so each holds
a small bounded buffer that drops its oldest audio when full: latency stays under ~100 ms instead of growing when one
side stalls.

Loopback: aioice never gathers 127.0.0.1, so on a host whose only interface is ``lo`` (the tests' network namespace)
a peer would have no candidate at all. `install_loopback_fallback` makes aioice offer 127.0.0.1 in exactly that case.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz: one media tick
FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE
#: Audio held per direction before the oldest is dropped (5 frames = 100 ms).
MAX_BUFFERED_FRAMES: Final = 5
#: After running dry, inbound audio waits for this many frames before playing again, to ride out arrival jitter.
INBOUND_PREFILL_FRAMES: Final = 2
LOOPBACK_V4: Final = "127.0.0.1"
_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)
# A recv() this far behind its schedule (the loop stalled) restarts its clock instead of bursting to catch up.
_MAX_PACING_LAG_S: Final = 0.2


def install_loopback_fallback() -> bool:
    """Let aioice gather 127.0.0.1 when the host has no other address (a network namespace holding only ``lo``).

    aioice's `get_host_addresses` always leaves out 127.0.0.1 and ::1, so there a peer gathers no candidate and
    ICE cannot start. This wraps that module-level function: its answer is unchanged whenever it finds any address,
    so real hosts advertise exactly what they did before. Idempotent. Verified against aioice 0.13; with any other
    shape of the function it logs a warning, changes nothing and returns False (loopback-only hosts then cannot
    connect, everything else works as before).
    """
    try:
        import aioice.ice as aioice_ice
    except ImportError:  # pragma: no cover - aiortc always brings aioice
        log.warning("aioice is not importable: loopback candidates unavailable")
        return False
    original = getattr(aioice_ice, "get_host_addresses", None)
    if original is None:
        log.warning("aioice.ice.get_host_addresses is gone: loopback candidates unavailable")
        return False
    if getattr(original, "dialbridge_loopback_fallback", False):
        return True
    try:
        parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters != ["use_ipv4", "use_ipv6"]:
        log.warning("aioice.ice.get_host_addresses%s is not the known shape: no loopback fallback", parameters)
        return False

    def host_addresses_or_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses: list[str] = original(use_ipv4, use_ipv6)
        if addresses or not use_ipv4:
            return addresses
        return [LOOPBACK_V4]

    host_addresses_or_loopback.dialbridge_loopback_fallback = True  # type: ignore[attr-defined]
    aioice_ice.get_host_addresses = host_addresses_or_loopback
    return True


class InboundAudio:
    """What the browser sent, resampled to 8 kHz mono int16 and cut into 20 ms frames for the engine's tick.

    Bounded: beyond `max_frames` of audio the oldest samples go. After an underrun it waits until `prefill_frames`
    are buffered before yielding again, so one late packet costs one silent tick rather than a stutter.
    """

    def __init__(self, *, max_frames: int = MAX_BUFFERED_FRAMES, prefill_frames: int = INBOUND_PREFILL_FRAMES) -> None:
        if not 1 <= prefill_frames <= max_frames:
            raise ValueError(f"need 1 <= prefill_frames <= max_frames, got {prefill_frames} and {max_frames}")
        self._max_samples = max_frames * FRAME_SAMPLES
        self._prefill_samples = prefill_frames * FRAME_SAMPLES
        self._samples: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._playing = False
        self._resampler: av.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None
        self.dropped_samples = 0

    @property
    def buffered_samples(self) -> int:
        return int(self._samples.size)

    def add_frame(self, frame: av.AudioFrame) -> None:
        """Take one decoded frame in whatever aiortc produced (48 kHz stereo Opus, 8 kHz mono G.711, ...)."""
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self._source:
            # A resampler is set up for one input shape; a renegotiated codec brings another.
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._source = source
        assert self._resampler is not None
        for resampled in self._resampler.resample(frame):
            self.add_samples(resampled.to_ndarray().reshape(-1).astype(np.int16, copy=False))

    def add_samples(self, samples: npt.NDArray[np.int16]) -> None:
        joined = np.concatenate([self._samples, samples])
        excess = joined.size - self._max_samples
        if excess > 0:
            self.dropped_samples += excess
            joined = joined[excess:]
        self._samples = joined

    def take_frame(self) -> npt.NDArray[np.int16] | None:
        """The next 160 samples, or None while there is not enough to play (the caller plays silence)."""
        if not self._playing:
            if self._samples.size < self._prefill_samples:
                return None
            self._playing = True
        if self._samples.size < FRAME_SAMPLES:
            self._playing = False
            return None
        frame, self._samples = self._samples[:FRAME_SAMPLES], self._samples[FRAME_SAMPLES:]
        return frame


class PacedAudioTrack(MediaStreamTrack):
    """Audio for the browser to hear: frames queued with `push`, handed to aiortc every 20 ms.

    `recv` keeps its own 20 ms schedule and sends silence when nothing is queued, so the RTP stream
    never stops; the queue keeps at most `max_frames` (oldest dropped) so a stalled sender cannot build up delay.
    """

    kind = "audio"

    def __init__(self, *, max_frames: int = MAX_BUFFERED_FRAMES) -> None:
        super().__init__()
        self._frames: deque[npt.NDArray[np.int16]] = deque(maxlen=max_frames)
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._next_at: float | None = None
        self._pts = 0
        self.dropped_frames = 0

    @property
    def queued_frames(self) -> int:
        return len(self._frames)

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        if samples.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected {FRAME_SAMPLES} samples, got shape {samples.shape}")
        if len(self._frames) == self._frames.maxlen:
            self.dropped_frames += 1
        self._frames.append(samples)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._next_at is None or now - self._next_at > _MAX_PACING_LAG_S:
            self._next_at = now
        else:
            self._next_at += FRAME_SECONDS
            delay = self._next_at - now
            if delay > 0:
                await asyncio.sleep(delay)
        if self.readyState != "live":
            raise MediaStreamError
        samples = self._frames.popleft() if self._frames else self._silence
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES
        return frame


async def read_audio(track: MediaStreamTrack, into: InboundAudio, wanted: Callable[[], bool], what: str) -> None:
    """Feed a received audio track's frames into `into` while `wanted()` holds and the track lives. One frame the
    resampler cannot take costs that frame, not the call."""
    while wanted():
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        try:
            into.add_frame(frame)
        except (av.FFmpegError, ValueError):
            log.exception("%s: dropped an undecodable inbound frame", what)
