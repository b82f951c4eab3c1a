"""Every error leaves as JSON `{"error": {"code", "message"}}` with a status that says what kind it is."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dialbridge.platforms.base import NotSupported, PlatformError
from dialbridge.tokens import TokenError
from dialbridge.web.responses import JsonResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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
        first = errors[0] if errors else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = str(first.get("msg", "invalid request"))
        return error_response(422, "invalid_payload", f"{where}: {message}" if where else message)

    @app.exception_handler(TokenError)
    async def _token(_: Request, exc: TokenError) -> JsonResponse:
        return error_response(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PlatformError)
    async def _platform(_: Request, exc: PlatformError) -> JsonResponse:
        log.warning("video platform error: %s", exc)
        return error_response(502, "platform_error", str(exc))

    @app.exception_handler(NotSupported)
    async def _unsupported(_: Request, exc: NotSupported) -> JsonResponse:
        return error_response(501, "not_implemented", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JsonResponse:
        # Starlette re-raises after this response is sent, so the server logs the traceback once.
        return error_response(500, "internal_error", "internal error; the server log has the details")
