"""The browser phone: `/phone`'s WebRTC call ends here, in the gateway, which dials in to the voice engine like any
SIP phone.

The page offers audio and a data channel labelled ``dtmf``; `BrowserPhonePeer.answer` answers it with ICE gathering
finished (no trickle), so the answer SDP is final. The peer is the WebRTC side of a gateway call (`shell.WebRtcSide`,
as a room participant is for a room bridge): each 20 ms tick takes what the browser said (`take_mix`) for the SIP leg,
and what the leg sends is given to it as it arrives (`hear`).

`BrowserPhones` makes such calls. The SIP leg is placed only once the peer is connected, so an offer whose browser
never connects costs a peer and an RTP port for `connect_timeout_s`, never a call in the engine. It INVITEs the
engine's dial-in without the session header: the browser phone hears the PIN prompt like any caller. Keypad digits
from the data channel go to the engine as RFC 4733 telephone-events on the leg's RTP, one event per key press; a
``bye`` on the data channel or the peer closing hangs the leg up, and the leg ending closes the peer.

Bounded twice: the gateway's `max_calls` counts these calls with its room bridges, and at most
`max_negotiating` peers may be answered but not yet connected (each holds an aiortc peer and its ICE sockets).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from dialbridge.gateway.shell import DialRefused, Gateway
from dialbridge.gateway.webrtc import (
    InboundAudio,
    OpusPackets,
    PacedAudioTrack,
    decode_on_arrival,
    install_loopback_fallback,
    negotiated_audio_codec,
    read_audio,
)
from dialbridge.rtp.session import DtmfUnavailable
from dialbridge.sip import SipUri

log = logging.getLogger(__name__)

DTMF_CHANNEL_LABEL: Final = "dtmf"
DIGITS: Final = frozenset("0123456789*#")
HANGUP_MESSAGE: Final = "bye"
#: Longest data channel message looked at; anything longer is ignored unread.
MAX_CONTROL_MESSAGE_CHARS: Final = 8
#: The page gathers all its candidates before offering, so a peer that works connects within a second or two.
DEFAULT_CONNECT_TIMEOUT_S: Final = 15.0
#: A browser's audio-and-data-channel offer is a few kB; anything far larger is not one.
MAX_OFFER_CHARS: Final = 60 * 1024
#: Peers answered but not yet connected, at most: a flood of offers costs this many aiortc peers, no more.
MAX_NEGOTIATING: Final = 8
RETRY_NEGOTIATING_S: Final = 5  # a negotiating peer connects or times out within seconds
CALLER_USER: Final = "browser"  # the From user the engine sees (and its event webhooks report)
CALLER_DISPLAY: Final = "Browser phone"
_AUDIO_PORT: Final = re.compile(r"^m=audio (\d+) ", re.MULTILINE)  # port 0 = that stream was refused
# What aiortc raises for an offer it cannot answer (ValueError, for malformed SDP, passes through as it is).
_AIORTC_REFUSALS: Final = (InternalError, InvalidAccessError, InvalidStateError, OperationError)


def check_offer(offer_sdp: str) -> None:
    """Refuse, before any peer exists, what cannot be a browser phone's offer (ValueError saying why)."""
    if len(offer_sdp) > MAX_OFFER_CHARS:
        raise ValueError(f"the offer is over {MAX_OFFER_CHARS} characters")
    if "m=audio" not in offer_sdp:
        raise ValueError("the offer has no audio")


class BrowserPhonePeer:
    """One browser phone's aiortc peer: its audio in and out as 20 ms frames of 8 kHz samples, its keypad digits.

    `on_digit` is called once per valid keypad digit the page sends; `on_connected` once when ICE and DTLS are up;
    `on_closed` once when the call ends from the browser's side or by failure (ICE/DTLS failure, the peer closing,
    a ``bye`` on the data channel, not connected within `connect_timeout_s`) — not when the gateway ends it with
    `leave()`.
    """

    def __init__(
        self,
        *,
        on_digit: Callable[[str], None],
        on_connected: Callable[[], None] = lambda: None,
        on_closed: Callable[[], None] = lambda: None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        install_loopback_fallback()
        # No ICE servers: aiortc's default is a public STUN host, and the page advertises host candidates only.
        self._peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._on_digit = on_digit
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._connect_timeout_s = connect_timeout_s
        self._inbound = InboundAudio()
        self._outbound = PacedAudioTrack()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = False
        self.end_reason: str | None = None
        # Encoded here, on the loop, rather than by aiortc's per-frame hop to a thread pool; frames for a codec
        # other than Opus (see `answer`).
        self._sender = self._peer.addTrack(OpusPackets(self._outbound))
        self._peer.on("track", self._on_track)
        self._peer.on("datachannel", self._on_datachannel)
        self._peer.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer_sdp: str) -> str:
        """Answer the page's offer: the answer SDP, its ICE candidates all gathered.

        Raises ValueError when the offer cannot make a call (not SDP, too large, no audio, no codec in common); its
        message says which. The peer is closed then (and on cancellation), with no `on_closed`.
        """
        try:
            check_offer(offer_sdp)
            await self._peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            decode_on_arrival(self._peer, self._inbound)
            await self._peer.setLocalDescription(await self._peer.createAnswer())
            description = self._peer.localDescription
            if description is None or not any(port != "0" for port in _AUDIO_PORT.findall(description.sdp)):
                raise ValueError("no audio codec in common with the offer")
            if negotiated_audio_codec(description.sdp) != "opus":
                self._sender.replaceTrack(self._outbound)
        except BaseException as exc:
            # Cancelled or refused half-way: nothing may keep the sockets gathered so far open.
            await asyncio.shield(self.leave())
            if isinstance(exc, _AIORTC_REFUSALS):
                raise ValueError(f"unusable offer: {exc}") from exc
            raise
        self._spawn(self._expire_unless_connected(self._connect_timeout_s))
        return description.sdp

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_count(self) -> int:
        return 0 if self._closed else 1

    @property
    def inbound(self) -> InboundAudio:
        return self._inbound

    @property
    def outbound(self) -> PacedAudioTrack:
        return self._outbound

    def take_mix(self) -> npt.NDArray[np.int16] | None:
        """One tick of what the browser said; None while nothing has arrived (the gateway sends silence)."""
        return None if self._closed else self._inbound.take_frame()

    def hear(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue one frame (160 samples) for the browser to hear. Ignored once closed."""
        if not self._closed:
            self._outbound.push(samples)

    async def leave(self) -> None:
        """End the call from the gateway's side (does not call `on_closed`). Idempotent."""
        if not self._closed:
            self._closed = True
            self.end_reason = self.end_reason or "closed by the gateway"
        await self._shut_down()

    # -- aiortc events -------------------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(read_audio(track, self._inbound, lambda: not self._closed, "browser phone"))

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
            _call_safely(self._on_digit, message, what="on_digit")

    def _on_connection_state(self) -> None:
        state = self._peer.connectionState
        if state == "connected" and not self.connected and not self._closed:
            self.connected = True
            _call_safely(self._on_connected, what="on_connected")
        elif state in ("failed", "closed"):
            self._end(f"connection {state}")

    async def _expire_unless_connected(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.connected:
            self._end(f"not connected within {seconds:g} s")

    # -- ending ---------------------------------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        """The call ended from the browser's side or by failure: say so once, then release everything."""
        if self._closed:
            return
        self._closed = True
        self.end_reason = reason
        log.info("browser phone call ended: %s", reason)
        _call_safely(self._on_closed, what="on_closed")
        # Not via _spawn: shutting down cancels the peer's tasks, which would include this one.
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


def _call_safely(callback: Callable[..., None], *args: Any, what: str) -> None:
    """A callback's failure is logged, never raised into aiortc's event dispatch."""
    try:
        callback(*args)
    except Exception:
        log.exception("browser phone: %s failed", what)


class BrowserPhones:
    """The gateway's browser phone calls: each one a `BrowserPhonePeer` joined to a SIP leg into `dial_in_uri`."""

    def __init__(
        self,
        gateway: Gateway,
        dial_in_uri: str,
        *,
        max_negotiating: int = MAX_NEGOTIATING,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self.dial_in = SipUri.parse(dial_in_uri)  # ValueError at start-up, not at the first call
        self.dial_in_uri = dial_in_uri
        self.max_negotiating = max_negotiating
        self.connect_timeout_s = connect_timeout_s
        self.digits_sent = 0

    def _peers(self) -> list[BrowserPhonePeer]:
        return [call.webrtc for call in self.gateway.calls.values() if isinstance(call.webrtc, BrowserPhonePeer)]

    @property
    def negotiating(self) -> int:
        return sum(1 for peer in self._peers() if not peer.connected)

    async def call(self, offer_sdp: str) -> tuple[str, str]:
        """Answer a page's offer: (call id, answer SDP). DialRefused: 400 an unusable offer, 429 the gateway holds
        `max_calls`, 503 `max_negotiating` peers are still connecting or no RTP port is free."""
        try:
            check_offer(offer_sdp)
        except ValueError as exc:
            raise DialRefused(400, str(exc)) from None
        destination = await self.gateway.resolve(self.dial_in.host, self.dial_in.port or 5060)
        # From here to open_call nothing awaits, so concurrent offers cannot all pass the same check.
        if self.negotiating >= self.max_negotiating:
            raise DialRefused(
                503,
                f"{self.max_negotiating} browser phones are still connecting; try again in a few seconds",
                retry_after=RETRY_NEGOTIATING_S,
            )
        self.gateway.check_capacity()
        call_id = str(uuid.uuid4())
        peer = BrowserPhonePeer(
            on_digit=functools.partial(self._digit, call_id),
            on_connected=functools.partial(self._connected, call_id, destination),
            on_closed=functools.partial(self._closed, call_id),
            connect_timeout_s=self.connect_timeout_s,
        )
        try:
            self.gateway.open_call(call_id, peer)
        except DialRefused:
            await peer.leave()
            raise
        try:
            answer = await peer.answer(offer_sdp)
        except ValueError as exc:
            self.gateway.end(call_id, f"unusable offer: {exc}")
            raise DialRefused(400, str(exc)) from None
        except BaseException:
            self.gateway.end(call_id, "answering the offer failed")
            raise
        log.info("browser phone call %s: answered the page's offer", call_id)
        return call_id, answer

    def hang_up(self, call_id: str) -> bool:
        """End a browser phone call (DELETE through the control API); False when no such call is live."""
        call = self.gateway.calls.get(call_id)
        if call is None or not isinstance(call.webrtc, BrowserPhonePeer):
            return False
        return self.gateway.end(call_id, "hung up through the control API")

    def health(self) -> dict[str, int]:
        peers = self._peers()
        return {
            "browser_phones": len(peers),
            "browser_phones_negotiating": sum(1 for peer in peers if not peer.connected),
        }

    # -- the peer's events ----------------------------------------------------------------------------------------

    def _connected(self, call_id: str, destination: tuple[str, int]) -> None:
        call = self.gateway.calls.get(call_id)
        if call is None or call.leg_id is not None:
            return
        log.info("browser phone call %s: connected; dialling in to %s", call_id, self.dial_in_uri)
        self.gateway.place_leg(
            call,
            self.dial_in_uri,
            destination,
            from_uri=f"sip:{CALLER_USER}@{self.gateway.settings.contact_host}",
            from_display=CALLER_DISPLAY,
        )

    def _closed(self, call_id: str) -> None:
        call = self.gateway.calls.get(call_id)
        if call is not None and isinstance(call.webrtc, BrowserPhonePeer):
            self.gateway.end(call_id, call.webrtc.end_reason or "the browser hung up")

    def _digit(self, call_id: str, digit: str) -> None:
        call = self.gateway.calls.get(call_id)
        if call is None or call.rtp is None:
            log.info("browser phone call %s: digit before the engine answered; dropped", call_id)
            return
        try:
            call.rtp.send_dtmf(digit, time.monotonic())
        except DtmfUnavailable:
            log.warning("browser phone call %s: the engine's answer has no telephone-event; digit dropped", call_id)
            return
        self.digits_sent += 1
