"""The web app's side of the embedded voice engine: the browser phone page and its calls, and the watch that ends
the call of a SIP participant gone from its room (its health and metrics are folded into the app's in pages.py).

The engine runs in its own process and serves Vonage's Voice REST shape over HTTPS on loopback; the app signs its
requests with the application key the engine keeps in `DIALBRIDGE_VOICE_DIR` (`credentials.py`) and trusts
the engine's self-made certificate, exactly as it would call Vonage with its own application's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dialbridge.callcontrol import CallControl
from dialbridge.config import Backend
from dialbridge.dialout import SipCallUpdate
from dialbridge.gateway.events import FAILED
from dialbridge.local_api import LocalApiClient
from dialbridge.platforms.base import CallGone
from dialbridge.store.dial_outs import DialOut
from dialbridge.tokens import is_sip_participant
from dialbridge.web.errors import ApiError
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
            if dial_out is None:
                return
            if dial_out.call_uuid is None:
                await self._close_orphaned(dial_out)
                return
            with contextlib.suppress(CallGone):  # it ended meanwhile: nothing to do
                await self.control.hang_up(dial_out.call_uuid)
            log.info(
                "the SIP participant of dial-out %s left its room; its call %s hung up", dial_out.id, dial_out.call_uuid
            )
        except Exception:
            log.exception("ending the call of a SIP participant that left its room failed")

    async def _close_orphaned(self, dial_out: DialOut) -> None:
        await asyncio.sleep(ORPHAN_GRACE_S)
        room = await self.svc.rooms.find(dial_out.room_id)
        if room is None:
            return
        closed = await self.svc.dial_outs.record_progress(SipCallUpdate(dial_out.id, room.session_id, FAILED))
        if closed is not None:  # the gateway said nothing: it is gone
            log.warning("dial-out %s: its SIP participant left without a final state; closed as failed", dial_out.id)
            self.svc.roster.dial_out_changed(room, closed)


ORPHAN_GRACE_S = 3.0


def voice_engine(request: Request) -> LocalApiClient:
    svc: Services = request.app.state.services
    if svc.voice_engine is None:
        raise ApiError(404, "not_found", "the browser phone calls the embedded voice engine; this server uses Vonage")
    return svc.voice_engine


VoiceDep = Annotated[LocalApiClient, Depends(voice_engine)]


def _require_embedded(svc: Services) -> None:
    if svc.settings.backend is not Backend.EMBEDDED:
        raise ApiError(404, "not_found", "the browser phone calls the embedded voice engine; this server uses Vonage")


@router.get("/phone", response_class=HTMLResponse)
async def phone_page(request: Request, svc: ServicesDep) -> Response:
    _require_embedded(svc)
    settings = svc.settings
    config = {
        "offerUrl": "/api/phone/calls",
        "hangupUrl": "/api/phone/hangup",
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


@router.post("/api/phone/calls", status_code=201)
async def phone_call(offer: Annotated[PhoneOffer, Body()], svc: ServicesDep, engine: VoiceDep) -> dict[str, str]:
    """A browser phone dials in: its offer goes to the voice engine, which answers like for any SIP caller."""
    _require_embedded(svc)
    response = await _engine_call(engine, "POST", "/internal/browser-calls", {"sdp": offer.sdp}, read_s=35.0)
    if response.status_code == 201:
        answer = response.json()
        return {"call_id": str(answer["call_id"]), "sdp": str(answer["sdp"])}
    detail = _problem_detail(response)
    if response.status_code == 400:
        raise ApiError(400, "unusable_offer", detail)
    if response.status_code == 503:
        raise ApiError(503, "no_line_free", detail, headers={"Retry-After": "30"})
    raise ApiError(502, "voice_engine_error", f"the voice engine answered {response.status_code}: {detail}")


@router.post("/api/phone/hangup", status_code=204)
async def phone_hangup(body: Annotated[PhoneHangup, Body()], svc: ServicesDep, engine: VoiceDep) -> Response:
    _require_embedded(svc)
    response = await _engine_call(engine, "DELETE", f"/internal/browser-calls/{body.call_id}")
    if response.status_code not in (204, 404):  # an ended call is hung up already
        raise ApiError(502, "voice_engine_error", f"the voice engine answered {response.status_code}")
    return Response(status_code=204)


async def _engine_call(
    engine: LocalApiClient, method: str, path: str, body: Any = None, read_s: float = 5.0
) -> httpx.Response:
    try:
        return await engine.request(method, path, body, read_s=read_s)
    except (httpx.HTTPError, OSError) as exc:
        raise ApiError(
            503,
            "voice_engine_unavailable",
            f"the voice engine is not reachable ({type(exc).__name__}); is `dialbridge voice` running "
            "(`dialbridge serve` starts it) and DIALBRIDGE_VOICE_API_PORT the same for both?",
        ) from None


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail") or body.get("title") or body)[:500]
