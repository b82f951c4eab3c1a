"""What the embedded engine sends to an application's webhooks, field for field as Vonage sends it (Voice API
webhook reference: answer, event, input), and the result of sending it.

Times are UNIX seconds (`time.time()`); timestamps go out as ISO 8601 UTC with milliseconds and a Z,
e.g. "2020-01-01T12:00:00.000Z", as in Vonage's examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dialbridge.engine.calls.ncco import Action

INBOUND = "inbound"  # a call the engine answered
OUTBOUND = "outbound"  # a call the engine placed (a connect, POST /v1/calls)
EMBEDDED_PRICE = "0"  # nothing is billed on this machine
EVENT_STATUSES = frozenset(
    {
        "started",
        "ringing",
        "answered",
        "busy",
        "cancelled",
        "unanswered",
        "disconnected",
        "rejected",
        "failed",
        "timeout",
        "completed",
    }
)
# Vonage's `disconnected` event (a websocket leg going away) carries no direction.
_WITHOUT_DIRECTION = frozenset({"disconnected"})


@dataclass(frozen=True, slots=True)
class CallInfo:
    """A call as the webhooks name it."""

    uuid: str
    conversation_uuid: str
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """The outcome of one webhook request, retries included. `ncco` is set only when the request expects one and
    got a valid one (None after an empty 2xx body, which Vonage reads as "carry on"); `error` says what failed."""

    ok: bool
    status: int | None
    ncco: tuple[Action, ...] | None
    error: str | None
    elapsed_s: float
    retryable: bool = False  # failed in a way that trying again later may mend (no answer, timeout, 429, 5xx)


def timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds and Z, as Vonage writes its timestamps."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parties(call: CallInfo) -> dict[str, str]:
    """The fields that name a call in every webhook."""
    return {"from": call.from_, "to": call.to, "uuid": call.uuid, "conversation_uuid": call.conversation_uuid}


def call_named_by(fields: Mapping[str, Any]) -> CallInfo:
    """The call `fields` name (`parties`' inverse; missing fields are empty)."""
    return CallInfo(
        uuid=str(fields.get("uuid", "")),
        conversation_uuid=str(fields.get("conversation_uuid", "")),
        from_=str(fields.get("from", "")),
        to=str(fields.get("to", "")),
    )


def answer_query(
    call: CallInfo,
    x_headers: Mapping[str, str] | None = None,
    *,
    endpoint_type: str | None = None,
    region_url: str | None = None,
    sip_account: str | None = None,
    sip_account_room: str | None = None,
) -> dict[str, str]:
    """The answer webhook's fields (its GET query): to, from, uuid, conversation_uuid, and `SipHeader_<name>` for
    each of the INVITE's X- headers except X-Nexmo-* ones, which Vonage does not forward. `from_user` and
    `custom_data` belong to Client SDK calls and never apply to SIP; `endpoint_type` and `region_url` are sent
    only if the engine has a value for them. `sip_account` (and its `sip_account_room`) are the engine's own, not
    Vonage's: the registrar's account the caller authenticated as, and the room that account's calls join."""
    query = {"to": call.to, "from": call.from_, "uuid": call.uuid, "conversation_uuid": call.conversation_uuid}
    if endpoint_type is not None:
        query["endpoint_type"] = endpoint_type
    if region_url is not None:
        query["region_url"] = region_url
    if sip_account is not None:
        query["sip_account"] = sip_account
    if sip_account_room is not None:
        query["sip_account_room"] = sip_account_room
    for name, value in (x_headers or {}).items():
        if name[:2].lower() == "x-" and not name.lower().startswith("x-nexmo"):
            query[f"SipHeader_{name}"] = value
    return query


def event_payload(
    status: str,
    call: CallInfo,
    now: float,
    *,
    start_time: float | None = None,
    end_time: float | None = None,
    direction: str = INBOUND,
    **extra: Any,
) -> dict[str, Any]:
    """An event webhook body for `status`. `completed` needs `start_time` and `end_time` and carries the call's
    summary (duration in whole seconds as a string, rate and price "0"); `answered` carries Vonage's empty
    start_time, rate and network. `extra` fields are added (e.g. a reason), but never replace those above."""
    if status not in EVENT_STATUSES:
        raise ValueError(f"unknown call status {status!r}")
    payload: dict[str, Any] = {**parties(call), "status": status}
    if status not in _WITHOUT_DIRECTION:
        payload["direction"] = direction
    payload.update(extra)  # before the documented fields, which always keep Vonage's format
    if status == "answered":
        payload.update(start_time=None, rate=None, network=None)
    elif status == "completed":
        if start_time is None or end_time is None:
            raise ValueError("a completed event needs start_time and end_time")
        payload.update(
            start_time=timestamp(start_time),
            end_time=timestamp(end_time),
            duration=str(max(0, round(end_time - start_time))),
            rate=EMBEDDED_PRICE,
            price=EMBEDDED_PRICE,
        )
    payload["timestamp"] = timestamp(now)
    return payload


def input_payload(call: CallInfo, digits: str, timed_out: bool, now: float) -> dict[str, Any]:
    """The body posted to an input action's eventUrl, as in Vonage's DTMF example: speech carries no results
    (the engine does no speech recognition)."""
    return {
        "speech": {"results": []},
        "dtmf": {"digits": digits, "timed_out": timed_out},
        **parties(call),
        "timestamp": timestamp(now),
    }
