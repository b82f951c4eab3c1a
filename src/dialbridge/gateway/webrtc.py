"""WebRTC audio shared by every leg that ends in aiortc: 20 ms frames of 8 kHz audio in and out of a peer.

Latency is the gateway's first cost (issue 15 wants at most 60 ms each way), so no stage holds audio it need not:
- to the browser, the track hands each frame to aiortc as soon as the SIP leg's packet completing it arrives (silent
  frames, at 20 ms, while none comes), never paced by a clock of its own: a self-paced queue between two 20 ms
  clocks settles at whatever depth it first reached, up to 100 ms for good. It hands 48 kHz stereo, exactly 960
  samples a frame
  (`Upsampler`): given 8 kHz, aiortc's Opus encoder resamples, its resampler keeps a few samples back, and the
  encoder then waits for a whole 960-sample frame, one frame (20 ms) behind for the whole call;
- from the browser, aiortc's receiver waits for 4 newer packets before it releases one (80 ms, always), then hands
  it to a decoder thread of its own, which hands 48 kHz stereo back to the loop. Each packet is decoded instead as
  it arrives, on the loop, straight to 8 kHz mono (`decode_on_arrival`), and the 8 kHz buffer after it
  (`InboundAudio`) starts 40 ms deep, gives back a frame it has not needed for 2 s (longer after each underrun, so a
  jittery browser settles instead of dropping out every 2 s), and never holds more than 60 ms.

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
from typing import Final, Protocol

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from dialbridge.media import g711

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
#: How long the outbound track waits for the SIP leg's next frame before it sends silence (a late or lost packet),
#: and after that the silence's pace: a frame's time each, so the browser's clock and ours keep step through a pause.
OUTBOUND_WAIT_S: Final = 0.040
#: Frames the outbound track keeps for aiortc at most: a burst of arrivals (a packet of 60 ms, or packets held up
#: together on the way) is sent on whole; more than this only piles up while aiortc is stalled, and is dropped.
OUTBOUND_MAX_WAITING: Final = 8
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


def decode_on_arrival(peer: object, into: InboundAudio) -> int:
    """Decode what `peer`'s audio receivers get as each packet arrives, into `into` (8 kHz mono, `AudioOnArrival`).

    aiortc builds each audio `RTCRtpReceiver` with a private `JitterBuffer(capacity=16, prefetch=4)`: a packet leaves
    only when four newer ones are in, a constant 80 ms on every packet; then a decoder thread per receiver decodes
    it to 48 kHz stereo and hands each frame back to the loop (a thread hop both ways, and a resampler after). The
    gateway buffers after decoding anyway (`InboundAudio`), so the receiver's buffer is replaced by one that decodes
    each packet at once and hands aiortc nothing to decode. Verified against aiortc 1.16 (pyproject pins <2); a
    receiver of another shape is left alone with a warning, and its frames still reach `into` through `read_audio`
    (80 ms later, at aiortc's cost). Call it once the peer has its transceivers (after `addTransceiver` or
    `setRemoteDescription`). Returns how many receivers now decode on arrival.
    """
    try:
        from aiortc.jitterbuffer import JitterBuffer
    except ImportError:
        log.warning("aiortc.jitterbuffer is gone: the browsers' audio keeps aiortc's 80 ms receive delay")
        return 0
    installed = 0
    get_transceivers = getattr(peer, "getTransceivers", None)
    for transceiver in get_transceivers() if callable(get_transceivers) else []:
        if getattr(transceiver, "kind", None) != "audio":
            continue
        receiver = transceiver.receiver
        current = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if not isinstance(current, JitterBuffer) or getattr(current, "_prefetch", None) is None:
            log.warning("aiortc's receiver has no jitter buffer of the known shape: 80 ms receive delay kept")
            continue
        receiver._RTCRtpReceiver__jitter_buffer = AudioOnArrival(into, lambda: _local_sdp(peer))
        installed += 1
    return installed


def _local_sdp(peer: object) -> str | None:
    description = getattr(peer, "localDescription", None)
    sdp = getattr(description, "sdp", None)
    return sdp if isinstance(sdp, str) else None


class ReceivedPacket(Protocol):
    """The fields of aiortc's `RtpPacket` that `AudioOnArrival` reads."""

    sequence_number: int
    payload_type: int
    payload: bytes


class AudioOnArrival:
    """Stands in for an aiortc audio receiver's jitter buffer (`decode_on_arrival`): each packet is decoded as it
    arrives, to 8 kHz mono, into an `InboundAudio`, and aiortc gets nothing to decode.

    aiortc's receiver calls only `add(packet)` (after its statistics, NACKs and depayloading), for packets of a payload
    type it negotiated; the answer `(False, None)` means "no picture lost, no frame complete". A duplicate or a
    packet overtaken by a newer one is dropped (its moment has passed; `InboundAudio` rides out the gap). The codec
    of each payload type is read from the peer's own SDP, which declares what it receives; a payload type this
    cannot decode is dropped, counted. Nothing raises into aiortc's receive loop.
    """

    def __init__(self, into: InboundAudio, local_sdp: Callable[[], str | None]) -> None:
        self._into = into
        self._local_sdp = local_sdp
        self._decoders: dict[int, NarrowbandDecoder | None] = {}
        self._last_sequence: int | None = None
        self.late_packets = 0
        self.undecodable_packets = 0

    def add(self, packet: ReceivedPacket) -> tuple[bool, None]:
        sequence = packet.sequence_number
        if self._last_sequence is not None and not 0 < (sequence - self._last_sequence) % 65536 < 32768:
            self.late_packets += 1
            return False, None
        self._last_sequence = sequence
        decoder = self._decoder(packet.payload_type)
        try:
            if decoder is None:
                raise ValueError(f"no decoder for payload type {packet.payload_type}")
            self._into.add_samples(decoder.decode(packet.payload))
        except (av.FFmpegError, ValueError) as exc:
            self.undecodable_packets += 1
            if self.undecodable_packets == 1:  # once a stream: a broken sender would flood the log
                log.warning("dropped an undecodable audio packet from a browser (more are counted only): %s", exc)
        return False, None

    def _decoder(self, payload_type: int) -> NarrowbandDecoder | None:
        if payload_type not in self._decoders:
            codec = receive_codecs(self._local_sdp() or "").get(payload_type)
            self._decoders[payload_type] = NarrowbandDecoder(codec) if codec in NARROWBAND_CODECS else None
        return self._decoders[payload_type]


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


def _lowpass_kernel() -> npt.NDArray[np.float64]:
    """A windowed-sinc low-pass at 4 kHz for the 48 kHz rate (Kaiser, ~60 dB down past 4.6 kHz), 96 taps, unity gain
    at DC: the filter both ways between 8 and 48 kHz."""
    taps = _UPSAMPLE * _TAPS_PER_PHASE
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = 0.5 / _UPSAMPLE  # of the 48 kHz rate: 4 kHz
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 6.0)
    return kernel / kernel.sum()  # type: ignore[no-any-return]


def _upsampling_filter() -> npt.NDArray[np.float64]:
    """The low-pass as 6 phases of 16 taps, with the 6x gain that zero-stuffing takes away."""
    kernel = _lowpass_kernel() * _UPSAMPLE
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


class Downsampler:
    """48 kHz mono to 8 kHz mono, any whole number of 6-sample groups in (a 20 ms Opus packet gives 960 and 160
    come out), through the same 4 kHz low-pass as `Upsampler`, ~1 ms of group delay; it keeps the last 95 input
    samples as its state."""

    _kernel: Final = _lowpass_kernel()[::-1].copy()  # newest input first, as each window below is read

    def __init__(self) -> None:
        self._history = np.zeros(self._kernel.size - 1, dtype=np.float64)

    def downsample(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        if samples.size % _UPSAMPLE:
            raise ValueError(f"expected a multiple of {_UPSAMPLE} samples at 48 kHz, got {samples.size}")
        joined = np.concatenate([self._history, samples.astype(np.float64)])
        self._history = joined[-(self._kernel.size - 1) :]
        # Output j is the filter over the 96 inputs ending at input 6j+5: every 6th window.
        windows = np.lib.stride_tricks.sliding_window_view(joined, self._kernel.size)[_UPSAMPLE - 1 :: _UPSAMPLE]
        return np.clip(np.rint(windows @ self._kernel), -32768, 32767).astype(np.int16)


#: What `NarrowbandDecoder` decodes, by the codec names of SDP (lower case).
NARROWBAND_CODECS: Final = frozenset({"opus", "pcmu", "pcma"})


class NarrowbandDecoder:
    """One received stream's payloads to 8 kHz mono int16. Opus is decoded by libopus (PyAV) as mono, at the 48 kHz
    FFmpeg's libopus decoder always gives, then downsampled; G.711 is already 8 kHz."""

    def __init__(self, codec: str) -> None:
        if codec not in NARROWBAND_CODECS:
            raise ValueError(f"cannot decode {codec!r}")
        self.codec = codec
        self._opus: av.AudioCodecContext | None = None
        self._downsampler = Downsampler()
        if codec == "opus":
            self._opus = av.CodecContext.create("libopus", "r")
            self._opus.layout = "mono"
            self._opus.format = "s16"

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        if self._opus is None:
            return g711.decode(self.codec.upper(), payload)
        if not payload:
            raise ValueError("an empty Opus payload")
        wide = [
            frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            for frame in self._opus.decode(av.Packet(payload))
        ]
        if not wide:
            return np.zeros(0, dtype=np.int16)
        return self._downsampler.downsample(wide[0] if len(wide) == 1 else np.concatenate(wide))


class PacedAudioTrack(MediaStreamTrack):
    """Audio for the browser to hear: the SIP leg's frames are `push`ed as they arrive and aiortc's `recv` takes them.

    `recv` returns as soon as a frame is pushed, so it reaches the browser at once; when none comes within
    `OUTBOUND_WAIT_S` (a late or lost packet, a far end that paused) it returns silence, then one more each frame's
    time while none comes, so the RTP stream never stops and its timestamps keep pace with the clock. Frames queue
    only while aiortc has not come back for the last one: at most `max_waiting`, the older dropped and counted
    beyond that, rather than kept as delay for the rest of the call.
    """

    kind = "audio"

    def __init__(self, *, max_waiting: int = OUTBOUND_MAX_WAITING) -> None:
        super().__init__()
        self._frames: deque[npt.NDArray[np.int16]] = deque()
        self._max_waiting = max_waiting
        self._pushed = asyncio.Event()
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._upsampler = Upsampler()
        self._pts = 0
        self._wait_s = OUTBOUND_WAIT_S
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
                await asyncio.wait_for(self._pushed.wait(), self._wait_s)
        if self.readyState != "live":
            raise MediaStreamError
        if self._frames:
            samples, self._wait_s = self._frames.popleft(), OUTBOUND_WAIT_S
        else:
            samples, self._wait_s = self._silence, FRAME_SECONDS
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


def _first_audio_section(sdp: str) -> tuple[list[int], dict[int, str]]:
    """The payload types of an SDP's first audio section, in its order (none when rejected: port 0), and the codec
    name (lower case) of each, by its rtpmap or, for a static type without one, RFC 3551's table."""
    payload_types: list[int] | None = None
    names: dict[int, str] = {}
    for line in sdp.splitlines():
        if line.startswith("m="):
            if payload_types is not None:
                break  # past the first audio section
            fields = line.split()
            if fields[0] == "m=audio":
                rejected = len(fields) < 4 or fields[1] == "0"
                payload_types = [] if rejected else [int(pt) for pt in fields[3:] if pt.isdigit()]
        elif payload_types is not None and line.startswith("a=rtpmap:"):
            number, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            if number.isdigit():
                names[int(number)] = encoding.split("/", 1)[0].strip().lower()
    found = payload_types or []
    return found, {pt: names.get(pt) or _STATIC_AUDIO.get(pt, "") for pt in found}


_STATIC_AUDIO: Final = {0: "pcmu", 8: "pcma"}


def negotiated_audio_codec(sdp: str) -> str | None:
    """The codec an SDP answer chose for its first audio section (lower case, e.g. "opus"), or None."""
    payload_types, names = _first_audio_section(sdp)
    return names[payload_types[0]] or None if payload_types else None


def receive_codecs(sdp: str) -> dict[int, str]:
    """Payload type → codec name (lower case) of the first audio section: in a peer's own SDP, what it receives."""
    return _first_audio_section(sdp)[1]


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
