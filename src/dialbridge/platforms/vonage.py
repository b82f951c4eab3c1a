"""Vonage Video through the official `vonage` SDK (application id + private key).

The SDK is blocking (requests), so every call runs in a worker thread. Its HTTP client keeps the request headers in
one dict it mutates per request: not safe across threads, and a JSON `Content-Type` once set stays on later
form-encoded posts (`POST /session/create` then goes out as form data labelled JSON). Each worker thread therefore
gets its own clients, with a separate one for session creation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import NotFoundError
from vonage_video.models import (
    InitiateSipRequest,
    MediaMode,
    SessionOptions,
    SipAuth,
    SipOptions,
    TokenOptions,
    TokenRole,
)

from dialbridge.config import Settings
from dialbridge.platforms.base import (
    BrowserConfig,
    ConnectionGone,
    PlatformError,
    SipCall,
    SipDial,
    VideoPlatform,
)
from dialbridge.tokens import participant_id

log = logging.getLogger(__name__)
T = TypeVar("T")

HTTP_TIMEOUT_S = 15
# Vonage checks a client token against its own clock, and both SDKs refuse expiries past 30 days.
MAX_TOKEN_TTL_S = 30 * 24 * 3600 - 60


async def call_vonage(what: str, operation: Callable[[], T]) -> T:
    """Run one blocking SDK call in a worker thread; any failure becomes a `PlatformError` naming `what`."""
    try:
        return await asyncio.to_thread(operation)
    except Exception as exc:
        log.warning("%s failed", what, exc_info=True)
        raise PlatformError(what, failure_detail(exc)) from exc


def failure_detail(exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:300]


def token_expiry(ttl_s: int) -> int:
    return int(time.time()) + min(ttl_s, MAX_TOKEN_TTL_S)


def participant_connection_data(room_id: str, participant_token: str) -> str:
    """What the other participants see as this connection's data: the room and dialbridge's participant id."""
    return json.dumps({"room": room_id, "participant": participant_id(participant_token)}, separators=(",", ":"))


class _ClientsPerThread:
    def __init__(self, make: Callable[[], Vonage]) -> None:
        self._make = make
        self._local = threading.local()

    def get(self, purpose: str) -> Vonage:
        clients: dict[str, Vonage] = self._local.__dict__.setdefault("clients", {})
        if purpose not in clients:
            clients[purpose] = self._make()
        return clients[purpose]


SIP_DIAL = "placing the SIP call at Vonage"


class VonageVideoBase:
    """What both Vonage SDK adapters share: the browser's arguments and the token a SIP call joins with."""

    name = "vonage"
    supports_sip = True
    browser_api_key: str  # what OT.initSession takes: the application id, or the legacy API key
    browser_sdk_url: str
    token_ttl_s: int

    def client_token(self, session_id: str, connection_data: str) -> str:
        raise NotImplementedError

    def browser_config(self, *, session_id: str, room_id: str, participant_token: str, now: float) -> BrowserConfig:
        return BrowserConfig(
            sdk_url=self.browser_sdk_url,
            api_key=self.browser_api_key,
            session_id=session_id,
            token=self.client_token(session_id, participant_connection_data(room_id, participant_token)),
        )

    def sip_token(self, session_id: str, dial: SipDial) -> str:
        try:
            return self.client_token(session_id, dial.token_data)
        except Exception as exc:
            raise PlatformError(SIP_DIAL, failure_detail(exc)) from exc


class VonageVideo(VonageVideoBase):
    def __init__(
        self,
        *,
        application_id: str,
        private_key_pem: str,
        api_host: str,
        video_host: str,
        browser_sdk_url: str,
        token_ttl_s: int,
    ) -> None:
        self.application_id = application_id
        self.browser_api_key = application_id
        self.browser_sdk_url = browser_sdk_url
        self.token_ttl_s = token_ttl_s

        def make() -> Vonage:
            options = HttpClientOptions(api_host=api_host, video_host=video_host, timeout=HTTP_TIMEOUT_S)
            return Vonage(Auth(application_id=application_id, private_key=private_key_pem), options)

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


def make_vonage_platform(settings: Settings) -> VideoPlatform:
    """The new SDK when an application id is configured, else the tutorial's legacy API key + secret."""
    if settings.vonage_application_id is not None:
        pem = settings.private_key_pem()
        if pem is None:
            raise ValueError("DIALBRIDGE_VONAGE_PRIVATE_KEY is not set (see `dialbridge doctor`)")
        return VonageVideo(
            application_id=settings.vonage_application_id,
            private_key_pem=pem,
            api_host=settings.vonage_api_host,
            video_host=settings.vonage_video_host,
            browser_sdk_url=settings.vonage_browser_sdk_url,
            token_ttl_s=settings.token_ttl_s,
        )
    if settings.vonage_api_key is not None and settings.vonage_api_secret is not None:
        from dialbridge.platforms.opentok_legacy import LegacyOpenTokVideo

        return LegacyOpenTokVideo(
            api_key=settings.vonage_api_key,
            api_secret=settings.vonage_api_secret.get_secret_value(),
            api_url=f"https://{settings.vonage_opentok_host}",
            browser_sdk_url=settings.vonage_browser_sdk_url,
            token_ttl_s=settings.token_ttl_s,
        )
    raise ValueError(
        "the vonage backend needs DIALBRIDGE_VONAGE_APPLICATION_ID + DIALBRIDGE_VONAGE_PRIVATE_KEY, or "
        "DIALBRIDGE_VONAGE_API_KEY + DIALBRIDGE_VONAGE_API_SECRET (see `dialbridge doctor`)"
    )
