"""Every error leaves as JSON `{"error": {"code", "message"}}` with a status that says what kind it is."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dialbridge.platforms.base import NotSupported, PlatformError
from dialbridge.rooms import RETRY_AFTER_S, RoomBeingCreated
from dialbridge.tokens import TokenError
from dialbridge.web.responses import JsonResponse

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error; the server log has the details"


def bearer_token(authorization: str | None, what: str) -> str:
    """The token of an `Authorization: Bearer <token>` header; TokenError (401) naming `what` to send otherwise."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError(f"send {what} as 'Authorization: Bearer <token>'")
    return token.strip()


class ApiError(Exception):
    """A refusal with its status, code and message: raised by the routes and by the webhook layer alike."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one shape every error leaves in, from FastAPI's handlers and the webhook layer's own rendering."""
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_payload",
}


def not_json(what: str, reason: str, position: int) -> str:
    """Why a body is not JSON, where, and what to send instead (the API and the webhooks say it alike)."""
    return f"{what} is not valid JSON ({reason}, at character {position}): send a JSON object"


def _invalid_request(error: Mapping[str, Any]) -> tuple[int, str, str]:
    """Status, code and message for FastAPI's first validation error. Two of pydantic's own messages name its
    parser rather than the request ("1: JSON decode error"; "Input should be a valid dictionary or object to
    extract fields from"): those are said in the caller's words; the others name the field and are kept."""
    location = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        position = location[1] if len(location) > 1 and isinstance(location[1], int) else 0
        reason = str(error.get("ctx", {}).get("error", "malformed"))
        return 400, "invalid_json", not_json("the request body", reason, position) + " (Content-Type: application/json)"
    if error.get("type") == "model_attributes_type" and location == ("body",):
        return 422, "invalid_payload", "the request body must be a JSON object, sent as Content-Type: application/json"
    where = ".".join(str(part) for part in location if part != "body")
    message = str(error.get("msg", "invalid request"))
    return 422, "invalid_payload", f"{where}: {message}" if where else message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JsonResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JsonResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = {str(k): str(v) for k, v in (exc.headers or {}).items()}
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JsonResponse:
        errors = exc.errors()
        return error_response(*_invalid_request(errors[0] if errors else {}))

    @app.exception_handler(TokenError)
    async def _token(_: Request, exc: TokenError) -> JsonResponse:
        return error_response(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PlatformError)
    async def _platform(_: Request, exc: PlatformError) -> JsonResponse:
        log.warning("video platform error: %s", exc)
        return error_response(502, "platform_error", str(exc))

    @app.exception_handler(RoomBeingCreated)
    async def _being_created(_: Request, exc: RoomBeingCreated) -> JsonResponse:
        return error_response(503, "room_being_created", str(exc), {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(NotSupported)
    async def _unsupported(_: Request, exc: NotSupported) -> JsonResponse:
        return error_response(501, "not_implemented", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JsonResponse:
        # Starlette re-raises after this response is sent, so the server logs the traceback once.
        return error_response(500, "internal_error", INTERNAL_ERROR)
