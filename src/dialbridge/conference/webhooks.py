"""Vonage Voice webhook payloads, parsed and checked.

Vonage's own `AnswerWebhook` model drops the `SipHeader_X-*` fields, so answer payloads are read from the raw
query or body here. Anything malformed raises `PayloadError`, which the web layer turns into a 422.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SESSION_HEADER = "X-OpenTok-SessionId"  # what Vonage Video puts on the SIP calls a session places
DIAL_OUT_HEADER = "X-dialbridge-dial-out"  # which of a room's dial-outs placed the call
MAX_DIGITS = 64
DIGITS = re.compile(rf"^[0-9*#]{{0,{MAX_DIGITS}}}$")
MAX_FIELD = 256
MAX_DURATION_S = 2**31 - 1  # what any database's INTEGER holds; 68 years is no call
MAX_NESTING = 32  # Vonage's payloads nest two or three levels; the event payload is stored as it came


def check_nesting(value: Any, limit: int = MAX_NESTING) -> None:
    """Refuse a payload nested deeper than `limit` (storing it would recurse that deep), without recursing."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return
    raise PayloadError(f"the payload nests deeper than {limit} levels")


class PayloadError(ValueError):
    """A webhook payload that cannot be acted on; the message says which field is wrong."""


def _text(fields: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise PayloadError(f"field {name!r} is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"field {name!r} must be a string")
    text = str(value)
    if len(text) > MAX_FIELD:
        raise PayloadError(f"field {name!r} is longer than {MAX_FIELD} characters")
    return text


@dataclass(frozen=True, slots=True)
class CallParty:
    uuid: str
    conversation_uuid: str
    caller: str
    callee: str

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> CallParty:
        return cls(
            uuid=_text(fields, "uuid", required=True),
            conversation_uuid=_text(fields, "conversation_uuid"),
            caller=_text(fields, "from"),
            callee=_text(fields, "to"),
        )


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    call: CallParty
    sip_headers: Mapping[str, str] = field(default_factory=dict)
    # The embedded engine's, never Vonage's: the room named by the SIP account the caller authenticated as.
    account_room: str = ""

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> AnswerRequest:
        headers = {
            key[len("SipHeader_") :].lower(): str(value)
            for key, value in fields.items()
            if key.lower().startswith("sipheader_") and isinstance(value, str | int)
        }
        return cls(call=CallParty.parse(fields), sip_headers=headers, account_room=_text(fields, "sip_account_room"))

    def sip_header(self, name: str) -> str | None:
        return self.sip_headers.get(name.lower()) or None

    @property
    def session_header(self) -> str | None:
        return self.sip_header(SESSION_HEADER)


@dataclass(frozen=True, slots=True)
class PinInput:
    """One entry keyed on a call. A sender that got no answer in time sends the same body again (the engine, as
    Vonage, once): the call, `sent_at` (the body's `timestamp`), the digits and `timed_out` name the entry, so that
    the store decides it once (`Store.settle_pin_entry`). Without a timestamp (the legacy format) an entry cannot be
    told from the next one with the same digits: each delivery is decided and counted."""

    call: CallParty
    digits: str
    timed_out: bool
    sent_at: str = ""

    @property
    def recognisable(self) -> bool:
        """Whether a second delivery of this entry can be recognised (see the class)."""
        return bool(self.sent_at)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> PinInput:
        dtmf = body.get("dtmf")
        timed_out = False
        if isinstance(dtmf, Mapping):  # current format: {"dtmf": {"digits": "1234", "timed_out": false}}
            raw = dtmf.get("digits")
            timed_out = bool(dtmf.get("timed_out", False))
        else:  # the tutorial's legacy format: {"dtmf": "1234"}
            raw = dtmf
        if raw is None:
            raw = ""
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise PayloadError("field 'dtmf.digits' must be a string of digits")
        digits = str(raw).strip()
        if not DIGITS.match(digits):
            raise PayloadError(f"field 'dtmf.digits' may hold only 0-9, * and # (at most {MAX_DIGITS})")
        return cls(
            call=CallParty.parse(body),
            digits=digits.rstrip("#"),
            timed_out=timed_out,
            sent_at=_text(body, "timestamp"),
        )


MAX_SPEAKERS = 500  # the engine's largest conference holds fewer members


@dataclass(frozen=True, slots=True)
class SpeakingReport:
    """The embedded engine's report of who speaks in one conversation (named after the room's session): the call
    uuids speaking now. Not a Vonage webhook: Vonage's Voice API reports no speaking per call."""

    conversation: str
    speaking: frozenset[str]

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> SpeakingReport:
        speaking = fields.get("speaking")
        if not isinstance(speaking, list) or len(speaking) > MAX_SPEAKERS:
            raise PayloadError(f"field 'speaking' must be a list of at most {MAX_SPEAKERS} call uuids")
        if not all(isinstance(uuid, str) and 0 < len(uuid) <= MAX_FIELD for uuid in speaking):
            raise PayloadError("field 'speaking' must hold call uuids (strings)")
        return cls(conversation=_text(fields, "conversation", required=True), speaking=frozenset(speaking))


CALL_STATUSES = frozenset(
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
        "machine",
        "human",
        "transfer",
        "input",
        "record",
    }
)
FINAL_STATUSES = frozenset({"busy", "cancelled", "unanswered", "rejected", "failed", "timeout", "completed"})


@dataclass(frozen=True, slots=True)
class CallEvent:
    call: CallParty
    status: str
    timestamp: str
    start_time: str
    end_time: str
    duration: int | None

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> CallEvent:
        status = _text(fields, "status", required=True)
        if status not in CALL_STATUSES:
            raise PayloadError(f"field 'status' has unknown value {status!r}")
        duration_raw = fields.get("duration")
        duration: int | None = None
        if duration_raw not in (None, ""):
            try:
                duration = int(str(duration_raw))
            except ValueError:
                raise PayloadError("field 'duration' must be a whole number of seconds") from None
            if not 0 <= duration <= MAX_DURATION_S:
                raise PayloadError(f"field 'duration' must be 0 to {MAX_DURATION_S} seconds")
        return cls(
            call=CallParty.parse(fields),
            status=status,
            timestamp=_text(fields, "timestamp"),
            start_time=_text(fields, "start_time"),
            end_time=_text(fields, "end_time"),
            duration=duration,
        )

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
