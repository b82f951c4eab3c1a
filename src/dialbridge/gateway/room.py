"""The gateway as one participant of an embedded room: its signalling socket and its WebRTC audio peers.

It joins exactly as a browser does (`engine/rooms/signalling.py`'s protocol over `/rt/signalling`, the participant
token offered as the subprotocol ``bearer.<token>``), publishes one audio stream (what the phone side says), and
subscribes to the audio of every other stream in the room. Media goes peer-to-peer as between browsers: a subscriber
offers (receive-only), the publisher answers. aiortc gathers all its candidates before an offer or answer is set,
so the gateway never trickles; the browsers do, and their candidates are added as they come.

What the room says is mixed here, once per media tick, by the caller (`take_mix`): each subscribed stream keeps its
own bounded 8 kHz buffer (`InboundAudio`), so a stalled browser costs its own audio, never the others'. What the
phone side says is pushed as it arrives (`hear`) into one paced track, relayed to every browser that subscribes.

Rules:
- joined once `connected` arrives and our stream is `published`; `join` fails (RoomJoinFailed) otherwise, within
  its timeout, and leaves nothing open;
- a stream of another connection with audio is subscribed once, and its peer closed when the stream goes;
- the participant is over when the socket closes (force-disconnected by the server, or the room went away) or
  `leave()` is called; `on_over` is called once with the reason, except after `leave()`;
- `browsers` counts the connections that are not SIP participants (their token data says ``"sip": true``): the
  bridge leaves when it falls to zero after having been positive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp

from dialbridge.engine.rooms.signalling import CLOSE_BAD_TOKEN, MAX_MESSAGE_CHARS, SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX
from dialbridge.gateway.webrtc import (
    FRAME_SAMPLES,
    InboundAudio,
    OpusPackets,
    PacedAudioTrack,
    decode_on_arrival,
    install_loopback_fallback,
    negotiated_audio_codec,
    read_audio,
)
from dialbridge.tokens import is_sip_participant

log = logging.getLogger(__name__)

KEEPALIVE_S: Final = 15.0  # the server drops a socket silent for 45 s
#: Peers (subscriptions plus browsers subscribed to us) one participant holds at most: a room holds 32 connections.
MAX_PEERS: Final = 64
_INT16_MIN: Final = -32768
_INT16_MAX: Final = 32767


@dataclass(eq=False)
class _Publication:
    """Our stream sent to one subscriber. Its candidates wait for `described`: the subscriber's offer applied."""

    peer: RTCPeerConnection
    described: asyncio.Event = field(default_factory=asyncio.Event)


class RoomJoinFailed(RuntimeError):
    """The room's signalling refused the participant or did not answer in time; the message says which.
    `bad_token`: the room refused the participant's token (rather than being unreachable, full, ...)."""

    def __init__(self, message: str, *, bad_token: bool = False) -> None:
        super().__init__(message)
        self.bad_token = bad_token


@dataclass(eq=False)
class _Subscription:
    stream_id: str
    connection_id: str
    peer: RTCPeerConnection
    audio: InboundAudio = field(default_factory=InboundAudio)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class RoomParticipant:
    #: Decode each subscribed packet as it arrives, straight into its `InboundAudio` (`decode_on_arrival`). A
    #: participant that wants the frames a browser would decode (the bench's browsers) keeps aiortc's own path.
    decodes_on_arrival: ClassVar[bool] = True

    def __init__(
        self,
        *,
        signalling_url: str,
        session_id: str,
        token: str,
        name: str,
        on_over: Callable[[str], None],
        on_browsers_changed: Callable[[int], None] | None = None,
    ) -> None:
        self.signalling_url = signalling_url
        self.session_id = session_id
        self.name = name
        self._token = token
        self._on_over = on_over
        self._on_browsers_changed = on_browsers_changed
        self.connection_id: str | None = None
        self.stream_id: str | None = None
        self._socket: Any = None
        self._connections: dict[str, str] = {}  # connection id -> its data (others only)
        self._subscriptions: dict[str, _Subscription] = {}  # stream id -> our receive-only peer
        self._publishing: dict[str, _Publication] = {}  # subscriber connection id -> our stream sent to it
        self._outbound = PacedAudioTrack()
        self._relay = MediaRelay()
        self._packets: OpusPackets | None = None  # the bridge's audio encoded once, made with the first Opus peer
        self._packet_relay = MediaRelay()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._published = asyncio.Event()
        self._over = False
        self._left = False
        self._mix = np.zeros(FRAME_SAMPLES, dtype=np.int32)

    # --- public ------------------------------------------------------------------------------------------------

    @property
    def browsers(self) -> int:
        return sum(1 for data in self._connections.values() if not is_sip_participant(data))

    @property
    def peer_count(self) -> int:
        return self._peer_count()

    @property
    def over(self) -> bool:
        return self._over

    async def join(self, timeout_s: float = 10.0) -> None:
        """Connect, publish, and return once the stream exists. Raises RoomJoinFailed (everything closed)."""
        install_loopback_fallback()
        url = f"{self.signalling_url}?sessionId={self.session_id}"
        try:
            async with asyncio.timeout(timeout_s):
                self._socket = await websockets.connect(
                    url,
                    subprotocols=[SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX + self._token],  # type: ignore[list-item]
                    max_size=MAX_MESSAGE_CHARS,
                    open_timeout=timeout_s,
                    ping_interval=None,  # the protocol's own ping keeps the server's idle timer happy
                )
                self._reader = asyncio.get_running_loop().create_task(self._read())
                await self._published.wait()
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if not self._over:
                self._spawn(self._keepalive())
                return
            failure = "the room closed the connection"
        reason = self._close_reason() or failure
        bad_token = getattr(self._socket, "close_code", None) == CLOSE_BAD_TOKEN
        await self.leave()
        raise RoomJoinFailed(f"could not join the room's session {self.session_id}: {reason}", bad_token=bad_token)

    def hear(self, samples: npt.NDArray[np.int16]) -> None:
        """One frame of what the phone side said, for the room to hear."""
        if not self._over:
            self._outbound.push(samples)

    def take_mix(self) -> npt.NDArray[np.int16] | None:
        """One tick of everything the room's other streams said, mixed; None when none has audio to play."""
        mix = self._mix
        mix.fill(0)
        heard = False
        for subscription in self._subscriptions.values():
            frame = subscription.audio.take_frame()
            if frame is not None:
                mix += frame
                heard = True
        if not heard:
            return None
        return np.clip(mix, _INT16_MIN, _INT16_MAX).astype(np.int16)

    async def leave(self) -> None:
        """Close the socket and every peer; idempotent. `on_over` is not called for a leave we chose."""
        self._left = True
        self._over = True
        self._outbound.stop()
        socket, self._socket = self._socket, None
        if socket is not None:
            with contextlib.suppress(Exception):
                await socket.close()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        if self._reader is not None and self._reader is not current:
            tasks.append(self._reader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        peers = [s.peer for s in self._subscriptions.values()] + [p.peer for p in self._publishing.values()]
        self._subscriptions.clear()
        self._publishing.clear()
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)

    # --- signalling ----------------------------------------------------------------------------------------------

    def _close_reason(self) -> str | None:
        socket = self._socket
        close = getattr(socket, "close_reason", None) if socket is not None else None
        code = getattr(socket, "close_code", None) if socket is not None else None
        if close:
            return f"{close} (close code {code})"
        return None

    async def _read(self) -> None:
        reason = "the room's signalling closed"
        try:
            assert self._socket is not None
            async for text in self._socket:
                if isinstance(text, bytes):
                    continue
                try:
                    message = json.loads(text)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._handle(message)
            reason = self._close_reason() or reason
        except websockets.exceptions.ConnectionClosed:
            reason = self._close_reason() or "the room's signalling connection was lost"
        except asyncio.CancelledError:
            return
        self._ended(reason)

    def _ended(self, reason: str) -> None:
        if self._over:
            return
        self._over = True
        self._published.set()  # a join still waiting learns it failed
        if not self._left:
            log.info("gateway participant %s left session %s: %s", self.connection_id, self.session_id, reason)
            try:
                self._on_over(reason)
            except Exception:
                log.exception("gateway: on_over failed")

    def _send(self, message: dict[str, Any]) -> None:
        socket = self._socket
        if socket is None or self._over:
            return
        self._spawn(self._send_now(socket, json.dumps(message)))

    async def _send_now(self, socket: Any, text: str) -> None:
        with contextlib.suppress(websockets.exceptions.WebSocketException, OSError):
            await socket.send(text)

    async def _keepalive(self) -> None:
        while not self._over:
            await asyncio.sleep(KEEPALIVE_S)
            self._send({"type": "ping"})

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connected":
            self.connection_id = str(message.get("connectionId"))
            for connection in message.get("connections") or []:
                self._connection_created(connection)
            for stream in message.get("streams") or []:
                self._stream_created(stream)
            self._send({"type": "publish", "requestId": 1, "name": self.name, "hasAudio": True, "hasVideo": False})
        elif kind == "published":
            stream = message.get("stream") or {}
            self.stream_id = str(stream.get("streamId"))
            self._published.set()
        elif kind == "connectionCreated":
            self._connection_created(message.get("connection") or {})
        elif kind == "connectionDestroyed":
            self._connection_destroyed(str(message.get("connectionId")))
        elif kind == "streamCreated":
            self._stream_created(message.get("stream") or {})
        elif kind == "streamDestroyed":
            self._drop_subscription(str(message.get("streamId")))
        elif kind == "signal":
            self._spawn(self._signal(message))
        elif kind == "sessionDisconnected":
            self._ended(f"removed from the room ({message.get('reason')})")
        elif kind == "error":
            log.warning("gateway: the room's signalling said: %s", message.get("message"))

    def _connection_created(self, connection: dict[str, Any]) -> None:
        connection_id = connection.get("connectionId")
        if not isinstance(connection_id, str) or connection_id == self.connection_id:
            return
        before = self.browsers
        self._connections[connection_id] = str(connection.get("data") or "")
        self._browsers_changed(before)

    def _connection_destroyed(self, connection_id: str) -> None:
        before = self.browsers
        self._connections.pop(connection_id, None)
        publication = self._publishing.pop(connection_id, None)
        if publication is not None:
            self._spawn(publication.peer.close())
        for stream_id, subscription in list(self._subscriptions.items()):
            if subscription.connection_id == connection_id:
                self._drop_subscription(stream_id)
        self._browsers_changed(before)

    def _browsers_changed(self, before: int) -> None:
        after = self.browsers
        if after != before and self._on_browsers_changed is not None:
            try:
                self._on_browsers_changed(after)
            except Exception:
                log.exception("gateway: on_browsers_changed failed")

    def _stream_created(self, stream: dict[str, Any]) -> None:
        stream_id = stream.get("streamId")
        owner = stream.get("connectionId")
        if not isinstance(stream_id, str) or not isinstance(owner, str) or owner == self.connection_id:
            return
        if not stream.get("hasAudio") or stream_id in self._subscriptions or self._peer_count() >= MAX_PEERS:
            return
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        subscription = _Subscription(stream_id, owner, peer)
        self._subscriptions[stream_id] = subscription
        peer.on("track", lambda track: self._spawn(self._read_audio(subscription, track)))
        self._spawn(self._offer(subscription))

    def _drop_subscription(self, stream_id: str) -> None:
        subscription = self._subscriptions.pop(stream_id, None)
        if subscription is not None:
            self._spawn(subscription.peer.close())

    def _peer_count(self) -> int:
        return len(self._subscriptions) + len(self._publishing)

    async def _offer(self, subscription: _Subscription) -> None:
        peer = subscription.peer
        peer.addTransceiver("audio", direction="recvonly")
        if self.decodes_on_arrival:
            decode_on_arrival(peer, subscription.audio)
        await peer.setLocalDescription(await peer.createOffer())
        description = peer.localDescription
        self._send(
            {
                "type": "signal",
                "to": subscription.connection_id,
                "streamId": subscription.stream_id,
                "kind": "offer",
                "data": {"type": "offer", "sdp": description.sdp},
            }
        )

    async def _read_audio(self, subscription: _Subscription, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            wanted = lambda: subscription.stream_id in self._subscriptions  # noqa: E731
            await read_audio(track, subscription.audio, wanted, f"gateway stream {subscription.stream_id}")

    async def _signal(self, message: dict[str, Any]) -> None:
        sender = message.get("from")
        stream_id = message.get("streamId")
        kind = message.get("kind")
        data = message.get("data")
        if not isinstance(sender, str) or not isinstance(data, dict):
            return
        try:
            if stream_id == self.stream_id:  # about our own stream: from a browser subscribing to it
                if kind == "offer":
                    await self._answer(sender, data)
                elif kind == "bye":
                    publication = self._publishing.pop(sender, None)
                    if publication is not None:
                        await publication.peer.close()
                elif kind == "candidate" and sender in self._publishing:
                    publication = self._publishing[sender]
                    await publication.described.wait()
                    if self._publishing.get(sender) is publication:  # not closed or replaced meanwhile
                        await _add_candidate(publication.peer, data)
                return
            subscription = self._subscriptions.get(str(stream_id))
            if subscription is None or subscription.connection_id != sender:
                return
            if kind == "answer":
                sdp = data.get("sdp")
                if isinstance(sdp, str):
                    await subscription.peer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
                    subscription.answered.set()
            elif kind == "candidate":
                await subscription.answered.wait()
                await _add_candidate(subscription.peer, data)
        except (ValueError, KeyError, TypeError) as exc:  # a peer's malformed SDP or candidate costs that peer only
            log.info("gateway: ignored a bad %s signal from %s: %s", kind, sender, exc)
        except Exception:
            log.exception("gateway: a %s signal from %s failed", kind, sender)

    async def _answer(self, sender: str, data: dict[str, Any]) -> None:
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or len(sdp) > MAX_MESSAGE_CHARS:
            return
        previous = self._publishing.pop(sender, None)
        publication = None
        if sender in self._connections and self._peer_count() < MAX_PEERS:
            # Registered before the first await: the candidates that follow the offer find it, and wait for it.
            publication = self._publishing[sender] = _Publication(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        if previous is not None:
            await previous.peer.close()
        if publication is None:
            return
        peer = publication.peer
        try:
            try:
                await peer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            finally:
                publication.described.set()  # a failed offer releases its waiting candidates too (they find it gone)
            # The offer's receive-only audio transceiver takes our track (matched by kind, as a browser's does):
            # the audio encoded once for every browser that negotiates Opus (all of them, in practice), frames
            # for aiortc to encode otherwise. The answer picks the offer's first codec aiortc has.
            rtp_sender = peer.addTrack(self._packets_proxy())
            await peer.setLocalDescription(await peer.createAnswer())
            if negotiated_audio_codec(peer.localDescription.sdp) != "opus":
                rtp_sender.track.stop()
                rtp_sender.replaceTrack(self._relay.subscribe(self._outbound, buffered=False))
        except BaseException:
            if self._publishing.get(sender) is publication:
                del self._publishing[sender]
            await asyncio.shield(peer.close())
            raise
        answer = peer.localDescription
        self._send(
            {
                "type": "signal",
                "to": sender,
                "streamId": self.stream_id,
                "kind": "answer",
                "data": {"type": "answer", "sdp": answer.sdp},
            }
        )

    def _packets_proxy(self) -> MediaStreamTrack:
        if self._packets is None:
            self._packets = OpusPackets(self._relay.subscribe(self._outbound, buffered=False))
        return self._packet_relay.subscribe(self._packets, buffered=False)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _add_candidate(peer: RTCPeerConnection, data: dict[str, Any]) -> None:
    text = data.get("candidate")
    if not isinstance(text, str) or not text.strip():
        return  # end of candidates: aiortc needs nothing
    candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else 0
    await peer.addIceCandidate(candidate)
