"""dialbridge's own video platform: sessions and tokens issued here, media peer-to-peer between browsers.

The browser loads `/static/ot-embedded.js`, which implements the subset of Vonage's `OT` API the room page uses
over the WebSocket signalling in `engine.rooms`; the participant token is the signalling token.

SIP dial goes through the gateway (`dialbridge gateway`), whose control API is Vonage Video's own: this platform
sends it the request the `vonage` SDK sends Vonage (`POST /v2/project/{appId}/dial`, signed with the local
application's key), with a participant token it issues for the SIP participant, so the gateway joins the room as
that participant. Hanging up is the same force-disconnect as for any participant: the gateway sees its socket
closed and ends the call.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from dialbridge.local_api import LocalApiClient
from dialbridge.platforms.base import BrowserConfig, ConnectionGone, PlatformError, SipCall, SipDial

SESSION_PREFIX = "emb_"
SIGNALLING_PATH = "/rt/signalling"
SIP_DIAL = "dialling through the gateway"
GATEWAY_DIAL_S = 15.0  # the gateway joins the room (a WebSocket and a publish) before it answers


class ConnectionCloser(Protocol):
    async def force_disconnect(self, session_id: str, connection_id: str) -> bool: ...

    def signal(self, session_id: str, signal_type: str, data: str) -> int: ...


#: Issues the SIP participant's token: (session_id, room_id, connection data) → token.
TokenIssuer = Callable[[str, str, str], str]


class EmbeddedVideo:
    name = "embedded"
    supports_sip = True
    reports_sip_progress = True  # the gateway posts sipCallUpdated/Destroyed (gateway/events.py)

    def __init__(self, hub: ConnectionCloser, gateway: LocalApiClient | None = None) -> None:
        self.hub = hub
        self.gateway = gateway
        self.issue_token: TokenIssuer | None = None  # set once the server's token key is known

    async def create_session(self) -> str:
        return SESSION_PREFIX + secrets.token_urlsafe(24)

    def browser_config(self, *, session_id: str, room_id: str, participant_token: str, now: float) -> BrowserConfig:
        return BrowserConfig(
            sdk_url="/static/ot-embedded.js",
            api_key="dialbridge",
            session_id=session_id,
            token=participant_token,
            extra={"signallingPath": SIGNALLING_PATH},
        )

    async def dial_sip(self, session_id: str, room_id: str, dial: SipDial, now: float) -> SipCall:
        if self.gateway is None or self.issue_token is None:
            raise PlatformError(SIP_DIAL, "this server runs without a gateway")
        sip: dict[str, Any] = {"uri": dial.uri, "headers": dict(dial.headers), "secure": False}
        if dial.from_:
            sip["from"] = dial.from_
        if dial.username and dial.password:
            sip["auth"] = {"username": dial.username, "password": dial.password}
        body = {"sessionId": session_id, "token": self.issue_token(session_id, room_id, dial.token_data), "sip": sip}
        try:
            response = await self.gateway.request("POST", f"/v2/project/{self.gateway.application_id}/dial", body)
        except (httpx.HTTPError, OSError) as exc:
            raise PlatformError(
                SIP_DIAL,
                f"the gateway at {self.gateway.url} is not reachable ({type(exc).__name__}); is `dialbridge gateway` "
                "running (`dialbridge serve` starts it) and DIALBRIDGE_GATEWAY_API_PORT the same for both?",
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code != 200:
            detail = answer.get("message") if isinstance(answer, dict) else None
            raise PlatformError(
                SIP_DIAL, f"the gateway answered {response.status_code}: {detail or response.text[:200]}"
            )
        return SipCall(
            call_id=str(answer.get("id", "")),
            connection_id=str(answer.get("connectionId", "")),
            stream_id=answer.get("streamId"),
        )

    async def disconnect(self, session_id: str, connection_id: str) -> None:
        if not await self.hub.force_disconnect(session_id, connection_id):
            raise ConnectionGone("disconnecting the SIP participant", "it has left the room already")

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        self.hub.signal(session_id, signal_type, data)  # queued for every member connected here
