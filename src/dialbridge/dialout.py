"""`DialOuts`: a room's video session dials the phone conference (the phone bridge) or a phone, and hangs up.

As in Vonage's tutorial, the conference dial-out calls our own dial-in over SIP with the header
`X-OpenTok-SessionId`, which makes the answer webhook put the call straight into the room's conversation; a phone
dial-out calls that number through a SIP endpoint. Every dial-out also carries `X-dialbridge-dial-out` with its id,
so the answer webhook can link the phone call the voice side creates to this record (`DialOutStore.mark_call`).

Where the SIP calls go is the backend's (`SipRoute`): on Vonage, the dial-in number and phones at Vonage's SIP
domain over TLS with the account's SIP credentials; on the embedded backend, the voice engine's own dial-in
(`sip:dialin@…`, no credentials: it is this machine's) and phones through the configured SIP trunk. A `sip_uri`
dial-out calls that address directly on both (no trunk, no credentials; TLS only where the backend has it).

How a placed call goes is told by the platform where it can: the embedded gateway posts session-monitoring
callbacks (`gateway/events.py`), which `record_progress` keeps as the dial-out's `progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dialbridge.conference.participants import mask_number
from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import DIAL_OUT_HEADER, SESSION_HEADER, PayloadError
from dialbridge.config import Backend, Settings
from dialbridge.gateway.events import CREATED, DESTROYED, DIAL_OUT_STATES, FINAL_STATES, RINGING, UPDATED
from dialbridge.platforms.base import ConnectionGone, NotSupported, SipDial, VideoPlatform
from dialbridge.sip.message import SipParseError, SipUri, trunk_uri
from dialbridge.store.dial_outs import CONFERENCE, LIVE, PHONE, DialOut, DialOutStore


class DialOutUnavailable(Exception):
    """This server is not configured to dial out; the message names the setting to fix."""


class DialOutNotAllowed(Exception):
    """The number is outside the prefixes this server may call (DIALBRIDGE_DIAL_OUT_PREFIXES)."""


class UnknownDialOut(LookupError):
    pass


class DialOutNotLive(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SipRoute:
    """Where one dial-out's SIP call goes, and with what credentials."""

    uri: str
    username: str | None = None
    password: str | None = None
    from_: str | None = None
    secure: bool = True


class DialOuts:
    def __init__(
        self, store: DialOutStore, platform: VideoPlatform, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.platform = platform
        self.settings = settings
        self.clock = clock

    # DialOutStore's transactions wait for the database's write lock (and, on PostgreSQL, for the network): they run
    # on a worker thread, never on the event loop. Dial-outs are rare; a thread hop costs nothing here.
    async def dial_conference(self, room: Room) -> DialOut:
        self._require_sip()
        route = self._conference_route()
        token_data = {"sip": True, "role": "client", "name": "Phone", "dialOut": CONFERENCE}
        target = self.settings.dial_in_number or route.uri
        return await self._dial(room, CONFERENCE, target, route, token_data, {SESSION_HEADER: room.session_id})

    async def dial_phone(self, room: Room, number: str) -> DialOut:
        self._require_sip()
        allowed = self.settings.allowed_dial_out_prefixes
        if allowed and not number.startswith(tuple(allowed)):
            raise DialOutNotAllowed(
                f"{number} is not among the numbers this server may call ({', '.join(allowed)}); "
                "the operator sets these in DIALBRIDGE_DIAL_OUT_PREFIXES"
            )
        route = self._phone_route(number)
        # The connection's data reaches every browser of the session (and names the stream): the masked number only.
        token_data = {"sip": True, "role": "client", "name": mask_number(number), "dialOut": PHONE}
        return await self._dial(room, PHONE, number, route, token_data, {})

    async def dial_sip_uri(self, room: Room, uri: str) -> DialOut:
        """Call a SIP address directly (no trunk, no credentials): on the embedded backend the gateway dials it,
        on Vonage, Video's SIP dial does. The number allow-list does not apply; DIALBRIDGE_DIAL_OUT_SIP_HOSTS does."""
        self._require_sip()
        target = check_sip_uri(uri, tls=not self._embedded())
        allowed = self.settings.allowed_dial_out_sip_hosts
        if allowed and target.host.strip("[]").lower() not in allowed:
            raise DialOutNotAllowed(
                f"{target.host} is not among the SIP hosts this server may call ({', '.join(allowed)}); "
                "the operator sets these in DIALBRIDGE_DIAL_OUT_SIP_HOSTS"
            )
        token_data = {"sip": True, "role": "client", "name": "SIP call", "dialOut": PHONE}
        secure = target.scheme == "sips" or (target.transport or "").lower() == "tls"
        return await self._dial(room, PHONE, uri, SipRoute(uri=uri, secure=secure), token_data, {})

    async def hang_up(self, room: Room, dial_out_id: str) -> DialOut:
        self._require_sip()
        dial_out = await asyncio.to_thread(self.store.get, dial_out_id)
        if dial_out is None or dial_out.room_id != room.room_id:
            raise UnknownDialOut(f"room {room.room_id!r} has no call {dial_out_id!r}")
        if dial_out.state != LIVE or dial_out.connection_id is None:
            raise DialOutNotLive(f"call {dial_out_id!r} is {dial_out.state}, not live: there is nothing to hang up")
        with contextlib.suppress(ConnectionGone):  # the phone side hung up first: the call is over either way
            await self.platform.disconnect(room.session_id, dial_out.connection_id)
        return await asyncio.to_thread(self.store.mark_ended, dial_out_id, self.clock())

    def _embedded(self) -> bool:
        return self.settings.backend is Backend.EMBEDDED

    def _conference_route(self) -> SipRoute:
        if self._embedded():
            # The voice engine's own dial-in, on this machine: no number, no credentials, no TLS.
            return SipRoute(uri=self.settings.conference_sip_uri, secure=False)
        if not self.settings.dial_in_number:
            raise DialOutUnavailable(
                "no conference number to dial: set DIALBRIDGE_DIAL_IN_NUMBER to the Vonage number callers dial"
            )
        return self._vonage_route(self.settings.dial_in_number, PHONE_FROM_NONE)

    def _phone_route(self, number: str) -> SipRoute:
        if self._embedded():
            trunk = self.settings.sip_trunk_uri
            if not trunk:
                raise DialOutUnavailable(
                    "the embedded backend calls phones through a SIP trunk: set DIALBRIDGE_SIP_TRUNK_URI (e.g. "
                    "sip:trunk.example.com;transport=udp) and, if it asks for them, DIALBRIDGE_SIP_TRUNK_USERNAME "
                    "and DIALBRIDGE_SIP_TRUNK_PASSWORD"
                )
            password = self.settings.sip_trunk_password
            caller = self.settings.dial_in_number
            return SipRoute(
                uri=trunk_uri(trunk, number),
                username=self.settings.sip_trunk_username,
                password=password.get_secret_value() if password else None,
                from_=caller,
                secure=False,
            )
        return self._vonage_route(number, self.settings.dial_in_number)

    def _vonage_route(self, number: str, caller: str | None) -> SipRoute:
        credentials = self.settings.sip_credentials()
        if credentials is None:
            raise DialOutUnavailable(
                "Vonage's SIP endpoint needs credentials: set DIALBRIDGE_VONAGE_SIP_USERNAME and "
                "DIALBRIDGE_VONAGE_SIP_PASSWORD (or DIALBRIDGE_VONAGE_API_KEY/_API_SECRET)"
            )
        return SipRoute(
            uri=self.sip_uri(number),
            username=credentials[0],
            password=credentials[1],
            from_=f"{digits(caller)}@{self.settings.vonage_sip_domain}" if caller else None,
            secure=True,
        )

    async def _dial(
        self,
        room: Room,
        kind: str,
        target: str,
        route: SipRoute,
        token_data: dict[str, object],
        headers: dict[str, str],
    ) -> DialOut:
        dial_out_id = "do_" + secrets.token_urlsafe(12)
        dial = SipDial(
            uri=route.uri,
            headers={**headers, DIAL_OUT_HEADER: dial_out_id},
            username=route.username,
            password=route.password,
            from_=route.from_,
            token_data=json.dumps(token_data, separators=(",", ":")),
            secure=route.secure,
        )
        # Recorded before Vonage is asked, so a second conference dial-out is refused even while this one dials.
        await asyncio.to_thread(
            self.store.start,
            dial_out_id=dial_out_id,
            room_id=room.room_id,
            kind=kind,
            target=target,
            now=self.clock(),
            limit=self.settings.dial_outs_per_room_per_hour,
        )
        try:
            placed = await self.platform.dial_sip(room.session_id, room.room_id, dial, self.clock())
        except BaseException:
            await asyncio.to_thread(self.store.mark_failed, dial_out_id, self.clock())
            raise
        return await asyncio.to_thread(
            self.store.mark_live,
            dial_out_id,
            platform_call_id=placed.call_id,
            connection_id=placed.connection_id,
            stream_id=placed.stream_id,
            progress=RINGING if self.platform.reports_sip_progress else None,
        )

    async def record_progress(self, update: SipCallUpdate, *, unlinked_only: bool = False) -> DialOut | None:
        """How the dial-out's SIP call went (the gateway's callback); the record as it now is, or None when it was
        closed already (a room's hang-up came first) or, with `unlinked_only`, its call has been linked."""
        final = update.state in FINAL_STATES
        return await asyncio.to_thread(
            self.store.mark_progress,
            update.dial_out_id,
            update.state,
            final=final,
            now=self.clock(),
            unlinked_only=unlinked_only,
        )

    async def open_conference(self, room: Room) -> DialOut | None:
        return await asyncio.to_thread(self.store.open_conference, room.room_id)

    def sip_uri(self, number: str) -> str:
        return f"sip:{digits(number)}@{self.settings.vonage_sip_domain};transport=tls"

    def _require_sip(self) -> None:
        if not self.platform.supports_sip:
            raise NotSupported(f"the {self.platform.name} video platform cannot dial SIP")


@dataclass(frozen=True, slots=True)
class SipCallUpdate:
    """One session-monitoring callback about a dial-out's SIP call (gateway/events.py)."""

    dial_out_id: str
    session_id: str
    state: str


def sip_call_update(fields: Mapping[str, Any]) -> SipCallUpdate | None:
    """The dial-out update a callback carries; None for one that changes no state (sipCallCreated, or a call that
    no dial-out of ours placed). Malformed → PayloadError (422)."""
    event = fields.get("event")
    call = fields.get("call")
    session_id = fields.get("sessionId")
    if event not in (CREATED, UPDATED, DESTROYED) or not isinstance(call, dict) or not isinstance(session_id, str):
        raise PayloadError("a SIP call callback needs sessionId, event (sipCallCreated/Updated/Destroyed) and call")
    headers = call.get("headers")
    named = {str(name).lower(): value for name, value in headers.items()} if isinstance(headers, dict) else {}
    dial_out_id = named.get(DIAL_OUT_HEADER.lower())  # SIP header names are case-insensitive
    if event == CREATED or not isinstance(dial_out_id, str):
        return None
    state = call.get("state")
    if state not in DIAL_OUT_STATES:
        raise PayloadError(f"call.state must be one of {', '.join(DIAL_OUT_STATES)}")
    return SipCallUpdate(dial_out_id=dial_out_id, session_id=session_id, state=state)


PHONE_FROM_NONE: None = None  # the conference dial-out presents no caller number


class BadSipUri(ValueError):
    """A dial-out's `sip_uri` that cannot be called (422); the message says why in the caller's words."""


def check_sip_uri(uri: str, *, tls: bool = True) -> SipUri:
    """A dial-out's `sip_uri`, parsed; `tls`: whether this backend can call over TLS (Vonage can, the embedded
    gateway cannot)."""
    try:
        target = SipUri.parse(uri)
    except SipParseError as exc:
        raise BadSipUri(
            f"is not a SIP URI ({exc}); write it as sip:user@host, e.g. sip:alice@pbx.example.com"
        ) from None
    if target.scheme not in ("sip", "sips"):
        raise BadSipUri("must be a sip: URI (phone numbers go in 'number')")
    if not target.host:
        raise BadSipUri("needs a host, e.g. sip:alice@pbx.example.com")
    transport = (target.transport or "udp").lower()
    if not tls and (target.scheme == "sips" or transport == "tls"):
        raise BadSipUri(
            "cannot be called over TLS: the embedded backend's gateway has no TLS, so use sip: over udp or tcp"
        )
    if transport not in ("udp", "tcp", "tls"):
        raise BadSipUri(f"transport={transport} cannot be called: use ;transport=udp (the default) or ;transport=tcp")
    return target


def digits(e164: str) -> str:
    return e164.removeprefix("+")
