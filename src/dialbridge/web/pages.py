"""The room page, `/healthz` and `/metrics`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dialbridge.conference.rooms import is_valid_room_id
from dialbridge.config import Backend, Settings
from dialbridge.local_api import LocalApiClient
from dialbridge.web.errors import ApiError
from dialbridge.web.services import Services, services

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
ServicesDep = Annotated[Services, Depends(services)]

ROOM_ID_RULE = "a room id is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"


def check_room_id(room_id: str) -> str:
    if not is_valid_room_id(room_id):
        raise ApiError(400, "invalid_room_id", ROOM_ID_RULE)
    return room_id


@router.get("/room/{room_id}", response_class=HTMLResponse)
async def room_page(room_id: str, request: Request, svc: ServicesDep) -> Response:
    check_room_id(room_id)
    room = (await svc.rooms.get_or_create(room_id)).room
    now = svc.clock()
    participant = svc.tokens.issue(session_id=room.session_id, room_id=room.room_id, now=now)
    browser = svc.platform.browser_config(
        session_id=room.session_id, room_id=room.room_id, participant_token=participant, now=now
    )
    sip = sip_address(svc.settings) if svc.settings.backend is Backend.EMBEDDED else None
    config: dict[str, Any] = {
        "roomId": room.room_id,
        "backend": svc.platform.name,
        "apiKey": browser.api_key,
        "sessionId": browser.session_id,
        "token": browser.token,
        "participantToken": participant,
        "pin": room.pin,
        "dialInNumber": svc.settings.dial_in_number,
        "sipAddress": sip,  # the invite panel's; the browser phone (/phone) exists where this does
        **browser.extra,
    }
    return templates.TemplateResponse(
        request,
        "room.html",
        {
            "room": room,
            "dial_in_number": svc.settings.dial_in_number,
            "sip_address": sip,
            "sdk_url": browser.sdk_url,
            # Inside <script>, "</" would end the element early: escape it.
            "config_json": orjson.dumps(config).decode().replace("</", "<\\/"),
        },
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def sip_address(settings: Settings) -> str:
    """Where SIP phones dial in to the embedded voice engine."""
    return f"sip:{settings.sip_dial_in_user}@{settings.sip_contact_host}:{settings.sip_port}"


@router.get("/healthz")
async def healthz(request: Request, svc: ServicesDep) -> dict[str, Any]:
    try:
        await svc.store.read(svc.store.check_reachable)  # a monitor polls this: on PostgreSQL, off the event loop
    except Exception as exc:
        raise ApiError(503, "database_unavailable", f"database unreachable: {exc.__class__.__name__}") from exc
    body: dict[str, Any] = {"status": "ok", "backend": svc.platform.name}
    beside = _processes_beside(svc)
    # Reported, not required (still 200): the web server serves rooms while `serve` restarts the voice engine or the
    # gateway. But not "ok": a monitor reading the status must see that phone calls are not being answered.
    reports = await asyncio.gather(*(client.health() for client in beside.values()))
    body.update(zip(beside, reports, strict=True))
    if any(report.get("status") != "ok" for report in reports):
        body["status"] = "degraded"
    return body


def _processes_beside(svc: Services) -> dict[str, LocalApiClient]:
    """The embedded backend's processes beside the web server, by their /healthz key (and their `dialbridge_<key>_up`
    metric): the voice engine and the gateway."""
    found: dict[str, LocalApiClient] = {}
    if svc.voice_engine is not None:
        found["voice_engine"] = svc.voice_engine
    gateway = getattr(svc.platform, "gateway", None)
    if gateway is not None:
        found["gateway"] = gateway
    return found


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, svc: ServicesDep) -> Response:
    # Rooms and calls are counted in the database at scrape time: with a million rooms that is milliseconds of
    # scanning, which on the event loop would hold up every webhook in flight. A worker thread counts instead.
    scrapes = [
        client.metrics(f"dialbridge_{key}_up", f"Whether the {key.replace('_', ' ')} answered this scrape")
        for key, client in _processes_beside(svc).items()
    ]
    text = b"".join(await asyncio.gather(asyncio.to_thread(generate_latest, svc.metrics.registry), *scrapes))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
