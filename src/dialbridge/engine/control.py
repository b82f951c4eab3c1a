"""The voice engine's call-control REST API: the live-call part of Vonage's Voice API, served by the engine itself.

The app controls phone participants through the official `vonage` SDK's Voice client on both backends; pointed
at the engine (`api_host`, the engine's CA bundle, the engine's application credentials) the SDK sends the same
requests as to Vonage and gets answers of the same shape:

    POST   /v1/calls                  {"to": [endpoint], "from": {"type": "phone", "number"}, "ncco" | "answer_url",
                                       "event_url"?, "ringing_timer"?, "length_timer"?}  → 201
    GET    /v1/calls                  ?status, conversation_uuid, date_start, date_end, page_size, record_index, order
    GET    /v1/calls/{uuid}
    PUT    /v1/calls/{uuid}           {"action": hangup|mute|unmute|earmuff|unearmuff|transfer, "destination"?}  → 204
    PUT    /v1/calls/{uuid}/talk      {"text", "language"?, "loop"?, "level"?, "voice_name"?, "style"?, "premium"?}
    DELETE /v1/calls/{uuid}/talk
    PUT    /v1/calls/{uuid}/stream    {"stream_url": [url], "loop"?, "level"?}
    DELETE /v1/calls/{uuid}/stream
    PUT    /v1/calls/{uuid}/dtmf      {"digits"}
    GET    /healthz, /metrics         (no authentication: probes and scrapers)

Every /v1 request carries `Authorization: Bearer <JWT>` signed with the engine's application key
(`VoiceCredentials.verify`). Errors are RFC 7807 bodies as Vonage sends them, `{"type", "title", "detail",
"instance"}` (+ `invalid_parameters` for bad fields): 400 unreadable or invalid request, 401 no or bad token,
404 no such (live) call or route, 405 wrong verb, 413 body too large. A call that has ended answers 404 to every
verb (the detail says it ended), so "hang up a caller who just left" is a NotFoundError the app can ignore.

Transfers take an inline NCCO only: `destination.url` (fetch the NCCO from an answer URL) is refused with 400.
Creating a call places it through the engine's SIP (a `phone` endpoint through the SIP trunk, a `sip` one at its
URI) and answers 201 at once, `started`; the rest arrives as events, as from Vonage. `random_from_number`,
`machine_detection` and `advanced_machine_detection` are refused with 400; the answer and event URLs are always
used with their default methods (GET, POST).

Handlers are coroutines on purpose: Starlette runs plain functions in a thread pool, and `CallControl` must only
be called on the engine's event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from dialbridge.credentials import TokenError, TokenExpired, VoiceCredentials
from dialbridge.log_text import escaped_for_log

log = logging.getLogger(__name__)

ERROR_TYPE_BASE = "https://developer.vonage.com/api-errors"
CALL_STATES = (
    "started", "ringing", "answered", "machine", "completed", "busy", "cancelled", "failed", "rejected", "timeout",
    "unanswered",
)  # fmt: skip
CALL_ACTIONS = ("hangup", "mute", "unmute", "earmuff", "unearmuff", "transfer")
RINGING_TIMER_S = (1, 120, 60)  # POST /v1/calls: low, high, default (Vonage's)
LENGTH_TIMER_S = (1, 7200, 7200)
UNSUPPORTED_CREATE_FIELDS = ("random_from_number", "machine_detection", "advanced_machine_detection")
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_BODY_BYTES = 256 * 1024  # an NCCO is a few KiB; this only bounds what one request can make the engine hold
MAX_TALK_TEXT = 1500  # as for an NCCO talk action (calls/ncco.py MAX_TALK_CHARS)
MAX_DTMF_DIGITS = 256
MAX_URL_LENGTH = 2048
MAX_UUID_LENGTH = 128
MAX_TOKEN_LENGTH = 8192
DEFAULT_LANGUAGE = "en-US"
DTMF_DIGITS = re.compile(r"^[0-9*#pABCD]+$")
LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}$")
UNSIGNED = re.compile(r"^[0-9]{1,9}$")
Checked = TypeVar("Checked")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call leg as GET /v1/calls/{uuid} shows it; `to_json()` uses Vonage's field names and formats."""

    uuid: str
    conversation_uuid: str
    from_number: str  # E.164 (with or without "+") or a sip:/sips: URI
    to_number: str
    status: str  # one of CALL_STATES
    direction: str  # "inbound"
    start_time: float | None  # Unix seconds
    end_time: float | None
    duration: int | None  # seconds

    @property
    def href(self) -> str:
        return f"/v1/calls/{self.uuid}"

    def to_json(self) -> dict[str, Any]:
        # Vonage omits what it does not know rather than sending null; numbers and times are strings.
        body: dict[str, Any] = {
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "to": _endpoint(self.to_number),
            "from": _endpoint(self.from_number),
            "status": self.status,
            "direction": self.direction,
        }
        if self.status == "completed":
            body["rate"] = body["price"] = "0.00000000"  # calls through the embedded engine cost nothing
        if self.duration is not None:
            body["duration"] = str(self.duration)
        if self.start_time is not None:
            body["start_time"] = _vonage_time(self.start_time)
        if self.end_time is not None:
            body["end_time"] = _vonage_time(self.end_time)
        body["_links"] = {"self": {"href": self.href}}
        return body


@dataclass(frozen=True, slots=True)
class NewCall:
    """A POST /v1/calls request, its fields read; the engine validates `to` and `ncco` further."""

    to: dict[str, Any]
    from_number: str
    ncco: list[dict[str, Any]] | None
    answer_url: str | None
    event_url: str | None
    ringing_timer: int
    length_timer: int


class CallControl(Protocol):
    """The engine's live calls, as the REST API drives them. Implemented by the engine core; every method is
    synchronous and is called on the engine's event loop. A `bool` result is False when there is no such live
    call (stopping a talk or stream that is not playing is not a failure)."""

    def create_call(self, call: NewCall) -> CallRecord:
        """Raises ValueError, with a message saying what is wrong, for an endpoint or NCCO it cannot use."""
        ...

    def list_calls(self, conversation_uuid: str | None = None) -> list[CallRecord]: ...

    def get_call(self, uuid: str) -> CallRecord | None: ...

    def hangup(self, uuid: str) -> bool: ...

    def set_muted(self, uuid: str, muted: bool) -> bool: ...

    def set_earmuffed(self, uuid: str, earmuffed: bool) -> bool: ...

    def transfer(self, uuid: str, ncco: list[dict[str, Any]]) -> bool:
        """Raises ValueError, with a message saying what is wrong, for an NCCO the engine cannot run."""
        ...

    def start_talk(self, uuid: str, text: str, *, language: str, loop: int, level: float) -> bool: ...

    def stop_talk(self, uuid: str) -> bool: ...

    def start_stream(self, uuid: str, url: str, *, loop: int, level: float) -> bool: ...

    def stop_stream(self, uuid: str) -> bool: ...

    def send_dtmf(self, uuid: str, digits: str) -> bool:
        """Raises ValueError for digits outside 0-9 * # p A-D."""
        ...


def create_control_app(
    control: CallControl,
    credentials: VoiceCredentials,
    *,
    clock: Callable[[], float] = time.time,
    health: Callable[[], Mapping[str, Any]] = lambda: {},
    metrics: Callable[[], bytes] = lambda: b"",
) -> ASGIApp:
    """The call-control API over `control`, accepting requests signed with `credentials`' application key.

    `health()` is merged into GET /healthz's `{"status": "ok"}` (a "status" of its own other than "ok" answers
    503); `metrics()` is GET /metrics's body, Prometheus text.
    """
    api = _CallControlApi(control, credentials, clock)

    async def healthz(_: Request) -> Response:
        try:
            body = {"status": "ok", **health()}
        except Exception:
            log.exception("the voice engine's health check failed")
            body = {"status": "error"}
        return _json(body, 200 if body.get("status") == "ok" else 503)

    async def metrics_text(_: Request) -> Response:
        return Response(metrics(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            _route(api, "/v1/calls", GET=api.list_calls, POST=api.create_call),
            _route(api, "/v1/calls/{uuid}", GET=api.get_call, PUT=api.update_call),
            _route(api, "/v1/calls/{uuid}/talk", PUT=api.start_talk, DELETE=api.stop_talk),
            _route(api, "/v1/calls/{uuid}/stream", PUT=api.start_stream, DELETE=api.stop_stream),
            _route(api, "/v1/calls/{uuid}/dtmf", PUT=api.send_dtmf),
        ],
        exception_handlers={_Problem: _problem_response, HTTPException: _http_problem, Exception: _server_problem},
    )
    app.router.redirect_slashes = False  # an API answers the path it is asked, not a redirect
    return app


# ---- the routes ------------------------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def _route(api: _CallControlApi, path: str, **by_method: Endpoint) -> Route:
    """An authenticated route. One per path, whatever its verbs, so a wrong verb's 405 lists all the path takes."""

    async def dispatch(request: Request) -> Response:
        api.authenticate(request)
        return await by_method[request.method if request.method != "HEAD" else "GET"](request)

    return Route(path, dispatch, methods=list(by_method))


class _CallControlApi:
    def __init__(self, control: CallControl, credentials: VoiceCredentials, clock: Callable[[], float]) -> None:
        self.control = control
        self.credentials = credentials
        self.clock = clock

    def authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("unauthorized", "Send Authorization: Bearer <JWT> signed with the application's key.")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized("unauthorized", "The bearer token is too long to be a Vonage application JWT.")
        try:
            self.credentials.verify(token, self.clock())
        except TokenError as exc:
            kind = "jwt-expired" if isinstance(exc, TokenExpired) else "unauthorized"
            raise _unauthorized(kind, f"The JWT was refused: {exc}.") from None

    # POST /v1/calls
    async def create_call(self, request: Request) -> Response:
        new = _new_call(await _json_object(request))
        call = self._engine_checks(lambda: self.control.create_call(new), "to" if new.ncco is None else "to or ncco")
        body = {
            "uuid": call.uuid,
            "status": call.status,
            "direction": call.direction,
            "conversation_uuid": call.conversation_uuid,
        }
        return _json(body, 201)

    # GET /v1/calls
    async def list_calls(self, request: Request) -> Response:
        query = _ListQuery.parse(request.query_params)
        calls = self.control.list_calls(query.conversation_uuid)
        matching = [call for call in calls if query.matches(call)]
        matching.sort(key=_start_order, reverse=query.order == "desc")
        page = matching[query.record_index : query.record_index + query.page_size]
        return _json(
            {
                "count": len(matching),
                "page_size": query.page_size,
                "record_index": query.record_index,
                "_links": query.links(len(matching)),
                "_embedded": {"calls": [call.to_json() for call in page]},
            }
        )

    # GET /v1/calls/{uuid}
    async def get_call(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        call = self.control.get_call(call_uuid)
        if call is None:
            raise _Problem(404, "not-found", "Not Found", f"There is no call {call_uuid}.")
        return _json(call.to_json())

    # PUT /v1/calls/{uuid}
    async def update_call(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        body = await _json_object(request)
        action = body.get("action")
        if action not in CALL_ACTIONS:
            raise _invalid("action", f"must be one of {', '.join(CALL_ACTIONS)}")
        if action == "hangup":
            done = self.control.hangup(call_uuid)
        elif action in ("mute", "unmute"):
            done = self.control.set_muted(call_uuid, action == "mute")
        elif action in ("earmuff", "unearmuff"):
            done = self.control.set_earmuffed(call_uuid, action == "earmuff")
        else:
            ncco = _transfer_ncco(body.get("destination"))
            done = self._engine_checks(lambda: self.control.transfer(call_uuid, ncco), "destination.ncco")
        self._require_live(call_uuid, done)
        return Response(status_code=204)

    # PUT /v1/calls/{uuid}/talk
    async def start_talk(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        body = await _json_object(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _invalid("text", "is required: the text to speak")
        if len(text) > MAX_TALK_TEXT:
            raise _invalid("text", f"must be at most {MAX_TALK_TEXT} characters")
        language = body.get("language", DEFAULT_LANGUAGE)
        if not isinstance(language, str) or not LANGUAGE_TAG.match(language):
            raise _invalid("language", "must be a language code such as en-US")
        # Accepted for compatibility, not used: the engine has one voice per language.
        _optional(body, "voice_name", str, "a string")
        _optional(body, "style", int, "an integer")
        _optional(body, "premium", bool, "true or false")
        loop, level = _loop(body), _level(body)
        started = self._engine_checks(
            lambda: self.control.start_talk(call_uuid, text, language=language, loop=loop, level=level), "text"
        )
        self._require_live(call_uuid, started)
        return _json({"message": "Talk started", "uuid": call_uuid})

    # DELETE /v1/calls/{uuid}/talk
    async def stop_talk(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        self._require_live(call_uuid, self.control.stop_talk(call_uuid))
        return _json({"message": "Talk stopped", "uuid": call_uuid})

    # PUT /v1/calls/{uuid}/stream
    async def start_stream(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        body = await _json_object(request)
        url = _stream_url(body.get("stream_url"))
        loop, level = _loop(body), _level(body)
        started = self._engine_checks(
            lambda: self.control.start_stream(call_uuid, url, loop=loop, level=level), "stream_url"
        )
        self._require_live(call_uuid, started)
        return _json({"message": "Stream started", "uuid": call_uuid})

    # DELETE /v1/calls/{uuid}/stream
    async def stop_stream(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        self._require_live(call_uuid, self.control.stop_stream(call_uuid))
        return _json({"message": "Stream stopped", "uuid": call_uuid})

    # PUT /v1/calls/{uuid}/dtmf
    async def send_dtmf(self, request: Request) -> Response:
        call_uuid = _call_uuid(request)
        body = await _json_object(request)
        digits = body.get("digits")
        if not isinstance(digits, str) or not DTMF_DIGITS.match(digits):
            raise _invalid("digits", "must be a string of 0-9, *, #, p (a pause) and A-D")
        if len(digits) > MAX_DTMF_DIGITS:
            raise _invalid("digits", f"must be at most {MAX_DTMF_DIGITS} characters")
        sent = self._engine_checks(lambda: self.control.send_dtmf(call_uuid, digits), "digits")
        self._require_live(call_uuid, sent)
        return _json({"message": "DTMF sent", "uuid": call_uuid})

    def _engine_checks(self, verb: Callable[[], Checked], field: str) -> Checked:
        """Run a verb whose input the engine validates further: its ValueError is the client's 400."""
        try:
            return verb()
        except ValueError as exc:
            raise _invalid(field, str(exc) or "is not valid") from None

    def _require_live(self, call_uuid: str, done: bool) -> None:
        if done:
            return
        call = self.control.get_call(call_uuid)
        if call is None:
            raise _Problem(404, "not-found", "Not Found", f"There is no call {call_uuid}.")
        raise _Problem(404, "not-found", "Not Found", f"Call {call_uuid} is no longer in progress ({call.status}).")


# ---- GET /v1/calls's query -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ListQuery:
    page_size: int
    record_index: int
    order: str
    status: str | None
    conversation_uuid: str | None
    date_start: float | None
    date_end: float | None
    filters: tuple[tuple[str, str], ...]  # as given, for the links

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> _ListQuery:
        problems: list[dict[str, str]] = []

        def number(name: str, default: int, low: int, high: int) -> int:
            raw = query.get(name)
            if raw is None:
                return default
            if UNSIGNED.match(raw) and low <= int(raw) <= high:
                return int(raw)
            problems.append({"name": name, "reason": f"must be an integer from {low} to {high}"})
            return default

        def instant(name: str) -> float | None:
            raw = query.get(name)
            if raw is None:
                return None
            try:
                when = dt.datetime.fromisoformat(raw)
            except ValueError:
                problems.append({"name": name, "reason": "must be an ISO 8601 time such as 2016-11-14T07:45:14Z"})
                return None
            return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()

        page_size = number("page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        record_index = number("record_index", 0, 0, 10**9)
        order = query.get("order", "asc").lower()
        if order not in ("asc", "desc"):
            problems.append({"name": "order", "reason": "must be asc or desc"})
        status = query.get("status")
        if status is not None and status not in CALL_STATES:
            problems.append({"name": "status", "reason": f"must be one of {', '.join(CALL_STATES)}"})
        conversation_uuid = query.get("conversation_uuid")
        if conversation_uuid is not None and not 0 < len(conversation_uuid) <= MAX_UUID_LENGTH:
            problems.append({"name": "conversation_uuid", "reason": "must be a conversation's uuid"})
        date_start, date_end = instant("date_start"), instant("date_end")
        if problems:
            raise _Problem(400, "invalid-params", "Invalid parameters", "The query is not valid.", problems)
        filters = tuple(
            (name, query[name]) for name in ("status", "conversation_uuid", "date_start", "date_end") if name in query
        )
        return cls(page_size, record_index, order, status, conversation_uuid, date_start, date_end, filters)

    def matches(self, call: CallRecord) -> bool:
        if self.status is not None and call.status != self.status:
            return False
        if self.conversation_uuid is not None and call.conversation_uuid != self.conversation_uuid:
            return False
        if self.date_start is None and self.date_end is None:
            return True
        if call.start_time is None:
            return False
        after_start = self.date_start is None or call.start_time >= self.date_start
        before_end = self.date_end is None or call.start_time <= self.date_end
        return after_start and before_end

    def links(self, count: int) -> dict[str, dict[str, str]]:
        def href(record_index: int) -> dict[str, str]:
            params = [("page_size", str(self.page_size)), ("record_index", str(record_index)), ("order", self.order)]
            return {"href": "/v1/calls?" + urlencode([*params, *self.filters])}

        last = max(0, (count - 1) // self.page_size * self.page_size)
        links = {"self": href(self.record_index), "first": href(0), "last": href(last)}
        if self.record_index + self.page_size < count:
            links["next"] = href(self.record_index + self.page_size)
        if self.record_index > 0:
            links["prev"] = href(max(0, min(self.record_index - self.page_size, last)))
        return links


def _start_order(call: CallRecord) -> tuple[float, str]:
    # Calls not started yet sort after those that have, in either order's natural reading.
    return (call.start_time if call.start_time is not None else math.inf, call.uuid)


# ---- request bodies --------------------------------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise _Problem(400, "invalid-json", "Malformed JSON", "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise _Problem(400, "invalid-json", "Malformed JSON", "The body must be a JSON object.")
    return body


def _call_uuid(request: Request) -> str:
    call_uuid: str = request.path_params["uuid"]
    if len(call_uuid) > MAX_UUID_LENGTH:
        raise _Problem(404, "not-found", "Not Found", "There is no such call.")
    return call_uuid


def _new_call(body: Mapping[str, Any]) -> NewCall:
    for name in UNSUPPORTED_CREATE_FIELDS:
        if body.get(name):
            raise _Problem(400, "unsupported", "Not supported", f"{name} is not supported by the embedded engine.")
    to = body.get("to")
    if not isinstance(to, list) or len(to) != 1 or not isinstance(to[0], dict):
        raise _invalid("to", "must be an array of one endpoint object")
    caller = body.get("from")
    number = caller.get("number") if isinstance(caller, dict) else None
    if not isinstance(caller, dict) or caller.get("type") != "phone" or not isinstance(number, str) or not number:
        raise _invalid("from", 'must be {"type": "phone", "number": "<E.164>"}')
    if len(number) > 32 or not number.removeprefix("+").isdigit():
        raise _invalid("from.number", "must be a phone number in E.164 format")
    ncco, answer = body.get("ncco"), body.get("answer_url")
    if (ncco is None) == (answer is None):
        raise _invalid("ncco", "or answer_url is required, and not both")
    if ncco is not None and (not isinstance(ncco, list) or not all(isinstance(action, dict) for action in ncco)):
        raise _invalid("ncco", "must be an array of NCCO actions")
    return NewCall(
        to=to[0],
        from_number=number,
        ncco=ncco,
        answer_url=None if answer is None else _one_url(answer, "answer_url"),
        event_url=None if body.get("event_url") is None else _one_url(body["event_url"], "event_url"),
        ringing_timer=_whole(body, "ringing_timer", *RINGING_TIMER_S),
        length_timer=_whole(body, "length_timer", *LENGTH_TIMER_S),
    )


def _one_url(value: Any, name: str) -> str:
    url = value[0] if isinstance(value, list) and len(value) == 1 else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > MAX_URL_LENGTH:
        raise _invalid(name, "must be an array of one http(s) URL")
    return url


def _whole(body: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(name, f"must be a whole number of seconds from {low} to {high}")
    return value


def _transfer_ncco(destination: Any) -> list[dict[str, Any]]:
    if not isinstance(destination, dict) or destination.get("type") != "ncco":
        raise _invalid("destination", 'must be {"type": "ncco", "ncco": [...]}')
    if "url" in destination and "ncco" not in destination:
        raise _Problem(
            400,
            "unsupported",
            "Not supported",
            "Transferring to an answer URL is not supported by the embedded engine: send the NCCO itself.",
        )
    ncco = destination.get("ncco")
    if not isinstance(ncco, list) or not ncco or not all(isinstance(action, dict) for action in ncco):
        raise _invalid("destination.ncco", "must be a non-empty array of NCCO actions")
    return ncco


def _stream_url(value: Any) -> str:
    """As `_one_url`, and a bare URL too."""
    return _one_url(value if isinstance(value, list) else [value], "stream_url")


def _loop(body: Mapping[str, Any]) -> int:
    loop = body.get("loop", 1)
    if isinstance(loop, bool) or not isinstance(loop, int) or not 0 <= loop <= 10**6:
        raise _invalid("loop", "must be a whole number of times to play, 0 for until stopped")
    return loop


def _level(body: Mapping[str, Any]) -> float:
    raw = body.get("level", 0)
    level: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        level = float(raw)
    elif isinstance(raw, str) and len(raw) <= 32:  # Vonage's reference types level as a string ("0.4")
        try:
            level = float(raw)
        except ValueError:
            level = None
    if level is None or not -1.0 <= level <= 1.0:  # NaN fails the range test too
        raise _invalid("level", "must be a number from -1 to 1")
    return level


def _optional(body: Mapping[str, Any], name: str, kind: type, described: str) -> None:
    value = body.get(name)
    if value is None:
        return
    wrong_bool = kind is int and isinstance(value, bool)
    if wrong_bool or not isinstance(value, kind):
        raise _invalid(name, f"must be {described}")


# ---- responses -------------------------------------------------------------------------------------------------


class _Problem(Exception):
    """An error answer in Vonage's (RFC 7807) shape."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        invalid_parameters: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.invalid_parameters = list(invalid_parameters)
        self.headers = dict(headers or {})


def _invalid(name: str, reason: str) -> _Problem:
    return _Problem(
        400, "invalid-params", "Invalid parameters", f"{name} {reason}.", [{"name": name, "reason": reason}]
    )


def _unauthorized(kind: str, detail: str) -> _Problem:
    headers = {"WWW-Authenticate": 'Bearer realm="dialbridge voice engine"'}
    return _Problem(401, kind, "Invalid credentials supplied", detail, headers=headers)


def _too_large() -> _Problem:
    return _Problem(413, "payload-too-large", "Payload too large", f"The body must be under {MAX_BODY_BYTES} bytes.")


def _problem_body(problem: _Problem) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"{ERROR_TYPE_BASE}#{problem.kind}",
        "title": problem.title,
        "detail": problem.detail,
        "instance": uuid_module.uuid4().hex,  # Vonage's trace id: one per error, to find it in the log
    }
    if problem.invalid_parameters:
        body["invalid_parameters"] = problem.invalid_parameters
    return body


async def _problem_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Problem)
    body = _problem_body(exc)
    # The path (percent-decoded: %0d%0a is a real CR LF) and the detail quoting it are the client's text.
    path, detail = escaped_for_log(request.url.path), escaped_for_log(exc.detail)
    if exc.status >= 500:
        log.error("call control %s %s: %s (%s)", request.method, path, detail, body["instance"])
    else:
        log.debug("call control %s %s: %s %s", request.method, path, exc.status, detail)
    return _json(body, exc.status, exc.headers, media_type="application/problem+json")


_HTTP_KINDS = {404: ("not-found", "Not Found"), 405: ("wrong-verb", "Request method not allowed")}


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", "HTTP error"))
    if exc.status_code == 404:
        detail = f"There is no {request.url.path}."
    elif exc.status_code == 405:
        detail = f"Request method {request.method!r} is not supported on {request.url.path}."
    else:
        detail = str(exc.detail)
    return await _problem_response(request, _Problem(exc.status_code, kind, title, detail, headers=exc.headers))


async def _server_problem(request: Request, exc: Exception) -> Response:
    log.error("call control %s %s failed", request.method, escaped_for_log(request.url.path), exc_info=exc)
    problem = _Problem(500, "internal-error", "Internal Error", "The engine failed to carry out the request.")
    return await _problem_response(request, problem)


def _json(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=media_type)


def _endpoint(address: str) -> dict[str, str]:
    if address.startswith(("sip:", "sips:")):
        return {"type": "sip", "uri": address}
    return {"type": "phone", "number": address.removeprefix("+")}  # Vonage writes E.164 without the "+"


def _vonage_time(unix_seconds: float) -> str:
    """Vonage's call times: ISO 8601 in UTC with milliseconds, e.g. 2024-04-19T01:34:18.000Z."""
    when = dt.datetime.fromtimestamp(unix_seconds, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
