"""How a gateway call's SIP leg went, told to the app as Vonage Video tells it: session-monitoring callbacks.

Vonage Video reports a SIP Interconnect call's life to the application's session-monitoring callback URL as
`sipCallCreated`, `sipCallUpdated` and `sipCallDestroyed` events. The gateway posts the same events for its own
calls, signed as the voice engine signs its webhooks (HS256 JWT with `payload_hash`, the signature secret), to the
app's `/webhooks/video/sip-calls`:

    {"sessionId", "projectId", "event": "sipCallCreated" | "sipCallUpdated" | "sipCallDestroyed", "timestamp" (ms),
     "call": {"id", "connectionId", "streamId", "state", "sipStatus", "reason", "headers"}}

`state` is one of `DIAL_OUT_STATES`; `headers` are the X- headers the call was dialled with (the app finds its
dial-out by `X-dialbridge-dial-out`, which it set, before it even knows the call's id).

`call_state` (pure) maps the SIP agent's events to those states: 180/183 → ringing, 2xx → answered, 486/600 →
busy, our ring timeout → no_answer, any other final 3xx-6xx or a transport failure (before the answer or after it)
→ failed, any other end of an answered (or cancelled) call → completed. `SipCallReporter` is the thin asyncio shell
that posts them, in order, one at a time, from a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import orjson

from dialbridge.sip import CallAnswered, CallEnded, CallFailed, CallProgress
from dialbridge.webhook_signing import WebhookSignatures

log = logging.getLogger(__name__)

RINGING: Final = "ringing"
ANSWERED: Final = "answered"
BUSY: Final = "busy"
NO_ANSWER: Final = "no_answer"
FAILED: Final = "failed"
COMPLETED: Final = "completed"
DIAL_OUT_STATES: Final = (RINGING, ANSWERED, BUSY, NO_ANSWER, FAILED, COMPLETED)
FINAL_STATES: Final = frozenset({BUSY, NO_ANSWER, FAILED, COMPLETED})
BUSY_STATUSES: Final = frozenset({486, 600})  # Busy Here, Busy Everywhere

CREATED: Final = "sipCallCreated"
UPDATED: Final = "sipCallUpdated"
DESTROYED: Final = "sipCallDestroyed"
MAX_QUEUED: Final = 1000  # callbacks waiting to be posted; past this they are dropped (the app's list reloads)


@dataclass(frozen=True, slots=True)
class CallState:
    """A SIP leg's state as the app is told it, with the SIP status behind it (0 when there is none)."""

    state: str
    sip_status: int
    reason: str

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def call_state(event: object) -> CallState | None:
    """The state a SIP agent event puts a dialled leg in; None for an event that changes nothing the app sees."""
    if isinstance(event, CallProgress):
        return CallState(RINGING, event.status, event.reason)
    if isinstance(event, CallAnswered):
        return CallState(ANSWERED, 200, "OK")
    if isinstance(event, CallFailed):
        if event.no_answer:
            state = NO_ANSWER
        elif event.status in BUSY_STATUSES:
            state = BUSY
        else:
            state = FAILED
        return CallState(state, event.status, event.reason)
    if isinstance(event, CallEnded):  # a connection lost mid-call is a failure, however well the call went before
        return CallState(FAILED if event.reason == "transport_error" else COMPLETED, 0, event.reason)
    return None


def callback(
    *,
    event: str,
    project_id: str,
    session_id: str,
    call_id: str,
    connection_id: str | None,
    stream_id: str | None,
    headers: dict[str, str],
    state: CallState | None,
    now: float,
) -> dict[str, Any]:
    """One session-monitoring callback's body."""
    call: dict[str, Any] = {
        "id": call_id,
        "connectionId": connection_id,
        "streamId": stream_id,
        "headers": dict(headers),
    }
    if state is not None:
        call.update(state=state.state, sipStatus=state.sip_status, reason=state.reason)
    return {
        "sessionId": session_id,
        "projectId": project_id,
        "event": event,
        "timestamp": int(now * 1000),
        "call": call,
    }


def event_name(state: CallState) -> str:
    return DESTROYED if state.final else UPDATED


class Poster(Protocol):
    """What posts one callback: `SignedPoster`, or a test's recorder. True when the app took it."""

    async def event(self, url: str, payload: Mapping[str, Any]) -> bool: ...


class SignedPoster:
    """POSTs a callback as JSON, signed as the voice engine signs its webhooks (when a secret is configured); one
    retry on a connection failure or a 5xx. (Not the engine's WebhookClient: the gateway imports nothing of the
    engine.)"""

    def __init__(self, signature_secret: str | None, timeout_s: float = 5.0) -> None:
        self._signatures = WebhookSignatures(signature_secret) if signature_secret else None
        self._http = httpx.AsyncClient(timeout=timeout_s, headers={"user-agent": "dialbridge-gateway"})

    async def event(self, url: str, payload: Mapping[str, Any]) -> bool:
        body = orjson.dumps(payload)
        for attempt in range(2):
            headers = {"content-type": "application/json"}
            if self._signatures is not None:  # a token per attempt: the app accepts each token once
                headers["authorization"] = f"Bearer {self._signatures.sign(body)}"
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("gateway: %s to %s: %s", payload.get("event"), url, exc or type(exc).__name__)
                continue
            if response.status_code < 500:
                if response.status_code >= 300:
                    log.warning("gateway: %s to %s answered %d: %s", payload.get("event"), url,
                                response.status_code, response.text[:300])  # fmt: skip
                return response.status_code < 300
            if attempt == 0:
                await asyncio.sleep(0.1)
        return False

    async def aclose(self) -> None:
        await self._http.aclose()


class SipCallReporter:
    """Posts callbacks to `url` in the order they were queued (a call's ringing before its answer before its end),
    one at a time; a failed post is logged (the webhook client already retried it once) and the next goes on."""

    def __init__(self, url: str, poster: Poster) -> None:
        self.url = url
        self._poster = poster
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None
        self.posted = 0
        self.failed = 0

    def report(self, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("gateway: %s callback dropped: %d already waiting", payload["event"], MAX_QUEUED)
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send_all(), name="gateway-sip-call-callbacks")

    async def _send_all(self) -> None:
        while not self._queue.empty():
            payload = self._queue.get_nowait()
            started = time.monotonic()
            try:
                taken = await self._poster.event(self.url, payload)
            except Exception:
                log.exception("gateway: posting %s failed", payload["event"])
                taken = False
            if taken:
                self.posted += 1
            else:
                self.failed += 1
                log.warning(
                    "gateway: %s for call %s was not taken by %s (%.1f s)",
                    payload["event"],
                    payload["call"]["id"],
                    self.url,
                    time.monotonic() - started,
                )

    async def flush(self, timeout_s: float) -> None:
        """Let the callbacks queued so far go out (the gateway stopping: its calls' last states)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
