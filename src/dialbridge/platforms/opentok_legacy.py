"""Vonage Video with the tutorial's legacy TokBox API key + secret, through the `opentok` SDK.

The opentok client builds fresh headers for every request (plain `requests.post`), so one client serves all threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentok import Client, MediaModes, Roles
from opentok.exceptions import ForceDisconnectError

from dialbridge.platforms.base import ConnectionGone, PlatformError, SipCall, SipDial
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
class LegacyOpenTokAccount:
    """What the legacy adapter is built from: a TokBox API key + secret, its REST URL, and the browser's SDK."""

    api_key: str
    api_secret: str
    api_url: str
    browser_sdk_url: str
    token_ttl_s: int


class LegacyOpenTokVideo(VonageVideoBase):
    def __init__(self, account: LegacyOpenTokAccount, participant_id: ParticipantId) -> None:
        super().__init__(account.api_key, account, participant_id)
        self._client = Client(account.api_key, account.api_secret, api_url=account.api_url, timeout=HTTP_TIMEOUT_S)

    async def create_session(self) -> str:
        def create() -> str:
            return str(self._client.create_session(media_mode=MediaModes.routed).session_id)

        return await call_vonage("creating a video session at Vonage", create)

    def client_token(self, session_id: str, connection_data: str) -> str:
        token: bytes | str = self._client.generate_token(
            session_id, role=Roles.publisher, expire_time=token_expiry(self.token_ttl_s), data=connection_data or None
        )
        return token.decode() if isinstance(token, bytes) else token

    async def dial_sip(self, session_id: str, room_id: str, dial: SipDial, now: float) -> SipCall:
        token = self.sip_token(session_id, dial)
        options: dict[str, Any] = {"headers": dict(dial.headers), "secure": dial.secure}
        if dial.from_:
            options["from"] = dial.from_
        if dial.username and dial.password:
            options["auth"] = {"username": dial.username, "password": dial.password}
        placed: Any = await call_vonage(SIP_DIAL, lambda: self._client.dial(session_id, token, dial.uri, options))
        if not placed.connectionId:
            raise PlatformError(SIP_DIAL, "Vonage's answer names no connection id")
        return SipCall(call_id=str(placed.id or ""), connection_id=str(placed.connectionId), stream_id=placed.streamId)

    async def disconnect(self, session_id: str, connection_id: str) -> None:
        what = "disconnecting the SIP connection at Vonage"
        try:
            await call_vonage(what, lambda: self._client.force_disconnect(session_id, connection_id))
        except PlatformError as exc:
            # opentok raises ForceDisconnectError for both 400 and 404; only its 404 says "not connected".
            if isinstance(exc.__cause__, ForceDisconnectError) and "not connected" in str(exc.__cause__):
                raise ConnectionGone(what, exc.detail) from exc.__cause__
            raise

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        payload = {"type": signal_type, "data": data}
        await call_vonage(SIGNAL, lambda: self._client.send_signal(session_id, payload))
