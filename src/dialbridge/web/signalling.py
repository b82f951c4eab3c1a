"""The embedded backend's WebSocket signalling endpoint (protocol: `engine.rooms.signalling`).

`GET /rt/signalling?sessionId=…` with `Sec-WebSocket-Protocol: dialbridge.signalling.v1, bearer.<participant token>`
— the token is verified before the socket is accepted. It travels in that header, never in the URL: request lines
are logged (uvicorn logs every WebSocket's path and query, even with the access log off) and kept by proxies, and a
token may dial out for hours. A token in the URL is refused. A refused socket is accepted only to be closed at once
with code 4401 and a reason, because a browser sees neither the status nor the body of a refused handshake;
nothing else is sent to it and it joins nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from fastapi import APIRouter, WebSocket

from dialbridge.config import Settings, web_origin
from dialbridge.engine.rooms.signalling import (
    CLOSE_BAD_TOKEN,
    CLOSE_IDLE,
    CLOSE_UNSUPPORTED_DATA,
    SUBPROTOCOL,
    TOKEN_PROTOCOL_PREFIX,
    JoinRefused,
)
from dialbridge.platforms.embedded import SIGNALLING_PATH
from dialbridge.tokens import ParticipantClaims, Role, TokenError
from dialbridge.web.services import Services

log = logging.getLogger(__name__)
router = APIRouter()

# The browser module pings every 15 s; a socket silent for this long belongs to a frozen or vanished page.
IDLE_TIMEOUT_S: Final = 45.0
CLOSE_POLICY_VIOLATION: Final = 1008  # before the handshake is accepted, uvicorn answers it with HTTP 403


@router.websocket(SIGNALLING_PATH)
async def signalling(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    if not _origin_allowed(websocket, svc.settings):
        # A page on another site is trying to open a socket with a token it got hold of: refuse the handshake
        # itself (HTTP 403); the page sees a failed connection, and nothing is accepted.
        log.info("signalling socket refused: Origin %r is not allowed", websocket.headers.get("origin"))
        await websocket.close(CLOSE_POLICY_VIOLATION)
        return
    offered = websocket.scope.get("subprotocols", [])
    selected = SUBPROTOCOL if SUBPROTOCOL in offered else None
    try:
        if "token" in websocket.query_params:
            raise TokenError(
                "the participant token goes in Sec-WebSocket-Protocol (bearer.<token>), never in the URL, "
                "which is logged: update the page's ot-embedded.js"
            )
        claims = _check_token(svc, _offered_token(offered), websocket.query_params.get("sessionId"))
    except TokenError as exc:
        # uvicorn logs the accept below only at DEBUG (logredact.QuietChurn): a refusal is said here, at INFO.
        log.info("signalling socket refused (%d): %s", CLOSE_BAD_TOKEN, exc)
        await websocket.accept(subprotocol=selected)
        await websocket.close(CLOSE_BAD_TOKEN, _close_reason(str(exc)))
        return

    await websocket.accept(subprotocol=selected)
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
        log.info("signalling socket refused (%d): %s", refused.code, refused.reason)
        await websocket.close(refused.code, _close_reason(refused.reason))
        return
    log.debug("signalling socket %s joined session %s", claims.connection_id, claims.session_id)

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
        log.debug("signalling socket %s left session %s", claims.connection_id, claims.session_id)
    if close is not None:
        with contextlib.suppress(Exception):  # the peer may be gone already
            await websocket.close(*close)


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """A browser always sends Origin: the server's own (PUBLIC_BASE_URL's), one in ALLOWED_ORIGINS, or — with no
    public URL set, as on a developer's machine — the host the page was served from. A client without Origin is
    not a browser page (a script holding its own token), which the origin rule is not about."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    normalised = web_origin(origin)
    if normalised is not None and normalised in settings.websocket_origins:
        return True
    if settings.public_base_url is None:
        host = websocket.headers.get("host", "")
        return normalised is not None and normalised.split("://", 1)[1] == host.lower()
    return False


def _offered_token(offered: list[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            return protocol[len(TOKEN_PROTOCOL_PREFIX) :]
    return None


def _check_token(svc: Services, token: str | None, session_id: str | None) -> ParticipantClaims:
    if not token:
        raise TokenError("no participant token: open the room page, which offers it as the subprotocol bearer.<token>")
    if not session_id:
        raise TokenError("no sessionId: the signalling URL needs ?sessionId=…")
    return svc.tokens.verify(token, now=svc.clock(), session_id=session_id)


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    encoded = text.encode()
    return text if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."
