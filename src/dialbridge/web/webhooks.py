"""Vonage Voice webhooks — answer, input, events — answering in NCCO; plus the tutorial's paths as aliases.

The embedded voice engine calls these same routes with the same payloads and signature, so the call flow has
one implementation for both backends.

These are the product's high-volume endpoints (every call, every keypress), so they are served by a small ASGI
layer in front of FastAPI rather than by FastAPI routes: profiled under wrk, FastAPI's routing, dependency and
middleware layers cost more than the webhook's own work (signature, database, NCCO) did. The contract is the same
as everywhere else: JSON errors `{"error": {"code", "message"}}` with the right status, and request metrics by
route template.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from dialbridge.conference.ncco import ncco_json
from dialbridge.conference.webhooks import AnswerRequest, CallEvent, PayloadError, PinInput
from dialbridge.web.metrics import timed
from dialbridge.web.services import Services
from dialbridge.web.signatures import SignatureError

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


class WebhookRefused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


async def _answer(svc: Services, fields: Mapping[str, Any]) -> tuple[int, Any]:
    return 200, ncco_json(await svc.calls.answer(AnswerRequest.parse(fields)))


async def _input(svc: Services, fields: Mapping[str, Any]) -> tuple[int, Any]:
    return 200, ncco_json(await svc.calls.pin_entered(PinInput.parse(fields)))


async def _event(svc: Services, fields: Mapping[str, Any]) -> tuple[int, Any]:
    await svc.calls.event(CallEvent.parse(fields), fields)
    return 204, None


@dataclass(frozen=True, slots=True)
class Webhook:
    name: str
    template: str
    methods: frozenset[str]
    handle: Callable[[Services, Mapping[str, Any]], Awaitable[tuple[int, Any]]]


_ANSWER = Webhook("answer", "/webhooks/answer", frozenset({"GET", "POST"}), _answer)
_INPUT = Webhook("input", "/webhooks/input", frozenset({"POST"}), _input)
_EVENTS = Webhook("events", "/webhooks/events", frozenset({"GET", "POST"}), _event)
# The tutorial's paths stay as aliases so that a Vonage application configured from it works unchanged.
WEBHOOKS: dict[str, Webhook] = {
    "/webhooks/answer": _ANSWER,
    "/webhooks/input": _INPUT,
    "/webhooks/events": _EVENTS,
    "/nexmo-answer": _ANSWER,
    "/nexmo-dtmf": _INPUT,
    "/nexmo-events": _EVENTS,
}


class WebhookEndpoints:
    """Serves the webhook paths; every other request goes on to `app`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = WEBHOOKS.get(scope["path"]) if scope["type"] == "http" else None
        if webhook is None:
            await self.app(scope, receive, send)
            return
        started = timed()
        svc = self.services
        method = scope["method"]
        try:
            if method not in webhook.methods:
                allowed = ", ".join(sorted(webhook.methods))
                raise WebhookRefused(405, "method_not_allowed", f"use {allowed}", {"allow": allowed})
            fields = await self._signed_fields(scope, receive, method)
            status, body = await webhook.handle(svc, fields)
        except WebhookRefused as refusal:
            status, body = refusal.status, {"error": {"code": refusal.code, "message": refusal.message}}
            extra = refusal.headers
        except PayloadError as exc:
            status, body, extra = 422, {"error": {"code": "invalid_payload", "message": str(exc)}}, {}
        except Exception:
            log.exception("webhook %s failed", webhook.name)
            message = "internal error; the server log has the details"
            status, body, extra = 500, {"error": {"code": "internal_error", "message": message}}, {}
        else:
            extra = {}
            svc.metrics.observe_webhook(webhook.name, timed() - started)
        await _respond(send, status, body, extra)
        svc.metrics.count_request(webhook.template, method, str(status))

    async def _signed_fields(self, scope: Scope, receive: Receive, method: str) -> Mapping[str, Any]:
        """The webhook's fields (query for GET, JSON body for POST), once its signature is checked if required."""
        payload = scope["query_string"] if method == "GET" else await _read_body(scope, receive)
        signatures = self.services.signatures
        if signatures is not None:
            try:
                signatures.verify(_header(scope, b"authorization"), payload)
            except SignatureError as exc:
                raise WebhookRefused(401, "invalid_signature", str(exc), {"www-authenticate": "Bearer"}) from None
        if method == "GET":
            return dict(parse_qsl(payload.decode("latin-1"), keep_blank_values=True))
        if not payload:
            return {}
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise WebhookRefused(400, "invalid_json", "the webhook body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise WebhookRefused(422, "invalid_payload", "the webhook body must be a JSON object")
        return fields


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    too_large = WebhookRefused(413, "payload_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise WebhookRefused(400, "client_disconnected", "the client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: Any, extra: Mapping[str, str]) -> None:
    content = b"" if body is None else orjson.dumps(body)
    headers = [(b"content-length", str(len(content)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    headers.extend((key.encode(), value.encode()) for key, value in extra.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
