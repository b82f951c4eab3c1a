"""What both Vonage Video adapters share (the `vonage` SDK's in vonage.py, the legacy `opentok` SDK's in
opentok_legacy.py): running a blocking SDK call, token expiry, and the browser's and SIP call's tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from dialbridge.platforms.base import BrowserConfig, PlatformError, SipDial

log = logging.getLogger("dialbridge.platforms.vonage")  # both adapters' failures, under the name they always had
T = TypeVar("T")

HTTP_TIMEOUT_S = 15
# Vonage checks a client token against its own clock, and both SDKs refuse expiries past 30 days.
MAX_TOKEN_TTL_S = 30 * 24 * 3600 - 60
SIP_DIAL = "placing the SIP call at Vonage"
SIGNAL = "signalling the session at Vonage"

ParticipantId = Callable[[str], str]
"""dialbridge's participant id from the participant token it has just issued (the platform cannot read tokens)."""


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


class BrowserSide(Protocol):
    """What either adapter's configuration says about the browser: its SDK and how long its token lasts."""

    @property
    def browser_sdk_url(self) -> str: ...
    @property
    def token_ttl_s(self) -> int: ...


class VonageVideoBase:
    """What both Vonage SDK adapters share: the browser's arguments and the token a SIP call joins with."""

    name = "vonage"
    supports_sip = True
    reports_sip_progress = False

    def __init__(self, browser_api_key: str, browser: BrowserSide, participant_id: ParticipantId) -> None:
        self.browser_api_key = browser_api_key  # what OT.initSession takes: the application id, or the legacy key
        self.browser_sdk_url = browser.browser_sdk_url
        self.token_ttl_s = browser.token_ttl_s
        self.participant_id = participant_id

    def client_token(self, session_id: str, connection_data: str) -> str:
        raise NotImplementedError

    def browser_config(self, *, session_id: str, room_id: str, participant_token: str, now: float) -> BrowserConfig:
        return BrowserConfig(
            sdk_url=self.browser_sdk_url,
            api_key=self.browser_api_key,
            session_id=session_id,
            token=self.client_token(session_id, self.connection_data(room_id, participant_token)),
        )

    def connection_data(self, room_id: str, participant_token: str) -> str:
        """What the other participants see as this connection's data: the room and dialbridge's participant id."""
        participant = self.participant_id(participant_token)
        return json.dumps({"room": room_id, "participant": participant}, separators=(",", ":"))

    def sip_token(self, session_id: str, dial: SipDial) -> str:
        try:
            return self.client_token(session_id, dial.token_data)
        except Exception as exc:
            raise PlatformError(SIP_DIAL, failure_detail(exc)) from exc
