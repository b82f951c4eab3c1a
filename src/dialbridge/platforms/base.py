"""The contract between the web layer and a video platform.

A platform creates sessions, issues the token a browser connects with, describes how the room page loads its
browser SDK, and (where it can) dials SIP out of a session and force-disconnects a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class PlatformError(RuntimeError):
    """The video platform refused or failed; `what` names the operation, shown to the user with a 502."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} failed: {detail}")
        self.what = what
        self.detail = detail


class ConnectionGone(PlatformError):
    """The connection to disconnect is no longer in the session (the other side already left)."""


class CallGone(PlatformError):
    """The Voice API knows no live call by that uuid (it has ended)."""


class NotSupported(RuntimeError):
    """The platform cannot do this (yet); shown to the user with a 501."""


@dataclass(frozen=True, slots=True)
class SipDial:
    """A SIP call placed from a video session."""

    uri: str
    headers: Mapping[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    from_: str | None = None
    token_data: str = ""
    secure: bool = True


@dataclass(frozen=True, slots=True)
class SipCall:
    call_id: str
    connection_id: str
    stream_id: str | None


@dataclass(frozen=True, slots=True)
class BrowserConfig:
    """What the room page needs to join the session: the SDK to load and the arguments for `OT.initSession`."""

    sdk_url: str
    api_key: str
    session_id: str
    token: str
    extra: Mapping[str, Any] = field(default_factory=dict)


class VideoPlatform(Protocol):
    name: str
    supports_sip: bool  # whether dial_sip / disconnect of SIP calls work on this platform
    # Whether a placed SIP call's progress is reported (the gateway's callbacks) after dial_sip returns: then a
    # placed call is ringing until told otherwise; else dial_sip's return is all there is to know.
    reports_sip_progress: bool

    async def create_session(self) -> str: ...

    def browser_config(self, *, session_id: str, room_id: str, participant_token: str, now: float) -> BrowserConfig:
        """`participant_token` is dialbridge's own token for this participant (see tokens.py)."""
        ...

    async def dial_sip(self, session_id: str, room_id: str, dial: SipDial, now: float) -> SipCall: ...

    async def disconnect(self, session_id: str, connection_id: str) -> None: ...

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        """Send a signal to every client of the session (Vonage's signal REST API; data up to 8 kB); the page
        hears `signal` and `signal:<type>` with `from` null."""
        ...
