"""The embedded backend's WebSocket signalling endpoint (protocol: `engine.rooms.signalling`).

`GET /rt/signalling?sessionId=…&token=…` — the participant token is verified before the socket is accepted. A refused
socket is accepted only to be closed at once with code 4401 and a reason, because a browser sees neither the status
nor the body of a refused handshake; nothing else is sent to it and it joins nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from fastapi import APIRouter, WebSocket

from dialbridge.engine.rooms.signalling import CLOSE_BAD_TOKEN, CLOSE_IDLE, CLOSE_UNSUPPORTED_DATA, JoinRefused
from dialbridge.platforms.embedded import SIGNALLING_PATH
from dialbridge.tokens import ParticipantClaims, Role, TokenError
from dialbridge.web.services import Services

log = logging.getLogger(__name__)
router = APIRouter()

# The browser module pings every 15 s; a socket silent for this long belongs to a frozen or vanished page.
IDLE_TIMEOUT_S: Final = 45.0


@router.websocket(SIGNALLING_PATH)
async def signalling(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    try:
        claims = _check_token(svc, websocket.query_params.get("token"), websocket.query_params.get("sessionId"))
    except TokenError as exc:
        await websocket.accept()
        await websocket.close(CLOSE_BAD_TOKEN, _close_reason(str(exc)))
        return

    await websocket.accept()
    try:
        member = svc.hub.join(
            websocket,
            session_id=claims.session_id,
            connection_id=claims.connection_id,
            data=claims.data,
            may_publish=claims.role is not Role.SUBSCRIBER,
            now=svc.clock(),
        )
    except JoinRefused as refused:
        await websocket.close(refused.code, _close_reason(refused.reason))
        return

    close: tuple[int, str] | None = None
    try:
        while True:
            try:
                frame = await asyncio.wait_for(websocket.receive(), IDLE_TIMEOUT_S)
            except TimeoutError:
                close = (CLOSE_IDLE, "no message or keepalive for 45 s")
                break
            if frame["type"] == "websocket.disconnect":
                break
            text = frame.get("text")
            if text is None:
                close = (CLOSE_UNSUPPORTED_DATA, "signalling messages are JSON text frames")
                break
            svc.hub.receive(member, text, now=svc.clock())
    finally:
        await svc.hub.leave(member)
    if close is not None:
        with contextlib.suppress(Exception):  # the peer may be gone already
            await websocket.close(*close)


def _check_token(svc: Services, token: str | None, session_id: str | None) -> ParticipantClaims:
    if not token:
        raise TokenError("no participant token: open the room page, which passes its token to the signalling")
    if not session_id:
        raise TokenError("no sessionId: the signalling URL needs ?sessionId=…&token=…")
    return svc.tokens.verify(token, now=svc.clock(), session_id=session_id)


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    encoded = text.encode()
    return text if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."
