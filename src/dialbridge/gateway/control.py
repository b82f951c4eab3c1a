"""The gateway's control API: Vonage Video's SIP dial and force-disconnect, served by the gateway itself.

    POST   /v2/project/{appId}/dial                                  {sessionId, token, sip: {uri, from?, headers?,
                                                                      auth?: {username, password}, secure?}}
                                                                      → 200 {id, connectionId, streamId}
    DELETE /v2/project/{appId}/session/{sessionId}/connection/{connectionId}  → 204 (404 when no such call is live)
    POST   /v1/browser-calls                                         {sdp} → 201 {call_id, sdp}: a browser phone's
                                                                      offer, answered; the gateway dials in for it
    DELETE /v1/browser-calls/{callId}                                 → 204 (404 when no such browser phone call)
    GET    /healthz, /metrics                                         (no authentication: probes and scrapers)

Authenticated as the voice engine's API is: `Authorization: Bearer <JWT>` signed with the local application's key
(`credentials.py`), so the official `vonage` SDK pointed at the gateway (`video_host`) sends these requests as it
sends them to Vonage. `{appId}` must be that application's id. Errors are Vonage Video's shape, `{"code": <status>,
"message": "…"}`, with the status that says what kind: 400 a request that cannot be placed as sent, 401 no or a
bad token, 403 the room refused the participant's token, 404 no such route or call, 409 the room ended the
participant as it joined, 429 the gateway is full, 502 the room's signalling (or, over TCP, the SIP peer) could not
be reached, 503 no RTP port or too many browser phones still connecting. 429 and 503 carry Retry-After.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jwt
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialbridge.credentials import TokenError, VoiceCredentials
from dialbridge.gateway.phone import BrowserPhones
from dialbridge.gateway.shell import DialRefused, DialRequest, Gateway

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_TOKEN_LENGTH: Final = 8192
MAX_HEADERS: Final = 20
MAX_FIELD_CHARS: Final = 1024
MAX_CALL_ID_CHARS: Final = 64
#: Vonage lets headers beginning X- through a SIP dial; anything else would let a caller rewrite the call's routing.
HEADER_PREFIX: Final = "x-"


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_gateway_app(
    gateway: Gateway,
    credentials: VoiceCredentials,
    *,
    phones: BrowserPhones | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Callable[[], bytes] = lambda: b"",
) -> Starlette:
    def authenticate(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
            raise _Refusal(401, "send Authorization: Bearer <JWT> signed with the application's key")
        try:
            credentials.verify(token, clock())
        except TokenError as exc:
            raise _Refusal(401, f"the JWT was refused: {exc}") from None
        if "app_id" in request.path_params and request.path_params["app_id"] != credentials.application_id:
            raise _Refusal(404, "no such project: the path's application id is not this gateway's application")

    def endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                authenticate(request)
                return await handler(request)
            except _Refusal as refusal:
                return _error(refusal.status, refusal.message)
            except DialRefused as refused:
                return _error(refused.status, refused.message, refused.retry_after)
            except Exception:
                log.exception("gateway control API: %s %s failed", request.method, request.url.path)
                return _error(500, "the gateway failed; its log has the details")

        return run

    async def dial(request: Request) -> Response:
        placed = await gateway.dial(_dial_request(await _json_object(request)))
        return _json({"id": placed.call_id, "connectionId": placed.connection_id, "streamId": placed.stream_id})

    async def disconnect(request: Request) -> Response:
        if not gateway.disconnect(request.path_params["session_id"], request.path_params["connection_id"]):
            raise _Refusal(404, "no call of the gateway has that connection in that session")
        return Response(status_code=204)

    def browser_phones() -> BrowserPhones:
        if phones is None:
            raise _Refusal(404, "this gateway takes no browser phone calls: it was started without a dial-in URI")
        return phones

    async def browser_call(request: Request) -> Response:
        calls = browser_phones()
        offer = (await _json_object(request)).get("sdp")
        if not isinstance(offer, str) or not offer:
            raise _Refusal(400, "sdp must be the browser's SDP offer, a non-empty string")
        call_id, answer = await calls.call(offer)
        return _json({"call_id": call_id, "sdp": answer}, 201)

    async def browser_hang_up(request: Request) -> Response:
        call_id = request.path_params["call_id"]
        if len(call_id) > MAX_CALL_ID_CHARS or not browser_phones().hang_up(call_id):
            raise _Refusal(404, "no browser phone call of the gateway has that id (it may have ended)")
        return Response(status_code=204)

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok", **gateway.health(), **(phones.health() if phones is not None else {})})

    async def metrics_text(_: Request) -> Response:
        return Response(metrics(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/v2/project/{app_id}/dial", endpoint(dial), methods=["POST"]),
            Route(
                "/v2/project/{app_id}/session/{session_id}/connection/{connection_id}",
                endpoint(disconnect),
                methods=["DELETE"],
            ),
            Route("/v1/browser-calls", endpoint(browser_call), methods=["POST"]),
            Route("/v1/browser-calls/{call_id}", endpoint(browser_hang_up), methods=["DELETE"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ]
    )
    app.router.redirect_slashes = False
    return app


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _Refusal(413, f"the body is over {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refusal(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise _Refusal(400, "the body is not JSON") from None
    if not isinstance(parsed, dict):
        raise _Refusal(400, "the body must be a JSON object")
    return parsed


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD_CHARS * 8:
        raise _Refusal(400, f"{name} must be a non-empty string")
    return value


def _dial_request(body: dict[str, Any]) -> DialRequest:
    session_id = _text(body, "sessionId")
    token = _text(body, "token")
    sip = body.get("sip")
    if not isinstance(sip, dict):
        raise _Refusal(400, "sip must be an object with at least uri")
    uri = _text(sip, "uri")
    from_ = _text(sip, "from", required=False)
    if sip.get("secure") is True:
        raise _Refusal(400, "sip.secure: this gateway has no TLS/SRTP; dial with secure false")
    headers = sip.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise _Refusal(400, f"sip.headers must be an object of at most {MAX_HEADERS} headers")
    for name, value in headers.items():
        if not name.lower().startswith(HEADER_PREFIX) or not _token_chars(name):
            raise _Refusal(400, f"sip.headers: {name!r} is not allowed; only headers beginning X- are passed on")
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS or any(c in value for c in "\r\n\0"):
            raise _Refusal(400, f"sip.headers: {name!r} must be a one-line string of at most {MAX_FIELD_CHARS}")
    auth = sip.get("auth")
    username = password = None
    if auth is not None:
        if not isinstance(auth, dict):
            raise _Refusal(400, "sip.auth must be {username, password}")
        username, password = _text(auth, "username"), _text(auth, "password")
    assert session_id is not None and token is not None and uri is not None
    return DialRequest(
        session_id=session_id,
        token=token,
        uri=uri,
        from_=from_,
        headers=dict(headers),
        username=username,
        password=password,
        name=_participant_name(token),
    )


def _token_chars(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)


def _participant_name(token: str) -> str:
    """The name the connection's token data gives the participant (the tutorial's `{"sip": true, "name": …}`);
    read without verifying, since the room's signalling verifies the token when the gateway presents it."""
    try:
        data = jwt.decode(token, options={"verify_signature": False}).get("data") or ""
        name = json.loads(data).get("name") if data else None
    except (jwt.PyJWTError, ValueError, AttributeError):
        return "Phone"
    return name[:200] if isinstance(name, str) and name else "Phone"


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str, retry_after: int | None = None) -> Response:
    response = _json({"code": status, "message": message}, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
