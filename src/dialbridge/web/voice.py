"""The web app's side of the embedded voice engine: the browser phone page and its calls, and the engine's health
and metrics folded into the app's own.

The engine runs in its own process and serves Vonage's Voice REST shape over HTTPS on loopback; the app signs its
requests with the application key the engine keeps in `DIALBRIDGE_VOICE_DIR` (`credentials.py`) and trusts
the engine's self-made certificate, exactly as it would call Vonage with its own application's key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dialbridge.config import Backend, Settings
from dialbridge.credentials import VoiceCredentials
from dialbridge.tokens import is_sip_participant
from dialbridge.web.errors import ApiError
from dialbridge.web.pages import sip_address, templates
from dialbridge.web.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(services)]
MAX_SDP = 64 * 1024


class VoiceEngineClient:
    """HTTPS to the voice engine, signed with its application key (loaded, or made, on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._credentials: VoiceCredentials | None = None
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> tuple[httpx.AsyncClient, VoiceCredentials]:
        if self._http is None or self._credentials is None:
            self._credentials = VoiceCredentials.load_or_create(Path(self._settings.voice_dir))
            self._http = httpx.AsyncClient(
                base_url=self._settings.voice_api_url,
                verify=str(self._credentials.ca_bundle_path),
                timeout=httpx.Timeout(5.0, connect=1.0),
            )
        return self._http, self._credentials

    async def request(self, method: str, path: str, body: Any = None, read_s: float = 5.0) -> httpx.Response:
        http, credentials = self._client()
        headers = {"authorization": f"Bearer {credentials.app_token(time.time())}"}
        return await http.request(method, path, json=body, headers=headers, timeout=httpx.Timeout(read_s, connect=1.0))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class SipParticipantWatch:
    """Ends the call of a SIP participant whose connection left its room on its own (embedded backend).

    The gateway hangs up a call whose participant the room removes, and sends BYE when it stops; but a gateway that
    died (a crash, the OOM killer, `kill -9`) sends nothing, and its call would stay in the phone conference, the
    room's dial-out "live", for good. Its socket closing is the sign: the app then ends the call through the Voice
    API, as it ends any call. (A call that has ended already answers 404: nothing to do.)
    """

    def __init__(self, svc: Services, engine: VoiceEngineClient) -> None:
        self.svc = svc
        self.engine = engine
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
            if dial_out is None or dial_out.call_uuid is None:
                return
            response = await self.engine.request("PUT", f"/v1/calls/{dial_out.call_uuid}", {"action": "hangup"})
            log.info(
                "the SIP participant of dial-out %s left its room; its call %s hung up (%d)",
                dial_out.id,
                dial_out.call_uuid,
                response.status_code,
            )
        except Exception:
            log.exception("ending the call of a SIP participant that left its room failed")


def voice_engine(request: Request) -> VoiceEngineClient:
    state = request.app.state
    if getattr(state, "voice_engine", None) is None:
        state.voice_engine = VoiceEngineClient(state.services.settings)
    client: VoiceEngineClient = state.voice_engine
    return client


VoiceDep = Annotated[VoiceEngineClient, Depends(voice_engine)]


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
    engine: VoiceEngineClient, method: str, path: str, body: Any = None, read_s: float = 5.0
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


async def engine_health(svc: Services, engine: VoiceEngineClient) -> dict[str, Any]:
    """The voice engine's own /healthz, or why it could not be read."""
    try:
        response = await engine.request("GET", "/healthz", read_s=1.0)
    except (httpx.HTTPError, OSError) as exc:
        return {"status": "unreachable", "error": type(exc).__name__, "url": svc.settings.voice_api_url}
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        return {"status": "error", "http_status": response.status_code}
    return body


async def engine_metrics(engine: VoiceEngineClient) -> bytes:
    """The engine's Prometheus text, plus whether it could be scraped."""
    try:
        response = await engine.request("GET", "/metrics", read_s=1.0)
    except (httpx.HTTPError, OSError):
        response = None
    up = response is not None and response.status_code == 200
    head = b"# HELP dialbridge_voice_engine_up Whether the voice engine answered this scrape\n"
    head += b"# TYPE dialbridge_voice_engine_up gauge\ndialbridge_voice_engine_up " + (b"1\n" if up else b"0\n")
    return head + (response.content if up and response is not None else b"")
