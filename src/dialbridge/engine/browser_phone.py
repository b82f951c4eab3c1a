"""The browser phone's call leg: a WebRTC peer (aiortc) that the voice engine drives like any SIP caller.

The page at `/phone` offers audio and a data channel labelled ``dtmf``; `BrowserPhoneLeg.answer` answers it with ICE
gathering finished (no trickle), so the answer SDP is final. From then on the engine sees the same thing an RTP
session gives it, once per 20 ms tick: `playout()` yields 160 bytes of G.711 of what the browser said, `send()` takes
160 bytes of G.711 for the browser to hear. Digits arrive as single characters on the data channel rather than as
in-band tones, so they are exact and never reach the conference mix.

Both directions cross between two free-running 20 ms clocks (the engine's tick and aiortc's packet flow), so each
holds a small bounded buffer that drops its oldest audio when full: latency stays under ~100 ms instead of growing
when one side stalls.

Loopback: aioice never gathers 127.0.0.1, so on a host whose only interface is ``lo`` (the tests' network namespace)
a peer would have no candidate at all. `install_loopback_fallback` makes aioice offer 127.0.0.1 in exactly that case.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError

from dialbridge.media import g711

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz: one engine tick
FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE
#: Audio held per direction before the oldest is dropped (5 frames = 100 ms).
MAX_BUFFERED_FRAMES: Final = 5
#: After running dry, inbound audio waits for this many frames before playing again, to ride out arrival jitter.
INBOUND_PREFILL_FRAMES: Final = 2
DTMF_CHANNEL_LABEL: Final = "dtmf"
DIGITS: Final = frozenset("0123456789*#")
HANGUP_MESSAGE: Final = "bye"
#: Longest data channel message looked at; anything longer is ignored unread.
MAX_CONTROL_MESSAGE_CHARS: Final = 8
DEFAULT_CONNECT_TIMEOUT_S: Final = 30.0
#: A browser's audio-and-data-channel offer is a few kB; anything far larger is not one.
MAX_OFFER_CHARS: Final = 64 * 1024
LOOPBACK_V4: Final = "127.0.0.1"
_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)
# A recv() this far behind its schedule (the loop stalled) restarts its clock instead of bursting to catch up.
_MAX_PACING_LAG_S: Final = 0.2
# What aiortc raises for an offer it cannot answer (ValueError, for malformed SDP, passes through as it is).
_AUDIO_PORT: Final = re.compile(r"^m=audio (\d+) ", re.MULTILINE)  # port 0 = that stream was refused
_AIORTC_REFUSALS: Final = (InternalError, InvalidAccessError, InvalidStateError, OperationError)


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


class EngineAudioTrack(MediaStreamTrack):
    """The browser's incoming audio: frames the engine queued with `push`, handed to aiortc every 20 ms.

    `recv` keeps its own 20 ms schedule and sends silence when the engine has queued nothing, so the RTP stream
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


class BrowserPhoneLeg:
    """One browser phone call: an aiortc RTCPeerConnection, its audio in and out as 20 ms G.711 frames, digits.

    `on_digit` is called once per valid keypad digit the page sends; `on_closed` once when the call ends from the
    browser's side or by failure (ICE/DTLS failure, the peer closing, a ``bye`` on the data channel, not connected
    within `connect_timeout`) — not when the engine ends it with `close()`. Everything runs on the engine's loop.
    """

    def __init__(
        self,
        peer: RTCPeerConnection,
        *,
        codec: str,
        on_digit: Callable[[str], None],
        on_closed: Callable[[], None],
    ) -> None:
        if codec not in g711.SILENCE:
            raise ValueError(f"unknown G.711 codec {codec!r}: expected 'PCMU' or 'PCMA'")
        self._peer = peer
        self._codec = codec
        self._silence = bytes([g711.SILENCE[codec]]) * FRAME_SAMPLES
        self._on_digit = on_digit
        self._on_closed = on_closed
        self._inbound = InboundAudio()
        self._outbound = EngineAudioTrack()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closed = False
        self.end_reason: str | None = None
        peer.addTrack(self._outbound)
        peer.on("track", self._on_track)
        peer.on("datachannel", self._on_datachannel)
        peer.on("connectionstatechange", self._on_connection_state)

    @classmethod
    async def answer(
        cls,
        offer_sdp: str,
        *,
        on_digit: Callable[[str], None],
        on_closed: Callable[[], None],
        codec: str = "PCMU",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> tuple[BrowserPhoneLeg, str]:
        """Answer the page's offer: returns the leg and the answer SDP, its ICE candidates all gathered.

        Raises ValueError when the offer cannot make a call (not SDP, too large, no audio, no codec in common) or
        `codec` is not "PCMU"/"PCMA"; its message says which.
        """
        if len(offer_sdp) > MAX_OFFER_CHARS:
            raise ValueError(f"the offer is over {MAX_OFFER_CHARS} characters")
        if "m=audio" not in offer_sdp:
            raise ValueError("the offer has no audio")
        install_loopback_fallback()
        # No ICE servers: aiortc's default is a public STUN host, and the page advertises host candidates only.
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            leg = cls(peer, codec=codec, on_digit=on_digit, on_closed=on_closed)
            await peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await peer.setLocalDescription(await peer.createAnswer())
        except BaseException as exc:
            # Cancelled or refused half-way: nothing may keep the sockets gathered so far open.
            await asyncio.shield(peer.close())
            if isinstance(exc, _AIORTC_REFUSALS):
                raise ValueError(f"unusable offer: {exc}") from exc
            raise
        description = peer.localDescription
        if description is None or not any(port != "0" for port in _AUDIO_PORT.findall(description.sdp)):
            await peer.close()
            raise ValueError("no audio codec in common with the offer")
        leg._spawn(leg._expire_unless_connected(connect_timeout))
        return leg, description.sdp

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def codec(self) -> str:
        return self._codec

    @property
    def inbound(self) -> InboundAudio:
        return self._inbound

    @property
    def outbound(self) -> EngineAudioTrack:
        return self._outbound

    def playout(self, now: float) -> bytes:
        """One tick of what the browser sent: 160 bytes of G.711, silence while nothing has arrived.

        `now` is the engine's clock, taken for the same shape as an RTP session; arrival paces this buffer.
        """
        samples = None if self._closed else self._inbound.take_frame()
        if samples is None:
            return self._silence
        return g711.encode(self._codec, samples)

    def send(self, frame: bytes, now: float) -> None:
        """Queue one tick (160 bytes of G.711) for the browser to hear. Ignored once closed."""
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"expected {FRAME_SAMPLES} bytes of {self._codec}, got {len(frame)}")
        if self._closed:
            return
        self._outbound.push(g711.decode(self._codec, frame))

    async def close(self) -> None:
        """End the call from the engine's side (does not call `on_closed`). Idempotent."""
        if not self._closed:
            self._closed = True
            self.end_reason = self.end_reason or "closed by the engine"
        await self._shut_down()

    # -- aiortc events -------------------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        while not self._closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            try:
                self._inbound.add_frame(frame)
            except (av.FFmpegError, ValueError):
                # One frame the resampler cannot take costs that frame, not the call.
                log.exception("browser phone: dropped an undecodable inbound frame")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DTMF_CHANNEL_LABEL:
            log.info("browser phone: ignoring data channel %r", channel.label)
            return
        channel.on("message", self._on_control_message)

    def _on_control_message(self, message: str | bytes) -> None:
        if self._closed or not isinstance(message, str) or len(message) > MAX_CONTROL_MESSAGE_CHARS:
            return
        if message == HANGUP_MESSAGE:
            self._end("the browser hung up")
        elif len(message) == 1 and message in DIGITS:
            try:
                self._on_digit(message)
            except Exception:
                log.exception("browser phone: on_digit failed")

    def _on_connection_state(self) -> None:
        state = self._peer.connectionState
        if state in ("failed", "closed"):
            self._end(f"connection {state}")

    async def _expire_unless_connected(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._peer.connectionState != "connected":
            self._end(f"not connected within {seconds:g} s")

    # -- ending ---------------------------------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        """The call ended from the browser's side or by failure: tell the engine once, then release everything."""
        if self._closed:
            return
        self._closed = True
        self.end_reason = reason
        log.info("browser phone call ended: %s", reason)
        try:
            self._on_closed()
        except Exception:
            log.exception("browser phone: on_closed failed")
        # Not via _spawn: shutting down cancels the leg's tasks, which would include this one.
        self._shutdown_task = asyncio.get_running_loop().create_task(self._shut_down())

    async def _shut_down(self) -> None:
        self._outbound.stop()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._peer.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
