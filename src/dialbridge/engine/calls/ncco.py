"""NCCOs as the embedded voice engine reads them: a JSON array of actions, parsed into frozen dataclasses with
Vonage's defaults and limits (NCCO reference: talk, stream, input, conversation, notify, connect).

Rules:
- `parse_ncco` returns typed actions or raises `NccoError` — for any input whatsoever, never another exception.
  The message names the offending action's index and field, e.g. "action 1 (input): 'dtmf.maxDigits' must be ...".
- Supported: talk, stream, input (DTMF), conversation, notify, connect (to one `phone` or `sip` endpoint). Every
  other Vonage action (record, wait, transfer, ...) and connect endpoint (websocket, app, vbc) is refused by name:
  the engine does not pretend to run what it cannot.
- Speech input is not supported: an input of type ["speech"] alone is refused; with ["dtmf", "speech"] DTMF is
  honoured and speech ignored, which the action records in `warnings`.
- Vonage: once a talk or stream has bargeIn=true, "the next non-talk action must be an input" — an NCCO that
  breaks this is refused, since the digits that barge in would have nowhere to go.
- input `"mode": "asynchronous"` (DTMF only, and no `dtmf` settings, as Vonage requires): the input does not wait;
  each digit keyed afterwards goes to its eventUrl on its own while the NCCO carries on (see runner.py).
- Unknown fields are ignored, as Vonage's own models ignore them. Nexmo's original input form (no "type",
  the DTMF options at the top level) is still read, as DTMF.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson


class NccoError(ValueError):
    """An NCCO the embedded engine cannot run; the message says which action and field is wrong."""


MAX_TALK_CHARS = 1500  # excluding SSML tags
MAX_DIGITS_LIMIT = 20
MAX_INPUT_TIME_OUT_S = 10
SUPPORTED_ACTIONS = ("talk", "stream", "input", "conversation", "notify", "connect")
CONNECT_TIMEOUT_S = (3, 7200, 60)  # ring timeout: low, high, default (Vonage's)
CONNECT_LIMIT_S = (1, 7200, 7200)  # the connected call's length
_PHONE_NUMBER = re.compile(r"\+?[0-9]{1,20}")
_SSML_TAG = re.compile(r"<[^>]*>")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")  # an RFC 3261 token
_HEADER_VALUE = re.compile(r"[^\x00-\x1f\x7f]{0,1024}")


@dataclass(frozen=True, slots=True)
class Talk:
    text: str
    barge_in: bool = False
    loop: int = 1  # 0 = forever
    level: float = 0.0  # -1..1
    language: str = "en-US"
    style: int = 0
    premium: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    stream_url: tuple[str, ...]
    level: float = 0.0
    barge_in: bool = False
    loop: int = 1  # 0 = forever


@dataclass(frozen=True, slots=True)
class Input:
    """DTMF collection. `event_url` None means Vonage's default: the application's event URL."""

    types: tuple[str, ...] = ("dtmf",)
    max_digits: int = 4
    time_out: int = 3  # seconds of silence after the last digit (or after the input starts)
    submit_on_hash: bool = False
    event_url: tuple[str, ...] | None = None
    event_method: str = "POST"
    warnings: tuple[str, ...] = ()  # what of the action the engine does not honour (speech)
    mode: str = "synchronous"  # or "asynchronous": digits posted one by one, the NCCO carries on

    @property
    def asynchronous(self) -> bool:
        return self.mode == "asynchronous"


@dataclass(frozen=True, slots=True)
class Conversation:
    name: str
    music_on_hold_url: tuple[str, ...] | None = None
    start_on_enter: bool = True
    end_on_exit: bool = False
    record: bool = False
    can_speak: tuple[str, ...] | None = None
    can_hear: tuple[str, ...] | None = None
    mute: bool = False


@dataclass(frozen=True, slots=True)
class Notify:
    payload: dict[str, Any] = field(hash=False)
    event_url: tuple[str, ...] = ()
    event_method: str = "POST"


@dataclass(frozen=True, slots=True)
class PhoneEndpoint:
    """A phone number (E.164, `+` optional), called through the SIP trunk."""

    number: str


@dataclass(frozen=True, slots=True)
class SipEndpoint:
    uri: str
    headers: tuple[tuple[str, str], ...] = ()  # sent as X-<name> headers of the INVITE, as Vonage sends them


Endpoint = PhoneEndpoint | SipEndpoint


@dataclass(frozen=True, slots=True)
class Connect:
    """Call `endpoint` and, once it answers, bridge it with this call; the NCCO carries on when that call ends
    (or when it never connected)."""

    endpoint: Endpoint
    from_: str | None = None
    timeout: int = CONNECT_TIMEOUT_S[2]  # seconds of ringing before giving up
    limit: int = CONNECT_LIMIT_S[2]  # seconds the connected call may last
    event_url: tuple[str, ...] | None = None  # where the connected call's events go; None: the application's
    event_method: str = "POST"
    ringback_tone: str | None = None  # played to this call while the endpoint rings
    synchronous: bool = False  # eventType "synchronous": a failed connect's event may answer with an NCCO


Action = Talk | Stream | Input | Conversation | Notify | Connect


@dataclass(frozen=True, slots=True)
class TransferDestination:
    """Where a call-control transfer (PUT /v1/calls/{uuid} action=transfer) sends the call: an inline NCCO, or
    a URL to fetch one from."""

    ncco: tuple[Action, ...] | None = None
    url: str | None = None


class _Fields:
    """Typed reads of one action's fields; every failure names the action index and the field."""

    def __init__(self, index: int, name: str, data: Mapping[str, Any]) -> None:
        self.index, self.name, self.data = index, name, data

    def fail(self, key: str, problem: str) -> NoReturn:
        raise NccoError(f"action {self.index} ({self.name}): {key!r} {problem}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key)
        if value is None:
            if default is None:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self.fail(key, "must be a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def whole(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(key, "must be a whole number")
        if value != int(value):
            self.fail(key, "must be a whole number")
        number = int(value)
        if number < low or (high is not None and number > high):
            bound = f"within {low}..{high}" if high is not None else f"at least {low}"
            self.fail(key, f"must be {bound}")
        return number

    def level(self, key: str) -> float:
        value = self.data.get(key)
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
            self.fail(key, "must be a number within -1..1")
        return float(value)

    def strings(self, key: str, *, urls: bool = False, allow_empty: bool = False) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            self.fail(key, "must be an array of non-empty strings")
        if not value and not allow_empty:
            self.fail(key, "must not be empty")
        if urls and not all(item.startswith(("http://", "https://")) for item in value):
            self.fail(key, "must hold http:// or https:// URLs")
        return tuple(value)

    def method(self, key: str) -> str:
        method = self.text(key, "POST").upper()
        if method not in ("GET", "POST"):
            self.fail(key, "must be GET or POST")
        return method


def _talk(f: _Fields) -> Talk:
    text = f.text("text")
    spoken = _SSML_TAG.sub("", text)
    if not spoken.strip():
        f.fail("text", "must not be empty")
    if len(spoken) > MAX_TALK_CHARS:
        f.fail("text", f"must be at most {MAX_TALK_CHARS} characters (excluding SSML tags)")
    language = f.text("language", "en-US")
    if not language:
        f.fail("language", "must not be empty")
    return Talk(
        text=text,
        barge_in=f.flag("bargeIn", False),
        loop=f.whole("loop", 1, 0),
        level=f.level("level"),
        language=language,
        style=f.whole("style", 0, 0),
        premium=f.flag("premium", False),
    )


def _stream(f: _Fields) -> Stream:
    urls = f.strings("streamUrl", urls=True)
    if urls is None:
        f.fail("streamUrl", "is required")
    return Stream(
        stream_url=urls, level=f.level("level"), barge_in=f.flag("bargeIn", False), loop=f.whole("loop", 1, 0)
    )


def _legacy_input(f: _Fields) -> Input:
    """Nexmo's original input (no "type"; maxDigits, timeOut, submitOnHash at the top level): DTMF."""
    return Input(
        max_digits=f.whole("maxDigits", 4, 1, MAX_DIGITS_LIMIT),
        time_out=f.whole("timeOut", 3, 0, MAX_INPUT_TIME_OUT_S),
        submit_on_hash=f.flag("submitOnHash", False),
        event_url=f.strings("eventUrl", urls=True),
        event_method=f.method("eventMethod"),
    )


def _input(f: _Fields) -> Input:
    types = f.strings("type")
    if types is None:
        if f.has("dtmf") or f.has("speech"):
            f.fail("type", "is required")
        return _legacy_input(f)
    if not set(types) <= {"dtmf", "speech"} or len(set(types)) != len(types):
        f.fail("type", 'must hold "dtmf" and/or "speech", each at most once')
    if "dtmf" not in types:
        f.fail("type", "speech input is not supported by the embedded voice engine; use dtmf")
    mode = f.data.get("mode")
    if mode not in (None, "synchronous", "asynchronous"):
        f.fail("mode", 'must be "synchronous" or "asynchronous"')
    if mode == "asynchronous":
        if f.data.get("dtmf") is not None:
            f.fail("dtmf", "must be left out in asynchronous mode (Vonage sends every digit as it is keyed)")
        if "speech" in types:
            f.fail("type", 'asynchronous mode takes only "dtmf"')
        return Input(
            types=types,
            event_url=f.strings("eventUrl", urls=True),
            event_method=f.method("eventMethod"),
            mode="asynchronous",
        )
    dtmf = f.data.get("dtmf")
    if dtmf is None:
        dtmf = {}
    if not isinstance(dtmf, dict):
        f.fail("dtmf", "must be an object")
    settings = _Fields(f.index, f.name, {f"dtmf.{key}": value for key, value in dtmf.items()})
    warnings = ("speech input is not supported by the embedded voice engine: only dtmf is collected",)
    return Input(
        types=types,
        max_digits=settings.whole("dtmf.maxDigits", 4, 1, MAX_DIGITS_LIMIT),
        time_out=settings.whole("dtmf.timeOut", 3, 0, MAX_INPUT_TIME_OUT_S),
        submit_on_hash=settings.flag("dtmf.submitOnHash", False),
        event_url=f.strings("eventUrl", urls=True),
        event_method=f.method("eventMethod"),
        warnings=warnings if "speech" in types else (),
    )


def _conversation(f: _Fields) -> Conversation:
    name = f.text("name")
    if not name:
        f.fail("name", "must not be empty")
    can_speak = f.strings("canSpeak", allow_empty=True)
    mute = f.flag("mute", False)
    if can_speak is not None and mute:
        f.fail("mute", "cannot be used together with canSpeak")
    return Conversation(
        name=name,
        music_on_hold_url=f.strings("musicOnHoldUrl", urls=True),
        start_on_enter=f.flag("startOnEnter", True),
        end_on_exit=f.flag("endOnExit", False),
        record=f.flag("record", False),
        can_speak=can_speak,
        can_hear=f.strings("canHear", allow_empty=True),
        mute=mute,
    )


def _notify(f: _Fields) -> Notify:
    payload = f.data.get("payload")
    if not isinstance(payload, dict):
        f.fail("payload", "is required and must be an object")
    urls = f.strings("eventUrl", urls=True)
    if urls is None:
        f.fail("eventUrl", "is required")
    return Notify(payload=payload, event_url=urls, event_method=f.method("eventMethod"))


def _endpoint(f: _Fields) -> Endpoint:
    endpoints = f.data.get("endpoint")
    if not isinstance(endpoints, list) or len(endpoints) != 1 or not isinstance(endpoints[0], dict):
        f.fail("endpoint", "must be an array of one endpoint object")
    return _endpoint_fields(_Fields(f.index, f.name, {f"endpoint.{key}": value for key, value in endpoints[0].items()}))


def parse_endpoint(data: Any, name: str) -> Endpoint:
    """One endpoint object as a connect's or POST /v1/calls' `to` holds it; `NccoError` naming `name`'s fields."""
    if not isinstance(data, dict):
        raise NccoError(f"{name!r} must be an endpoint object")
    fields = _Fields(0, name, {f"{name}.{key}": value for key, value in data.items()})
    try:
        return _endpoint_fields(fields, name)
    except NccoError as exc:
        raise NccoError(str(exc).removeprefix(f"action 0 ({name}): ")) from None


def _endpoint_fields(fields: _Fields, prefix: str = "endpoint") -> Endpoint:
    kind = fields.text(f"{prefix}.type")
    if kind == "phone":
        number = fields.text(f"{prefix}.number")
        if not _PHONE_NUMBER.fullmatch(number):
            fields.fail(f"{prefix}.number", "must be a phone number in E.164 format")
        return PhoneEndpoint(number)
    if kind == "sip":
        uri = fields.text(f"{prefix}.uri")
        if not uri.lower().startswith("sip:"):
            fields.fail(f"{prefix}.uri", "must be a sip: URI (the embedded voice engine has no TLS: no sips:)")
        headers = fields.data.get(f"{prefix}.headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(name, str) and _HEADER_NAME.fullmatch(name) and isinstance(v, str) and _HEADER_VALUE.fullmatch(v)
            for name, v in headers.items()
        ):
            fields.fail(f"{prefix}.headers", "must be an object of header names and single-line string values")
        return SipEndpoint(uri, tuple(headers.items()))
    fields.fail(f"{prefix}.type", 'must be "phone" or "sip" (the embedded voice engine calls no other kind)')


def _connect(f: _Fields) -> Connect:
    event_type = f.data.get("eventType")
    if event_type not in (None, "synchronous"):
        f.fail("eventType", 'must be "synchronous" when given')
    ringback = f.text("ringbackTone") if f.has("ringbackTone") else None
    if ringback is not None and not ringback.startswith(("http://", "https://")):
        f.fail("ringbackTone", "must be an http:// or https:// URL")
    from_ = f.text("from") if f.has("from") else None
    return Connect(
        endpoint=_endpoint(f),
        from_=from_,
        timeout=f.whole("timeout", CONNECT_TIMEOUT_S[2], *CONNECT_TIMEOUT_S[:2]),
        limit=f.whole("limit", CONNECT_LIMIT_S[2], *CONNECT_LIMIT_S[:2]),
        event_url=f.strings("eventUrl", urls=True),
        event_method=f.method("eventMethod"),
        ringback_tone=ringback,
        synchronous=event_type == "synchronous",
    )


_PARSERS: dict[str, Callable[[_Fields], Action]] = {
    "talk": _talk,
    "stream": _stream,
    "input": _input,
    "conversation": _conversation,
    "notify": _notify,
    "connect": _connect,
}


def _check_barge_in(actions: tuple[Action, ...]) -> None:
    """Vonage: after a bargeIn talk/stream, the next action that is not a talk or stream must be an input."""
    barging_from: int | None = None
    for index, action in enumerate(actions):
        if isinstance(action, Talk | Stream):
            if action.barge_in and barging_from is None:
                barging_from = index
        elif isinstance(action, Input) and not action.asynchronous:
            barging_from = None
        elif barging_from is not None:
            break
    if barging_from is not None:
        name = "talk" if isinstance(actions[barging_from], Talk) else "stream"
        raise NccoError(
            f"action {barging_from} ({name}): 'bargeIn' true must be followed by an input action"
            " (after any further talk or stream)"
        )


def parse_ncco(data: bytes | str | list[Any]) -> tuple[Action, ...]:
    """The actions of an NCCO (raw JSON, or the already-decoded array); `NccoError` if it cannot be run."""
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise NccoError("the NCCO is not valid JSON") from None
    if not isinstance(data, list):
        raise NccoError("an NCCO must be a JSON array of actions")
    actions: list[Action] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise NccoError(f"action {index}: must be an object")
        name = item.get("action")
        if not isinstance(name, str):
            raise NccoError(f"action {index}: 'action' is required and must be a string")
        parser = _PARSERS.get(name)
        if parser is None:
            raise NccoError(f"action {index}: action {name!r} is not supported by the embedded voice engine")
        actions.append(parser(_Fields(index, name, item)))
    ncco = tuple(actions)
    _check_barge_in(ncco)
    return ncco


def parse_transfer(data: bytes | str | Mapping[str, Any]) -> TransferDestination:
    """A call-control transfer body, `{"action": "transfer", "destination": {"type": "ncco", "ncco": [...]}}` or
    `{..."destination": {"type": "ncco", "url": ["https://..."]}}`; the NCCO is parsed like any other."""
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise NccoError("the transfer body is not valid JSON") from None
    if not isinstance(data, Mapping) or data.get("action") != "transfer":
        raise NccoError("a transfer must be an object with 'action': 'transfer'")
    destination = data.get("destination")
    if not isinstance(destination, Mapping) or destination.get("type") != "ncco":
        raise NccoError("transfer: 'destination' must be an object with 'type': 'ncco'")
    if "ncco" in destination:
        return TransferDestination(ncco=parse_ncco(destination["ncco"]))
    urls = destination.get("url")
    if isinstance(urls, list) and len(urls) == 1 and isinstance(urls[0], str):
        urls = urls[0]
    if not isinstance(urls, str) or not urls.startswith(("http://", "https://")):
        raise NccoError("transfer: 'destination' needs 'ncco' (an array) or 'url' (an array of one http(s) URL)")
    return TransferDestination(url=urls)
