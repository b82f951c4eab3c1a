"""dialbridge's own video platform: sessions and tokens issued here, media peer-to-peer between browsers.

The browser loads `/static/ot-embedded.js`, which implements the subset of Vonage's `OT` API the room page uses
over the WebSocket signalling in `engine.rooms`; the participant token is the signalling token.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from dialbridge.platforms.base import BrowserConfig, NotSupported, SipCall, SipDial

SESSION_PREFIX = "emb_"
SIGNALLING_PATH = "/rt/signalling"


class ConnectionCloser(Protocol):
    async def force_disconnect(self, session_id: str, connection_id: str) -> bool: ...

    def signal(self, session_id: str, signal_type: str, data: str) -> int: ...


class EmbeddedVideo:
    name = "embedded"
    supports_sip = False

    def __init__(self, hub: ConnectionCloser) -> None:
        self.hub = hub

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
        raise NotSupported(
            "the embedded backend cannot dial phones yet: its voice engine answers calls but does not place them; "
            "run with DIALBRIDGE_BACKEND=vonage to dial out through Vonage"
        )

    async def disconnect(self, session_id: str, connection_id: str) -> None:
        await self.hub.force_disconnect(session_id, connection_id)

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        self.hub.signal(session_id, signal_type, data)  # queued for every member connected here
