"""The browser phone's call leg: a WebRTC peer (aiortc) that the voice engine drives like any SIP caller.

The page at `/phone` offers audio and a data channel labelled ``dtmf``; `BrowserPhoneLeg.answer` answers it with ICE
gathering finished (no trickle), so the answer SDP is final. From then on the engine sees the same thing an RTP
session gives it, once per 20 ms tick: `playout()` yields 160 bytes of G.711 of what the browser said, `send()` takes
160 bytes of G.711 for the browser to hear. Digits arrive as single characters on the data channel rather than as
in-band tones, so they are exact and never reach the conference mix.

The audio buffers between the engine's tick and aiortc, and aioice's loopback fallback, are the gateway's
(`gateway/webrtc.py`), where this leg moves next (issue 15: the engine keeps to SIP/RTP).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    InboundAudio,
    PacedAudioTrack,
    install_loopback_fallback,
    read_audio,
)
from dialbridge.media import g711

log = logging.getLogger(__name__)

DTMF_CHANNEL_LABEL: Final = "dtmf"
DIGITS: Final = frozenset("0123456789*#")
HANGUP_MESSAGE: Final = "bye"
#: Longest data channel message looked at; anything longer is ignored unread.
MAX_CONTROL_MESSAGE_CHARS: Final = 8
DEFAULT_CONNECT_TIMEOUT_S: Final = 30.0
#: A browser's audio-and-data-channel offer is a few kB; anything far larger is not one.
MAX_OFFER_CHARS: Final = 64 * 1024
# What aiortc raises for an offer it cannot answer (ValueError, for malformed SDP, passes through as it is).
_AUDIO_PORT: Final = re.compile(r"^m=audio (\d+) ", re.MULTILINE)  # port 0 = that stream was refused
_AIORTC_REFUSALS: Final = (InternalError, InvalidAccessError, InvalidStateError, OperationError)


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
        self._outbound = PacedAudioTrack()
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
    def outbound(self) -> PacedAudioTrack:
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
        await read_audio(track, self._inbound, lambda: not self._closed, "browser phone")

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
