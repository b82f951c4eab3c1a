"""Vonage Voice webhooks — answer, input, events — answering in NCCO; plus the tutorial's paths as aliases.

The embedded voice engine calls these same routes with the same payloads and signature, so the call flow has
one implementation for both backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dialbridge.conference.ncco import ncco_json
from dialbridge.conference.webhooks import AnswerRequest, CallEvent, PinInput
from dialbridge.web.errors import ApiError
from dialbridge.web.metrics import timed
from dialbridge.web.responses import JsonResponse
from dialbridge.web.services import Services, services
from dialbridge.web.signatures import SignatureError

router = APIRouter()
ServicesDep = Annotated[Services, Depends(services)]
MAX_BODY = 64 * 1024


async def signed_fields(request: Request, svc: Services) -> Mapping[str, Any]:
    """The webhook's fields (query for GET, JSON body for POST), after checking its signature if one is required."""
    if request.method == "GET":
        payload = request.scope["query_string"]
    else:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise ApiError(413, "payload_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")
        payload = await request.body()
        if len(payload) > MAX_BODY:
            raise ApiError(413, "payload_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")
    if svc.signatures is not None:
        try:
            svc.signatures.verify(request.headers.get("authorization"), payload)
        except SignatureError as exc:
            raise ApiError(401, "invalid_signature", str(exc), {"WWW-Authenticate": "Bearer"}) from None
    if request.method == "GET":
        return dict(request.query_params)
    if not payload:
        return {}
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the webhook body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise ApiError(422, "invalid_payload", "the webhook body must be a JSON object")
    return fields


@router.api_route("/webhooks/answer", methods=["GET", "POST"])
@router.api_route("/nexmo-answer", methods=["GET", "POST"], include_in_schema=False)
async def answer(request: Request, svc: ServicesDep) -> JsonResponse:
    started = timed()
    fields = await signed_fields(request, svc)
    ncco = svc.calls.answer(AnswerRequest.parse(fields))
    svc.metrics.webhook_seconds.labels("answer").observe(timed() - started)
    return JsonResponse(ncco_json(ncco))


@router.post("/webhooks/input")
@router.post("/nexmo-dtmf", include_in_schema=False)
async def input_(request: Request, svc: ServicesDep) -> JsonResponse:
    started = timed()
    fields = await signed_fields(request, svc)
    ncco = svc.calls.pin_entered(PinInput.parse(fields))
    svc.metrics.webhook_seconds.labels("input").observe(timed() - started)
    return JsonResponse(ncco_json(ncco))


@router.api_route("/webhooks/events", methods=["GET", "POST"], status_code=204)
@router.api_route("/nexmo-events", methods=["GET", "POST"], status_code=204, include_in_schema=False)
async def events(request: Request, svc: ServicesDep) -> Response:
    started = timed()
    fields = await signed_fields(request, svc)
    svc.calls.event(CallEvent.parse(fields), fields)
    svc.metrics.webhook_seconds.labels("events").observe(timed() - started)
    return Response(status_code=204)
