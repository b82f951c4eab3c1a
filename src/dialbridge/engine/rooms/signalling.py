"""Signalling state of one embedded video session, sans-I/O: messages in, messages to deliver out.

Protocol (JSON text frames over the WebSocket; every message is an object with a "type"):
  client → server
    publish   {requestId?, name?, hasAudio, hasVideo, videoType?} → "published" to it, "streamCreated" to others
    unpublish {streamId}                                           → "streamDestroyed" (reason "unpublished") to all
    signal    {to, streamId, kind: offer|answer|candidate|bye, data} → relayed to `to` with `from` set by the server
    ping      {}                                                   → "pong" (the client's keepalive)
  server → client
    connected {connectionId, sessionId, connections: [connection], streams: [stream]}  (first message after joining)
    connectionCreated {connection} · connectionDestroyed {connectionId, reason}
    streamCreated {stream} · streamDestroyed {streamId, reason} · published {requestId, stream}
    signal {from, streamId, kind, data} · sessionDisconnected {reason} · error {code, message, requestId?} · pong
    sessionSignal {signalType, data, from: null}   the server's own signal to every member (Vonage's signal REST
                                                   API: the page hears OT's `signal` and `signal:<type>` events)
  connection = {connectionId, data, creationTime}; stream = {streamId, connectionId, name, hasAudio, hasVideo,
  videoType, creationTime}. Media flows peer-to-peer: the subscriber sends the offer to the stream's owner.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

# The handshake: the server selects SUBPROTOCOL; the participant token rides as the offered `bearer.<token>`.
SUBPROTOCOL: Final = "dialbridge.signalling.v1"
TOKEN_PROTOCOL_PREFIX: Final = "bearer."
MAX_MESSAGE_CHARS: Final = 64 * 1024  # an SDP with a few transceivers is ~5-10 kB
MAX_CONNECTIONS_PER_SESSION: Final = 32  # every pair is a peer-to-peer link: a mesh beyond this is unusable anyway
MAX_STREAMS_PER_CONNECTION: Final = 4
MAX_NAME_CHARS: Final = 200
MAX_SIGNAL_TYPE_CHARS: Final = 128  # Vonage's limits for a signal's type and data
MAX_SIGNAL_DATA_CHARS: Final = 8192
SIGNAL_KINDS: Final = frozenset({"offer", "answer", "candidate", "bye"})
VIDEO_TYPES: Final = frozenset({"camera", "screen", "custom"})

# Close codes the shell uses; 4000-4999 are application codes, shown to the browser with the reason.
CLOSE_FORCE_DISCONNECTED: Final = 4000
CLOSE_BAD_TOKEN: Final = 4401
CLOSE_SESSION_FULL: Final = 4403
CLOSE_DUPLICATE_CONNECTION: Final = 4409
CLOSE_IDLE: Final = 4408  # nothing, not even a keepalive, heard for a while
CLOSE_SLOW_CONSUMER: Final = 4413  # too many messages queued unread
CLOSE_UNSUPPORTED_DATA: Final = 1003  # a binary frame

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send `message` to the connection `to`."""

    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close `connection_id`'s socket after what was delivered to it so far."""

    connection_id: str
    code: int
    reason: str


Output = Deliver | Hangup


class JoinRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class _Stream:
    stream_id: str
    connection_id: str
    name: str
    has_audio: bool
    has_video: bool
    video_type: str
    creation_time: int

    def to_json(self) -> Message:
        return {
            "streamId": self.stream_id,
            "connectionId": self.connection_id,
            "name": self.name,
            "hasAudio": self.has_audio,
            "hasVideo": self.has_video,
            "videoType": self.video_type,
            "creationTime": self.creation_time,
        }


@dataclass(slots=True)
class _Connection:
    connection_id: str
    data: str
    may_publish: bool
    creation_time: int
    stream_ids: list[str] = field(default_factory=list)

    def to_json(self) -> Message:
        return {"connectionId": self.connection_id, "data": self.data, "creationTime": self.creation_time}


class BadMessage(ValueError):
    pass


def _new_stream_id() -> str:
    return "st_" + secrets.token_urlsafe(12)


class SignallingSession:
    """The members and streams of one video session, and what each member must be told.

    Rules (every transition is in the methods below, nowhere else):
    - A connection is a member from `join` until `leave` or `force_disconnect`; each other member hears
      connectionCreated once and connectionDestroyed once, in that order. Joining twice with one id is refused.
    - A stream exists from `publish` until `unpublish` or its owner leaves; each other member hears streamCreated
      once and streamDestroyed once, and a leaving member's streamDestroyed comes before its connectionDestroyed.
    - A signal goes from its sender to one other current member, about a stream that one of the two owns; the
      server writes `from`, and a message that names another sender is refused.
    - A message that breaks a rule is answered with an `error` to its sender and changes nothing.
    - A server signal reaches every current member once (`server_signal`), with `from` null; members cannot send
      one (there is no client message for it), and one over Vonage's limits is refused with ValueError.
    """

    def __init__(self, session_id: str, *, new_stream_id: Callable[[], str] = _new_stream_id) -> None:
        self.session_id = session_id
        self._new_stream_id = new_stream_id
        self._connections: dict[str, _Connection] = {}
        self._streams: dict[str, _Stream] = {}

    @property
    def connection_ids(self) -> list[str]:
        return list(self._connections)

    def connection_data(self) -> list[tuple[str, str]]:
        return [(c.connection_id, c.data) for c in self._connections.values()]

    @property
    def is_empty(self) -> bool:
        return not self._connections

    def data_of(self, connection_id: str) -> str | None:
        """The connection's token data, or None when it is not a member."""
        found = self._connections.get(connection_id)
        return found.data if found else None

    def stream_ids_of(self, connection_id: str) -> list[str]:
        found = self._connections.get(connection_id)
        return list(found.stream_ids) if found else []

    # --- transitions --------------------------------------------------------------------------------------

    def join(self, connection_id: str, *, data: str, may_publish: bool, now: float) -> list[Output]:
        if connection_id in self._connections:
            raise JoinRefused(
                CLOSE_DUPLICATE_CONNECTION,
                "this participant is already connected in another tab; close it, or reload for a new token",
            )
        if len(self._connections) >= MAX_CONNECTIONS_PER_SESSION:
            raise JoinRefused(CLOSE_SESSION_FULL, f"the room is full ({MAX_CONNECTIONS_PER_SESSION} participants)")
        joining = _Connection(connection_id, data, may_publish, _ms(now))
        outputs: list[Output] = [
            Deliver(
                connection_id,
                {
                    "type": "connected",
                    "connectionId": connection_id,
                    "sessionId": self.session_id,
                    "connections": [c.to_json() for c in self._connections.values()],
                    "streams": [s.to_json() for s in self._streams.values()],
                },
            )
        ]
        created = {"type": "connectionCreated", "connection": joining.to_json()}
        outputs.extend(Deliver(other, created) for other in self._connections)
        self._connections[connection_id] = joining
        return outputs

    def leave(self, connection_id: str, *, reason: str = "clientDisconnected") -> list[Output]:
        """The connection's socket closed (or the server ended it). Leaving twice is harmless."""
        leaving = self._connections.pop(connection_id, None)
        if leaving is None:
            return []
        outputs: list[Output] = []
        for stream_id in leaving.stream_ids:
            del self._streams[stream_id]
            outputs.extend(self._tell_members({"type": "streamDestroyed", "streamId": stream_id, "reason": reason}))
        outputs.extend(
            self._tell_members({"type": "connectionDestroyed", "connectionId": connection_id, "reason": reason})
        )
        return outputs

    def force_disconnect(self, connection_id: str) -> list[Output]:
        """The server removes a member: it hears sessionDisconnected, then its socket is closed."""
        if connection_id not in self._connections:
            return []
        reason = "forceDisconnected"
        return [
            Deliver(connection_id, {"type": "sessionDisconnected", "reason": reason}),
            Hangup(connection_id, CLOSE_FORCE_DISCONNECTED, "disconnected by the server"),
            *self.leave(connection_id, reason=reason),
        ]

    def server_signal(self, signal_type: str, data: str) -> list[Output]:
        """The server's signal to every member, as Vonage's `POST /session/{id}/signal` sends one."""
        if not signal_type or len(signal_type) > MAX_SIGNAL_TYPE_CHARS:
            raise ValueError(f"a signal's type must be 1 to {MAX_SIGNAL_TYPE_CHARS} characters")
        if len(data) > MAX_SIGNAL_DATA_CHARS:
            raise ValueError(f"a signal's data is limited to {MAX_SIGNAL_DATA_CHARS} characters")
        return list(
            self._tell_members({"type": "sessionSignal", "signalType": signal_type, "data": data, "from": None})
        )

    def receive(self, connection_id: str, text: str, *, now: float) -> list[Output]:
        """One text frame from a member. Malformed or forbidden messages yield an error to the sender."""
        sender = self._connections.get(connection_id)
        if sender is None:
            return []
        request_id: object = None
        try:
            message = _parse(text)
            request_id = message.get("requestId")
            kind = message["type"]
            if kind == "publish":
                return self._publish(sender, message, now)
            if kind == "unpublish":
                return self._unpublish(sender, message)
            if kind == "signal":
                return self._signal(sender, message)
            if kind == "ping":
                return [Deliver(connection_id, {"type": "pong"})]
            raise BadMessage(f"unknown message type {kind!r}; expected publish, unpublish, signal or ping")
        except BadMessage as exc:
            error: Message = {"type": "error", "code": "bad_message", "message": str(exc)}
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                error["requestId"] = request_id
            return [Deliver(connection_id, error)]

    # --- message handlers (called only from `receive`) ----------------------------------------------------

    def _publish(self, sender: _Connection, message: Message, now: float) -> list[Output]:
        if not sender.may_publish:
            raise BadMessage("this participant's token does not allow publishing")
        if len(sender.stream_ids) >= MAX_STREAMS_PER_CONNECTION:
            raise BadMessage(f"a participant may publish at most {MAX_STREAMS_PER_CONNECTION} streams")
        name = _optional_str(message, "name", "", MAX_NAME_CHARS)
        video_type = _optional_str(message, "videoType", "camera", 16)
        if video_type not in VIDEO_TYPES:
            raise BadMessage(f"videoType must be one of {sorted(VIDEO_TYPES)}")
        stream = _Stream(
            stream_id=self._new_stream_id(),
            connection_id=sender.connection_id,
            name=name,
            has_audio=_bool(message, "hasAudio"),
            has_video=_bool(message, "hasVideo"),
            video_type=video_type,
            creation_time=_ms(now),
        )
        self._streams[stream.stream_id] = stream
        sender.stream_ids.append(stream.stream_id)
        reply = {"type": "published", "requestId": message.get("requestId"), "stream": stream.to_json()}
        created = {"type": "streamCreated", "stream": stream.to_json()}
        return [Deliver(sender.connection_id, reply), *self._tell_members(created, besides=sender.connection_id)]

    def _unpublish(self, sender: _Connection, message: Message) -> list[Output]:
        stream_id = _str(message, "streamId")
        if stream_id not in sender.stream_ids:
            raise BadMessage(f"no stream {stream_id!r} published by this connection")
        sender.stream_ids.remove(stream_id)
        del self._streams[stream_id]
        return list(self._tell_members({"type": "streamDestroyed", "streamId": stream_id, "reason": "unpublished"}))

    def _signal(self, sender: _Connection, message: Message) -> list[Output]:
        claimed_from = message.get("from", sender.connection_id)
        if claimed_from != sender.connection_id:
            raise BadMessage("a signal's sender is the connection it arrives on; 'from' may not name another")
        to = _str(message, "to")
        stream_id = _str(message, "streamId")
        kind = _str(message, "kind")
        if kind not in SIGNAL_KINDS:
            raise BadMessage(f"signal kind must be one of {sorted(SIGNAL_KINDS)}")
        data = message.get("data", {})
        if not isinstance(data, dict):
            raise BadMessage("signal data must be an object")
        if to == sender.connection_id or to not in self._connections:
            raise BadMessage(f"no other connection {to!r} in this session")
        stream = self._streams.get(stream_id)
        if stream is None or stream.connection_id not in (sender.connection_id, to):
            raise BadMessage(f"stream {stream_id!r} is not published by either end of this signal")
        relayed = {"type": "signal", "from": sender.connection_id, "streamId": stream_id, "kind": kind, "data": data}
        return [Deliver(to, relayed)]

    def _tell_members(self, message: Message, *, besides: str | None = None) -> Iterator[Deliver]:
        return (Deliver(member, message) for member in self._connections if member != besides)


def _ms(now: float) -> int:
    return int(now * 1000)


def _parse(text: str) -> Message:
    if len(text) > MAX_MESSAGE_CHARS:
        raise BadMessage(f"message longer than {MAX_MESSAGE_CHARS} characters")
    try:
        message = json.loads(text)
    except ValueError:
        raise BadMessage("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage('message must be a JSON object with a string "type"')
    return message


def _str(message: Message, key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise BadMessage(f"{key!r} must be a non-empty string of at most 200 characters")
    return value


def _optional_str(message: Message, key: str, default: str, limit: int) -> str:
    value = message.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > limit:
        raise BadMessage(f"{key!r} must be a string of at most {limit} characters")
    return value


def _bool(message: Message, key: str) -> bool:
    value = message.get(key, True)
    if not isinstance(value, bool):
        raise BadMessage(f"{key!r} must be true or false")
    return value
