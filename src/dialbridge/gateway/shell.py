"""The gateway's asyncio shell: its SIP socket, its RTP ports, one 20 ms media clock, and its calls.

A call (`GatewayCall`) is one WebRTC side (`WebRtcSide`: a room participant, `room.py`, or a browser phone's peer,
`phone.py`) joined to one outbound SIP leg. Each 20 ms tick moves one frame of what the WebRTC side said (the
room's streams mixed, or the browser phone's microphone), G.711-encoded, into the leg's RTP session. The other way
runs on no clock of ours: each frame the leg's packets complete is decoded and given to the WebRTC side as the
packet arrives (`JitterBuffer`'s release on arrival). The browsers' own jitter buffers smooth it; playing it out on
our tick would add a buffer's delay plus up to a tick, by a phase against the far end's clock that is chance (it
cost issue 15's latency goal 20 ms in some runs). The SIP agent and the RTP sessions are sans-I/O; this file only
moves their bytes and keeps the clock.

A call ends, once, from whichever side ends first: the SIP leg fails or ends (the participant leaves the room), the
participant is removed from the room or the room's last browser leaves, or the browser phone hangs up (the leg is
hung up: CANCEL or BYE), or the gateway stops (every leg is hung up, and their BYEs get a moment to be answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from dialbridge import sdp
from dialbridge.gateway.events import CREATED, SipCallReporter, call_state, callback, event_name
from dialbridge.gateway.events import CallState as LegState
from dialbridge.gateway.room import RoomJoinFailed, RoomParticipant
from dialbridge.media import g711
from dialbridge.rtp.session import RtpSession
from dialbridge.sip import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    DigestCredentials,
    SipAgent,
    SipUri,
)
from dialbridge.sip.resolver import SipUdpSender, Unreachable
from dialbridge.sip.tcp_client import SipTcpClient, TcpUnavailable
from dialbridge.udp_ports import NoMediaPorts, UdpMediaPorts

log = logging.getLogger(__name__)

TICK_S: Final = 0.020
MAX_BEHIND_S: Final = 0.100
STOP_GRACE_S: Final = 2.0  # how long stopping waits for the BYEs it sent to be answered
FRAME_SAMPLES: Final = 160
Address = tuple[str, int]
_SILENT_FRAMES: Final = {codec: bytes([byte]) * FRAME_SAMPLES for codec, byte in g711.SILENCE.items()}


class DialRefused(Exception):
    """The dial request cannot be placed; `status` is the HTTP status the control API answers with, `retry_after`
    (seconds) its Retry-After when waiting helps."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


RETRY_FULL_S: Final = 30  # a full gateway frees a line when some call ends: minutes, typically


class WebRtcSide(Protocol):
    """The WebRTC side of a call, as the media tick, the SIP leg's arrivals and the call's end see it."""

    @property
    def peer_count(self) -> int: ...

    def take_mix(self) -> npt.NDArray[np.int16] | None:
        """One tick (160 samples) of what this side said, for the SIP leg; None for silence."""
        ...

    def hear(self, samples: npt.NDArray[np.int16]) -> None:
        """One frame (160 samples) of what the SIP leg sent, as the packet completing it arrives."""
        ...

    async def leave(self) -> None:
        """Close everything this side holds; idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class DialRequest:
    """Vonage Video's SIP dial: join `session_id` with `token` and call `uri`."""

    session_id: str
    token: str
    uri: str
    from_: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    name: str = "Phone"


@dataclass(frozen=True, slots=True)
class DialResult:
    call_id: str
    connection_id: str
    stream_id: str


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    sip_host: str
    sip_port: int
    contact_host: str
    rtp_ports: tuple[int, int]
    signalling_url: str
    max_calls: int = 50
    join_timeout_s: float = 10.0
    #: The voice engine's dial-in, which browser phones call (None: this gateway takes no browser phone calls).
    dial_in_uri: str | None = None
    ring_timeout_s: float | None = 45.0  # DIALBRIDGE_DIAL_OUT_RING_S: no answer by then ends the call as no_answer
    project_id: str = ""  # the application id the control API serves, named in the callbacks as Vonage names it


@dataclass(eq=False)
class GatewayCall:
    call_id: str
    webrtc: WebRtcSide
    rtp_port: int
    leg_id: str | None = None
    state: str = "dialling"  # dialling | ringing | answered | ending | ended
    rtp: RtpSession | None = None
    codec: str = "PCMU"
    end_reason: str | None = None
    had_browsers: bool = False  # the bridge leaves when the last one leaves, not when it joins an empty room
    headers: dict[str, str] = field(default_factory=dict)  # the X- headers dialled with, echoed in the callbacks
    transport: str = "udp"
    destination: Address = ("", 0)


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        rng: random.Random | None = None,
        reporter: SipCallReporter | None = None,
    ) -> None:
        self.settings = settings
        self.reporter = reporter  # tells the app how each dial request's SIP leg goes (session-monitoring callbacks)
        self._rng = rng or random.SystemRandom()
        self.agent = SipAgent(
            contact_host=settings.contact_host, contact_port=settings.sip_port, user_agent="dialbridge-gateway"
        )
        self.calls: dict[str, GatewayCall] = {}
        self._by_leg: dict[str, GatewayCall] = {}
        self._by_port: dict[int, GatewayCall] = {}
        self._sip: asyncio.DatagramTransport | None = None
        self._sip_udp: SipUdpSender | None = None  # sends on `_sip` to peer-named destinations, names resolved
        self._tcp = SipTcpClient(
            self._tcp_received,
            self._tcp_lost,
            settings.max_calls,
            label="gateway",
            limit_setting="DIALBRIDGE_GATEWAY_MAX_CALLS",
        )
        self._media: UdpMediaPorts | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._legs_gone = asyncio.Event()
        self._session_ids = self._rng.getrandbits(31)
        self.late_ticks = 0
        self.calls_placed = 0
        self.calls_failed = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.settings.sip_host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipUdp(self), local_addr=(self.settings.sip_host, self.settings.sip_port), family=family
        )
        self._sip = transport
        # A destination that cannot be reached is the same transport error as a lost TCP connection.
        self._sip_udp = SipUdpSender(transport.sendto, family, self._tcp_lost, label="gateway")
        self._media = UdpMediaPorts(
            loop,
            self.settings.sip_host,
            *self.settings.rtp_ports,
            self._rtp_received,
            self._rtcp_received,
            setting="DIALBRIDGE_GATEWAY_RTP_PORTS",
        )
        self._tick_task = loop.create_task(self._clock(), name="gateway-media-clock")

    async def stop(self) -> None:
        """Hang up every call (BYE or CANCEL), give the answers a moment, then close everything."""
        for call in list(self.calls.values()):
            self._hang_up(call, "the gateway is stopping")
        self._pump()
        if self._by_leg:  # the BYEs' answers arrive on the SIP socket; each releases its call
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._legs_gone.wait(), STOP_GRACE_S)
        for call in list(self.calls.values()):
            self._finish(call, call.end_reason or "the gateway stopped")
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self._media is not None:
            self._media.close_all()
        if self._sip is not None:
            self._sip.close()
        self._tcp.close_all()
        if self.reporter is not None:
            await self.reporter.flush(STOP_GRACE_S)

    # --- the control API's operations ---------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """DialRefused 429 when the gateway holds `max_calls` calls of either kind."""
        if len(self.calls) >= self.settings.max_calls:
            raise DialRefused(
                429,
                f"the gateway holds {self.settings.max_calls} calls (DIALBRIDGE_GATEWAY_MAX_CALLS)",
                retry_after=RETRY_FULL_S,
            )

    async def dial(self, request: DialRequest) -> DialResult:
        self.check_capacity()
        try:
            target = SipUri.parse(request.uri)
        except ValueError as exc:
            raise DialRefused(400, f"sip.uri {request.uri!r} is not a SIP URI: {exc}") from None
        if target.scheme != "sip":
            raise DialRefused(400, "sip.uri must be a sip: URI (this gateway has no TLS/SRTP: sips is refused)")
        transport = (target.transport or "udp").lower()
        if transport not in ("udp", "tcp"):
            raise DialRefused(400, f"transport={transport} is not supported: the gateway calls over UDP or TCP")
        destination = await self.resolve(target.host, target.port or 5060)
        if transport == "tcp":
            try:
                await self._tcp.connect(destination)
            except TcpUnavailable as exc:
                raise DialRefused(502, str(exc)) from None
        call_id = str(uuid.uuid4())
        room = RoomParticipant(
            signalling_url=self.settings.signalling_url,
            session_id=request.session_id,
            token=request.token,
            name=request.name,
            on_over=lambda reason: self._room_over(call_id, reason),
            on_browsers_changed=lambda count: self._browsers_changed(call_id, count),
        )
        call = self.open_call(call_id, room)
        call.transport, call.destination = transport, destination
        try:
            await room.join(self.settings.join_timeout_s)
        except RoomJoinFailed as exc:
            self._release(call)
            raise DialRefused(403 if exc.bad_token else 502, str(exc)) from None
        if call.state == "ended":  # the room went away while joining
            raise DialRefused(409, f"the room ended the participant while it joined: {call.end_reason}")
        credentials = (
            DigestCredentials(request.username, request.password) if request.username and request.password else None
        )
        self.place_leg(
            call,
            request.uri,
            destination,
            from_uri=_from_uri(request.from_, self.settings.contact_host),
            from_display=request.name,
            headers=request.headers,
            credentials=credentials,
        )
        # The URI's user part may be a phone number: the log names the call by its id and the host it goes to only.
        log.info(
            "gateway call %s: dialling %s:%d over %s for session %s",
            call_id,
            target.host,
            target.port or 5060,
            transport,
            request.session_id,
        )
        assert room.connection_id is not None and room.stream_id is not None
        return DialResult(call_id=call_id, connection_id=room.connection_id, stream_id=room.stream_id)

    def open_call(self, call_id: str, webrtc: WebRtcSide) -> GatewayCall:
        """A call of the gateway from now on (counted, its RTP port open), its SIP leg not placed yet.
        DialRefused 503 when no RTP port is free."""
        assert self._media is not None
        try:
            rtp_port = self._media.open()
        except NoMediaPorts as exc:
            raise DialRefused(503, str(exc), retry_after=RETRY_FULL_S) from None
        call = GatewayCall(call_id=call_id, webrtc=webrtc, rtp_port=rtp_port)
        self.calls[call_id] = call
        self._by_port[rtp_port] = call
        return call

    def place_leg(
        self,
        call: GatewayCall,
        uri: str,
        destination: Address,
        *,
        from_uri: str,
        from_display: str,
        headers: dict[str, str] | None = None,
        credentials: DigestCredentials | None = None,
    ) -> None:
        """INVITE `uri` for a call whose WebRTC side is ready (over `call.transport`); the answer's SDP starts its
        media."""
        self._session_ids += 1
        offer = sdp.make_offer(
            local_host=self.settings.contact_host,
            local_port=call.rtp_port,
            session_id=self._session_ids,
            session_version=1,
        )
        leg_id = self.agent.dial(
            uri,
            destination=destination,
            transport=call.transport,
            sdp=offer,
            now=time.monotonic(),
            from_uri=from_uri,
            from_display=from_display,
            headers=headers or {},
            credentials=credentials,
            ring_timeout=self.settings.ring_timeout_s,
        )
        call.headers = dict(headers or {})
        call.leg_id = leg_id
        self._by_leg[leg_id] = call
        self._legs_gone.clear()
        self.calls_placed += 1
        self._report(call, CREATED, None)
        self._pump()

    def end(self, call_id: str, reason: str) -> bool:
        """Hang a call up (BYE or CANCEL; at once when no leg was placed). False when no such call is live."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        self._hang_up(call, reason)
        self._pump()
        return True

    def disconnect(self, session_id: str, connection_id: str) -> bool:
        """Vonage's force-disconnect of a SIP connection: hang its call up. False when no such call is live."""
        for call in self.calls.values():
            room = call.webrtc  # only a room participant has a connection; a browser phone has none
            if isinstance(room, RoomParticipant) and (room.session_id, room.connection_id) == (
                session_id,
                connection_id,
            ):
                return self.end(call.call_id, "disconnected through the control API")
        return False

    @property
    def peer_count(self) -> int:
        """WebRTC peers the calls hold (a bridge's per browser, a browser phone's one)."""
        return sum(call.webrtc.peer_count for call in self.calls.values())

    # --- events --------------------------------------------------------------------------------------------------

    def _room_over(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self._hang_up(call, reason)
            self._pump()

    def _browsers_changed(self, call_id: str, count: int) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        if count > 0:
            call.had_browsers = True
        elif call.had_browsers:
            self._hang_up(call, "the room's last browser left")
            self._pump()

    def _hang_up(self, call: GatewayCall, reason: str) -> None:
        if call.state == "ended":
            return
        call.end_reason = call.end_reason or reason
        if call.leg_id is not None and call.leg_id in self._by_leg:
            self.agent.hangup(call.leg_id, time.monotonic())
            call.state = "ending"
        else:
            self._finish(call, reason)

    def _finish(self, call: GatewayCall, reason: str) -> None:
        """The call is over on both sides: leave the room, free the port."""
        if call.state == "ended":
            return
        call.state = "ended"
        call.end_reason = call.end_reason or reason
        log.info("gateway call %s ended: %s", call.call_id, call.end_reason)
        self._release(call)
        self._spawn(call.webrtc.leave())

    def _release(self, call: GatewayCall) -> None:
        call.state = "ended"
        self.calls.pop(call.call_id, None)
        if call.leg_id is not None:
            self._by_leg.pop(call.leg_id, None)
            if not self._by_leg:
                self._legs_gone.set()
        if self._by_port.pop(call.rtp_port, None) is not None and self._media is not None:
            self._media.close(call.rtp_port)
        if call.transport == "tcp" and not any(
            other.transport == "tcp" and other.destination == call.destination for other in self.calls.values()
        ):
            self._tcp.release(call.destination)

    def _on_sip_event(self, event: object) -> None:
        leg_id = getattr(event, "leg_id", None)
        call = self._by_leg.get(leg_id) if isinstance(leg_id, str) else None
        if call is None:
            return
        now = time.monotonic()
        state = call_state(event)
        if state is not None and call.state != "ended":
            self._report(call, event_name(state), state)
        if isinstance(event, CallProgress):
            call.state = "ringing" if call.state == "dialling" else call.state
            if event.sdp:
                self._media_from(call, event.sdp, now)
        elif isinstance(event, CallAnswered):
            if call.state != "ending":
                call.state = "answered"
            if event.sdp:
                self._media_from(call, event.sdp, now)
        elif isinstance(event, CallFailed):
            self.calls_failed += 1
            self._finish(call, f"the call failed: {event.status} {event.reason}")
        elif isinstance(event, CallEnded):
            self._finish(call, f"the SIP call ended ({event.reason})")

    def _media_from(self, call: GatewayCall, description: bytes, now: float) -> None:
        try:
            params = sdp.accept_answer(description)
        except sdp.SdpError as exc:
            log.warning("gateway call %s: unusable SDP from the far end (%s); hanging up", call.call_id, exc)
            self._hang_up(call, f"unusable SDP: {exc}")
            return
        call.codec = params.codec
        if call.rtp is None:
            call.rtp = RtpSession(params, ssrc=self._rng.getrandbits(32), now=now, release_on_arrival=True)
        else:
            call.rtp.update(params, now)

    # --- media -------------------------------------------------------------------------------------------------

    def _rtp_received(self, port: int, data: bytes, source: Address) -> None:
        call = self._by_port.get(port - (port % 2))
        if call is None or call.rtp is None:
            return
        now = time.monotonic()
        call.rtp.receive(data, source, now)
        for payload, _kind in call.rtp.arrived(now):
            if call.state != "ended":
                call.webrtc.hear(g711.decode(call.codec, payload))

    def _rtcp_received(self, port: int, data: bytes, source: Address) -> None:
        call = self._by_port.get(port - (port % 2))
        if call is not None and call.rtp is not None:
            call.rtp.receive_rtcp(data, source, time.monotonic())

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += TICK_S
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > MAX_BEHIND_S:
                self.late_ticks += 1
                next_at = loop.time()  # a long stall: start the schedule again rather than burst to catch up
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("gateway: a media tick failed")

    def _tick(self, now: float) -> None:
        media = self._media
        assert media is not None
        for call in list(self.calls.values()):
            rtp = call.rtp
            if rtp is None or call.state == "ended":
                continue
            mix = call.webrtc.take_mix()
            frame = g711.encode(call.codec, mix) if mix is not None else _SILENT_FRAMES[call.codec]
            destination = rtp.destination
            for datagram in rtp.send(frame, now):
                if destination is not None:
                    media.send(call.rtp_port, datagram, destination)
            report = rtp.rtcp_due(now)
            rtcp_to = rtp.rtcp_destination
            if report is not None and rtcp_to is not None:
                media.send(call.rtp_port + 1, report, rtcp_to)
        deadline = self.agent.next_timer()
        if deadline is not None and deadline <= now:
            self.agent.on_timer(now)
            self._pump()

    # --- SIP ---------------------------------------------------------------------------------------------------

    def sip_received(self, data: bytes, source: Address, transport: str = "udp") -> None:
        self.agent.receive(data, source, time.monotonic(), transport)
        self._pump()

    def _tcp_received(self, data: bytes, source: Address) -> None:
        try:
            self.sip_received(data, source, "tcp")
        except Exception:
            log.exception("gateway: SIP over TCP from %s failed", source)

    def _tcp_lost(self, peer: Address) -> None:
        """The connection to `peer` closed: whatever still used it has failed (CallFailed 503 / CallEnded)."""
        self.agent.transport_failed(peer, time.monotonic())
        self._pump()

    def _report(self, call: GatewayCall, event: str, state: LegState | None) -> None:
        """A session-monitoring callback for a call placed through the control API (a room participant's; a
        browser phone's call is no SIP call of a session)."""
        room = call.webrtc
        if self.reporter is None or not isinstance(room, RoomParticipant):
            return
        self.reporter.report(
            callback(
                event=event,
                project_id=self.settings.project_id,
                session_id=room.session_id,
                call_id=call.call_id,
                connection_id=room.connection_id,
                stream_id=room.stream_id,
                headers=call.headers,
                state=state,
                now=time.time(),
            )
        )

    def _pump(self) -> None:
        """Send what the agent queued and act on its events, until handling them queues nothing more (a BYE)."""
        while True:
            events, outgoing = self.agent.drain()
            if not events and not outgoing:
                return
            for message in outgoing:
                if message.transport == "tcp":
                    if not self._tcp.send(message.destination, message.data):  # it closed: what used it fails
                        self.agent.transport_failed(message.destination, time.monotonic())
                elif self._sip_udp is not None:  # resolved, and a message that cannot be sent costs that message only
                    self._sip_udp.send(message.data, message.destination)
            for event in events:
                try:
                    self._on_sip_event(event)
                except Exception:
                    log.exception("gateway: handling %r failed", event)

    async def resolve(self, host: str, port: int) -> Address:
        """`host:port` as an address the SIP socket can send to (names through the cache the in-dialog requests
        use); DialRefused 502 when it has none."""
        assert self._sip_udp is not None, "the gateway is not started"
        try:
            return await self._sip_udp.address(host, port)
        except Unreachable as exc:
            raise DialRefused(502, str(exc)) from None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def health(self) -> dict[str, Any]:
        return {
            "gateway": "webrtc-sip",
            "calls": len(self.calls),
            "peers": self.peer_count,
            "sip": f"{self.settings.contact_host}:{self.settings.sip_port}",
        }


def _from_uri(from_: str | None, contact_host: str) -> str:
    if not from_:
        return f"sip:gateway@{contact_host}"
    if from_.startswith(("sip:", "sips:", "tel:")):
        return from_
    return f"sip:{from_}" if "@" in from_ else f"sip:{from_}@{contact_host}"


class _SipUdp(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.gateway.sip_received(data, (str(addr[0]), int(addr[1])))
        except Exception:
            log.exception("gateway: a SIP datagram from %s failed", addr[:2])

    def error_received(self, exc: Exception) -> None:
        log.debug("gateway SIP socket: %s", exc)
