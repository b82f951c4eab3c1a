"""Vonage Video through the official `vonage` SDK (application id + private key).

The SDK is blocking (requests), so every call runs in a worker thread. Its HTTP client keeps the request headers in
one dict it mutates per request: not safe across threads, and a JSON `Content-Type` once set stays on later
form-encoded posts (`POST /session/create` then goes out as form data labelled JSON). Each worker thread therefore
gets its own clients, with a separate one for session creation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import NotFoundError
from vonage_video.models import (
    InitiateSipRequest,
    MediaMode,
    SessionOptions,
    SignalData,
    SipAuth,
    SipOptions,
    TokenOptions,
    TokenRole,
)
from vonage_voice.models import TtsStreamOptions

from dialbridge.platforms.base import CallGone, ConnectionGone, PlatformError, SipCall, SipDial
from dialbridge.platforms.vonage_shared import (
    HTTP_TIMEOUT_S,
    SIGNAL,
    SIP_DIAL,
    ParticipantId,
    VonageVideoBase,
    call_vonage,
    token_expiry,
)


@dataclass(frozen=True, slots=True)
class VonageApplication:
    """What the `vonage` SDK adapter is built from: a Vonage application, its hosts, and the browser's SDK."""

    application_id: str
    private_key_pem: str
    api_host: str
    video_host: str
    browser_sdk_url: str
    token_ttl_s: int


class _ClientsPerThread:
    def __init__(self, make: Callable[[], Vonage]) -> None:
        self._make = make
        self._local = threading.local()

    def get(self, purpose: str) -> Vonage:
        clients: dict[str, Vonage] = self._local.__dict__.setdefault("clients", {})
        if purpose not in clients:
            clients[purpose] = self._make()
        return clients[purpose]


class VonageVideo(VonageVideoBase):
    def __init__(self, application: VonageApplication, participant_id: ParticipantId) -> None:
        super().__init__(application.application_id, application, participant_id)

        def make() -> Vonage:
            options = HttpClientOptions(
                api_host=application.api_host, video_host=application.video_host, timeout=HTTP_TIMEOUT_S
            )
            auth = Auth(application_id=application.application_id, private_key=application.private_key_pem)
            return Vonage(auth, options)

        self._clients = _ClientsPerThread(make)
        self._token_client = make()  # tokens are signed locally: no HTTP, no shared header state

    async def create_session(self) -> str:
        def create() -> str:
            session = self._clients.get("sessions").video.create_session(SessionOptions(media_mode=MediaMode.ROUTED))
            return str(session.session_id)

        return await call_vonage("creating a video session at Vonage", create)

    def client_token(self, session_id: str, connection_data: str) -> str:
        options = TokenOptions(
            session_id=session_id,
            role=TokenRole.PUBLISHER,
            connection_data=connection_data,
            exp=token_expiry(self.token_ttl_s),
        )
        token: bytes | str = self._token_client.video.generate_client_token(options)
        return token.decode() if isinstance(token, bytes) else token

    async def dial_sip(self, session_id: str, room_id: str, dial: SipDial, now: float) -> SipCall:
        token = self.sip_token(session_id, dial)
        auth = SipAuth(username=dial.username, password=dial.password) if dial.username and dial.password else None
        request = InitiateSipRequest(
            session_id=session_id,
            token=token,
            sip=SipOptions(uri=dial.uri, from_=dial.from_, headers=dict(dial.headers), auth=auth, secure=dial.secure),
        )
        placed: Any = await call_vonage(SIP_DIAL, lambda: self._clients.get("calls").video.initiate_sip_call(request))
        if not placed.connection_id:
            raise PlatformError(SIP_DIAL, "Vonage's answer names no connection id")
        return SipCall(call_id=str(placed.id or ""), connection_id=placed.connection_id, stream_id=placed.stream_id)

    async def disconnect(self, session_id: str, connection_id: str) -> None:
        what = "disconnecting the SIP connection at Vonage"
        try:
            await call_vonage(
                what, lambda: self._clients.get("calls").video.disconnect_client(session_id, connection_id)
            )
        except PlatformError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise ConnectionGone(what, exc.detail) from exc.__cause__
            raise

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        signal = SignalData(type=signal_type, data=data)
        await call_vonage(SIGNAL, lambda: self._clients.get("signals").video.send_signal(session_id, signal))


class VonageVoice:
    """The Voice API's call control through the SDK (`vonage.voice`): mute, hang up, talk into a call."""

    name = "Vonage"

    def __init__(self, application: VonageApplication) -> None:
        def make() -> Vonage:
            options = HttpClientOptions(
                api_host=application.api_host, video_host=application.video_host, timeout=HTTP_TIMEOUT_S
            )
            return Vonage(
                Auth(application_id=application.application_id, private_key=application.private_key_pem), options
            )

        self._clients = _ClientsPerThread(make)

    async def mute(self, call_uuid: str, muted: bool) -> None:
        def act() -> None:
            voice = self._clients.get("voice").voice
            voice.mute(call_uuid) if muted else voice.unmute(call_uuid)

        await self._call(f"{'muting' if muted else 'unmuting'} the call at Vonage", act)

    async def hang_up(self, call_uuid: str) -> None:
        await self._call("hanging up the call at Vonage", lambda: self._clients.get("voice").voice.hangup(call_uuid))

    async def talk(self, call_uuid: str, text: str) -> None:
        options = TtsStreamOptions(text=text)
        await self._call(
            "talking into the call at Vonage",
            lambda: self._clients.get("voice").voice.play_tts_into_call(call_uuid, options),
        )

    async def _call(self, what: str, operation: Callable[[], object]) -> None:
        try:
            await call_vonage(what, operation)
        except PlatformError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise CallGone(what, exc.detail) from exc.__cause__
            raise
