"""WebRTC audio shared by every leg that ends in aiortc: 20 ms frames of 8 kHz audio in and out of a peer.

Latency is the gateway's first cost (issue 15 wants at most 60 ms each way), so no stage holds audio it need not:
- to the browser, the track hands each frame to aiortc as soon as the media tick pushes it (a silent frame when a
  tick is late), and never keeps more than one waiting: a self-paced queue between two 20 ms clocks settles at
  whatever depth it first reached, up to 100 ms for good. It hands 48 kHz stereo, exactly 960 samples a frame
  (`Upsampler`): given 8 kHz, aiortc's Opus encoder resamples, its resampler keeps a few samples back, and the
  encoder then waits for a whole 960-sample frame, one frame (20 ms) behind for the whole call;
- from the browser, aiortc's receiver waits for 4 newer packets before it releases one (80 ms, always); its jitter
  buffer is swapped for one that releases each packet as the next arrives (`shorten_receive_delay`), and the 8 kHz
  buffer after it (`InboundAudio`) starts 40 ms deep, gives back a frame it has not needed for 2 s (longer after
  each underrun, so a jittery browser settles instead of dropping out every 2 s), and never holds more than 60 ms.

Loopback: aioice never gathers 127.0.0.1, so on a host whose only interface is ``lo`` (the tests' network namespace)
a peer would have no candidate at all. `install_loopback_fallback` makes aioice offer 127.0.0.1 in exactly that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import inspect
import logging
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
#: Inbound audio held before the oldest is dropped (3 frames = 60 ms).
MAX_BUFFERED_FRAMES: Final = 3
#: After running dry, inbound audio waits for this many frames before playing again, to ride out arrival jitter.
INBOUND_PREFILL_FRAMES: Final = 2
#: Takes over which inbound audio that always had a whole frame to spare gives one back (2 s); doubled per underrun.
SHRINK_WINDOW_TAKES: Final = 100
MAX_SHRINK_WINDOW_TAKES: Final = 1500
#: How long the outbound track waits for the media tick's frame before it sends silence (a late tick).
OUTBOUND_WAIT_S: Final = 0.040
WIDEBAND_RATE: Final = 48_000  # what Opus (and so aiortc's encoder) runs at
_UPSAMPLE: Final = WIDEBAND_RATE // SAMPLE_RATE
_TAPS_PER_PHASE: Final = 16
#: aiortc's audio receiver buffer, as aiortc 1.16 sizes it, with no packets held back for reordering.
_RECEIVE_BUFFER_CAPACITY: Final = 16
LOOPBACK_V4: Final = "127.0.0.1"
_TIME_BASE: Final = fractions.Fraction(1, WIDEBAND_RATE)


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


def shorten_receive_delay(peer: object) -> int:
    """Make `peer`'s audio receivers release each packet as soon as the next one arrives (aiortc holds 4 back).

    aiortc builds each audio `RTCRtpReceiver` with a private `JitterBuffer(capacity=16, prefetch=4)`: a packet leaves
    only when four newer ones are in, a constant 80 ms on every packet. The gateway buffers after decoding anyway
    (`InboundAudio`), so the receiver's is replaced by one with `prefetch=0`. Verified against aiortc 1.16
    (pyproject pins <2); a receiver of another shape is left alone with a warning. Call it once the peer has its
    transceivers (after `addTransceiver` or `setRemoteDescription`). Returns how many receivers it shortened.
    """
    try:
        from aiortc.jitterbuffer import JitterBuffer
    except ImportError:
        log.warning("aiortc.jitterbuffer is gone: the browsers' audio keeps aiortc's 80 ms receive delay")
        return 0
    shortened = 0
    get_transceivers = getattr(peer, "getTransceivers", None)
    for transceiver in get_transceivers() if callable(get_transceivers) else []:
        if getattr(transceiver, "kind", None) != "audio":
            continue
        receiver = transceiver.receiver
        current = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if not isinstance(current, JitterBuffer) or getattr(current, "_prefetch", None) is None:
            log.warning("aiortc's receiver has no jitter buffer of the known shape: 80 ms receive delay kept")
            continue
        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=_RECEIVE_BUFFER_CAPACITY, prefetch=0)
        shortened += 1
    return shortened


class InboundAudio:
    """What the browser sent, resampled to 8 kHz mono int16 and cut into 20 ms frames for the engine's tick.

    Bounded: beyond `max_frames` of audio the oldest samples go. After an underrun it waits until `prefill_frames`
    are buffered before yielding again, so one late packet costs one silent tick rather than a stutter. Audio that
    always had a whole frame to spare after each take over a window of takes is a frame of delay nobody needed: one
    frame is dropped. The window doubles after each underrun (up to 30 s), so the buffer settles at the depth the
    browser's arrival jitter needs.
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
        self._shrink_window = SHRINK_WINDOW_TAKES
        self._takes = 0
        self._least_left = self._max_samples
        self.dropped_samples = 0
        self.underruns = 0
        self.shrunk_frames = 0

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
            self._restart_window()
        if self._samples.size < FRAME_SAMPLES:
            self._playing = False
            self.underruns += 1
            self._shrink_window = min(MAX_SHRINK_WINDOW_TAKES, self._shrink_window * 2)
            return None
        frame, self._samples = self._samples[:FRAME_SAMPLES], self._samples[FRAME_SAMPLES:]
        self._least_left = min(self._least_left, int(self._samples.size))
        self._takes += 1
        if self._takes >= self._shrink_window:
            if self._least_left >= FRAME_SAMPLES:  # a whole frame to spare at every take: delay nobody needed
                self._samples = self._samples[FRAME_SAMPLES:]
                self.shrunk_frames += 1
            self._restart_window()
        return frame

    def _restart_window(self) -> None:
        self._takes = 0
        self._least_left = self._max_samples


def _upsampling_filter() -> npt.NDArray[np.float64]:
    """A windowed-sinc low-pass at 4 kHz for the 48 kHz rate (Kaiser, ~60 dB down past 4.6 kHz), as 6 phases of 16
    taps, with the 6x gain that zero-stuffing takes away."""
    taps = _UPSAMPLE * _TAPS_PER_PHASE
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = 0.5 / _UPSAMPLE  # of the 48 kHz rate: 4 kHz
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 6.0)
    kernel *= _UPSAMPLE / kernel.sum()
    # Phase p of output sample 6i+p is sum_k kernel[6k+p] * x[i-k]: each phase's taps, newest input first.
    return np.stack([kernel[p::_UPSAMPLE] for p in range(_UPSAMPLE)], axis=1)  # [taps per phase, 6]


class Upsampler:
    """8 kHz mono frames to 48 kHz stereo frames, 160 samples in, exactly 960 out, with no sample held back beyond
    the filter's ~1 ms group delay (it keeps the last 15 input samples as its state)."""

    _filter: Final = _upsampling_filter()

    def __init__(self) -> None:
        self._history = np.zeros(_TAPS_PER_PHASE - 1, dtype=np.float64)

    def upsample(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        joined = np.concatenate([self._history, samples.astype(np.float64)])
        self._history = joined[-(_TAPS_PER_PHASE - 1) :]
        # Row i: the 16 inputs ending at sample i, newest first; times each phase's taps: output 6i .. 6i+5.
        windows = np.lib.stride_tricks.sliding_window_view(joined, _TAPS_PER_PHASE)[:, ::-1]
        wide = (windows @ self._filter).reshape(-1)
        mono = np.clip(np.rint(wide), -32768, 32767).astype(np.int16)
        return np.repeat(mono, 2)  # interleaved stereo: aiortc's encoder wants stereo, and converting costs no delay


class PacedAudioTrack(MediaStreamTrack):
    """Audio for the browser to hear: the media tick `push`es a frame every 20 ms and aiortc's `recv` takes it.

    `recv` returns as soon as a frame is pushed, so the browser gets it within the tick; when none comes within
    `OUTBOUND_WAIT_S` (a late tick) it returns silence, so the RTP stream never stops. At most one frame waits: when
    the tick runs ahead of aiortc (aiortc's loop stalled), the older frames are dropped and counted, rather than
    kept as delay for the rest of the call.
    """

    kind = "audio"

    def __init__(self, *, max_waiting: int = 1) -> None:
        super().__init__()
        self._frames: deque[npt.NDArray[np.int16]] = deque()
        self._max_waiting = max_waiting
        self._pushed = asyncio.Event()
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._upsampler = Upsampler()
        self._pts = 0
        self.dropped_frames = 0

    @property
    def queued_frames(self) -> int:
        return len(self._frames)

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        if samples.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected {FRAME_SAMPLES} samples, got shape {samples.shape}")
        self._frames.append(samples)
        while len(self._frames) > self._max_waiting:
            self._frames.popleft()
            self.dropped_frames += 1
        self._pushed.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._frames:
            self._pushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pushed.wait(), OUTBOUND_WAIT_S)
        if self.readyState != "live":
            raise MediaStreamError
        samples = self._frames.popleft() if self._frames else self._silence
        wide = self._upsampler.upsample(samples)
        frame = av.AudioFrame.from_ndarray(wide.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = WIDEBAND_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES * _UPSAMPLE
        return frame


class OpusPackets(MediaStreamTrack):
    """The bridge's audio encoded once, for every browser that hears it: Opus packets from a track of 48 kHz stereo
    frames (a `PacedAudioTrack`, through a relay).

    aiortc encodes per sender: a bridge heard by N browsers would run N Opus encoders on the same audio, each frame
    sent through a thread pool (~1 % of a core per browser, measured). A sender given packets only packetizes them.
    Only for peers that negotiated Opus (`negotiated_audio_codec`); any other codec takes the frames.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.bit_rate = 64_000  # voice; aiortc's own encoder uses 96 kbit/s
        self._encoder.format = "s16"
        self._encoder.layout = "stereo"
        self._encoder.sample_rate = WIDEBAND_RATE
        self._encoder.time_base = _TIME_BASE
        self._encoder.options = {"application": "voip"}
        self._pts = 0

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = await self._source.recv()
            if not isinstance(frame, av.AudioFrame):
                continue
            for packet in self._encoder.encode(frame):  # one packet a 20 ms frame (after the first)
                packet.pts = self._pts
                packet.time_base = _TIME_BASE
                self._pts += FRAME_SAMPLES * _UPSAMPLE
                return packet

    def stop(self) -> None:
        super().stop()
        self._source.stop()


def negotiated_audio_codec(sdp: str) -> str | None:
    """The codec an SDP answer chose for its first audio section (lower case, e.g. "opus"), or None."""
    payload: str | None = None
    for line in sdp.splitlines():
        if payload is None and line.startswith("m=audio "):
            fields = line.split()
            payload = fields[3] if len(fields) > 3 and fields[1] != "0" else ""
        elif payload and line.startswith(f"a=rtpmap:{payload} "):
            return line.split(" ", 1)[1].split("/", 1)[0].strip().lower()
    return None


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
