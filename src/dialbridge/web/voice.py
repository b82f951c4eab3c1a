"""The web app's side of the embedded backend's phones: the browser phone page and its calls, and the watch that
ends the call of a SIP participant gone from its room (health and metrics are folded into the app's in pages.py).

The browser phone's WebRTC call ends in the gateway (`dialbridge gateway`, its own process), which dials in to the
voice engine like any SIP phone: the app forwards the page's offer and hang-up to the gateway's control API over
HTTPS on loopback, signed with the application key kept in `DIALBRIDGE_VOICE_DIR` (`credentials.py`), as it asks
the gateway for a room's SIP dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dialbridge.callcontrol import CallControl
from dialbridge.config import Backend
from dialbridge.dialout import SipCallUpdate
from dialbridge.gateway.events import FAILED
from dialbridge.local_api import LocalApiClient
from dialbridge.platforms.base import CallGone
from dialbridge.store.dial_outs import LIVE, DialOut
from dialbridge.tokens import is_sip_participant
from dialbridge.web.errors import ApiError, bearer_token
from dialbridge.web.pages import sip_address, templates
from dialbridge.web.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(services)]
MAX_SDP = 64 * 1024


class SipParticipantWatch:
    """Ends the call of a SIP participant whose connection left its room on its own (embedded backend).

    The gateway hangs up a call whose participant the room removes, and sends BYE when it stops; but a gateway that
    died (a crash, the OOM killer, `kill -9`) sends nothing, and its call would stay in the phone conference, the
    room's dial-out "live", for good. Its socket closing is the sign: the app then ends the call through the Voice
    API, as it ends any call. (A call that has ended already answers 404: nothing to do.) A phone dial-out through a
    trunk has no call here to end: once the gateway had `ORPHAN_GRACE_S` to report how it ended (it reports before it
    leaves, but its report and its socket's close race), a dial-out still open is closed as failed and the room told.
    """

    def __init__(self, svc: Services, control: CallControl) -> None:
        self.svc = svc
        self.control = control
        self._tasks: set[asyncio.Task[None]] = set()

    def left(self, session_id: str, connection_id: str, data: str) -> None:
        if is_sip_participant(data):
            task = asyncio.get_running_loop().create_task(self._end_call_of(connection_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _end_call_of(self, connection_id: str) -> None:
        store = self.svc.dial_outs.store
        try:
            dial_out = await asyncio.to_thread(store.live_by_connection, connection_id)
            if dial_out is not None and dial_out.call_uuid is None:
                dial_out = await self._close_unless_linked(dial_out)
            if dial_out is None or dial_out.call_uuid is None:
                return
            with contextlib.suppress(CallGone):  # it ended meanwhile: nothing to do
                await self.control.hang_up(dial_out.call_uuid)
            log.info(
                "the SIP participant of dial-out %s left its room; its call %s hung up", dial_out.id, dial_out.call_uuid
            )
        except Exception:
            log.exception("ending the call of a SIP participant that left its room failed")

    async def _close_unless_linked(self, dial_out: DialOut) -> DialOut | None:
        """A dial-out with no call linked: a trunk call (nothing here to end), or a call whose answer webhook has
        not linked it yet (the gateway died between its INVITE and the answer). After the grace, close it as
        failed unless it was linked meanwhile; then the linked record, whose call is to be hung up. The store does
        the check and the close in one statement, and refuses a link to a closed dial-out (`CallService.answer`
        ends such a call), so no call slips in between."""
        await asyncio.sleep(ORPHAN_GRACE_S)
        room = await self.svc.rooms.find(dial_out.room_id)
        if room is None:
            return None
        update = SipCallUpdate(dial_out.id, room.session_id, FAILED)
        closed = await self.svc.dial_outs.record_progress(update, unlinked_only=True)
        if closed is not None:  # the gateway said nothing: it is gone
            log.warning("dial-out %s: its SIP participant left without a final state; closed as failed", dial_out.id)
            self.svc.roster.dial_out_changed(room, closed)
            return None
        linked = await asyncio.to_thread(self.svc.dial_outs.store.get, dial_out.id)
        return linked if linked is not None and linked.state == LIVE else None


ORPHAN_GRACE_S = 3.0


NOT_EMBEDDED = "the browser phone calls through the embedded backend's gateway; this server uses Vonage"


def phone_gateway(request: Request) -> LocalApiClient:
    """The gateway's control API client, the one the embedded video platform dials rooms through."""
    svc: Services = request.app.state.services
    gateway: LocalApiClient | None = getattr(svc.platform, "gateway", None)
    if svc.settings.backend is not Backend.EMBEDDED or gateway is None:
        raise ApiError(404, "not_found", NOT_EMBEDDED)
    return gateway


GatewayDep = Annotated[LocalApiClient, Depends(phone_gateway)]


def _require_embedded(svc: Services) -> None:
    if svc.settings.backend is not Backend.EMBEDDED:
        raise ApiError(404, "not_found", NOT_EMBEDDED)


@router.get("/phone", response_class=HTMLResponse)
async def phone_page(request: Request, svc: ServicesDep) -> Response:
    _require_embedded(svc)
    settings = svc.settings
    config = {
        "offerUrl": "/api/phone/calls",
        "hangupUrl": "/api/phone/hangup",
        "callToken": svc.phone_tokens.issue(svc.clock()),
        "sipAddress": sip_address(settings),
        "dialInNumber": settings.dial_in_number,
    }
    return templates.TemplateResponse(
        request,
        "phone.html",
        {"config_json": orjson.dumps(config).decode().replace("</", "<\\/")},
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


class PhoneOffer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(min_length=1, max_length=MAX_SDP)


class PhoneHangup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")


def phone_page_holder(svc: ServicesDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Only a page `/phone` served places or ends calls: its token, sent as `Authorization: Bearer` (401 else)."""
    svc.phone_tokens.verify(bearer_token(authorization, "the phone page's token"), now=svc.clock())


PhonePageHolder = Depends(phone_page_holder)


@router.post("/api/phone/calls", status_code=201, dependencies=[PhonePageHolder])
async def phone_call(
    offer: Annotated[PhoneOffer, Body()], gateway: GatewayDep, request: Request, svc: ServicesDep
) -> dict[str, str]:
    """A browser phone dials in: the gateway answers its offer and calls the voice engine like a SIP phone."""
    source = request.client.host if request.client is not None else "unknown"
    now = svc.clock()
    if not svc.phone_call_rate.allow(source, now):
        wait = max(1, math.ceil(svc.phone_call_rate.retry_after(source, now)))
        raise ApiError(
            429,
            "too_many_calls",
            f"this address placed {svc.phone_call_rate.limit} calls in the last minute; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    response = await _gateway_call(gateway, "POST", "/v1/browser-calls", {"sdp": offer.sdp}, read_s=35.0)
    if response.status_code == 201:
        answer = response.json()
        return {"call_id": str(answer["call_id"]), "sdp": str(answer["sdp"])}
    detail = _refusal_detail(response)
    if response.status_code in (400, 413):
        raise ApiError(400, "unusable_offer", detail)
    if response.status_code in (429, 503):
        retry_after = response.headers.get("retry-after", "30")
        raise ApiError(503, "no_line_free", detail, headers={"Retry-After": retry_after})
    raise ApiError(502, "gateway_error", f"the gateway answered {response.status_code}: {detail}")


@router.post("/api/phone/hangup", status_code=204, dependencies=[PhonePageHolder])
async def phone_hangup(body: Annotated[PhoneHangup, Body()], gateway: GatewayDep) -> Response:
    response = await _gateway_call(gateway, "DELETE", f"/v1/browser-calls/{body.call_id}")
    if response.status_code not in (204, 404):  # an ended call is hung up already
        raise ApiError(502, "gateway_error", f"the gateway answered {response.status_code}")
    return Response(status_code=204)


async def _gateway_call(
    gateway: LocalApiClient, method: str, path: str, body: Any = None, read_s: float = 5.0
) -> httpx.Response:
    try:
        return await gateway.request(method, path, body, read_s=read_s)
    except (httpx.HTTPError, OSError) as exc:
        raise ApiError(
            503,
            "gateway_unavailable",
            f"the gateway at {gateway.url} is not reachable ({type(exc).__name__}); is `dialbridge gateway` running "
            "(`dialbridge serve` starts it) and DIALBRIDGE_GATEWAY_API_PORT the same for both?",
            headers={"Retry-After": "10"},
        ) from None


def _refusal_detail(response: httpx.Response) -> str:
    """The gateway's refusal in its words (Vonage Video's error shape, `{"code", "message"}`)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or body)[:500]
