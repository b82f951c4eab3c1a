"""Phone participants as the room's browsers see them, and the keypad commands callers key during the conversation.

Pure: no I/O. Rules:
- A phone number never leaves the server whole: `mask_number` keeps the country code and the last four digits
  (`+1 ••• ••• 4567`); anything that is not a number (a SIP URI, a name) shows as "Phone caller", a withheld one
  as "Withheld number". The mask has a fixed shape whatever the number's length.
- A call's state for the page is one of ringing, answered, in_conference, ended (`call_state`); a dial-out's may
  also end as busy, no_answer, failed or completed (the gateway's report of its SIP call).
- Keypad commands are `*` then one digit: `*6` toggles one's own mute, `*1` asks how many are in the room. A `*`
  starts a command (a second `*` starts it again); any other digit after `*` ends it without effect; digits
  without a `*` before them do nothing (`keypad_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MASK = "••• •••"
WITHHELD = "Withheld number"
UNKNOWN = "Phone caller"

# ITU-T E.164 country codes of one and two digits; every other code has three.
_ONE_DIGIT_CODES = frozenset({"1", "7"})
_TWO_DIGIT_CODES = frozenset(
    {
        "20",
        "27",
        "30",
        "31",
        "32",
        "33",
        "34",
        "36",
        "39",
        "40",
        "41",
        "43",
        "44",
        "45",
        "46",
        "47",
        "48",
        "49",
        "51",
        "52",
        "53",
        "54",
        "55",
        "56",
        "57",
        "58",
        "60",
        "61",
        "62",
        "63",
        "64",
        "65",
        "66",
        "81",
        "82",
        "84",
        "86",
        "90",
        "91",
        "92",
        "93",
        "94",
        "95",
        "98",
    }
)


def country_code(digits: str) -> str:
    if digits[:1] in _ONE_DIGIT_CODES:
        return digits[:1]
    if digits[:2] in _TWO_DIGIT_CODES:
        return digits[:2]
    return digits[:3]


def mask_number(number: str) -> str:
    """`+14155554567` (or Vonage's `14155554567`) → `+1 ••• ••• 4567`; never the whole number."""
    text = number.strip()
    if not text:
        return WITHHELD
    digits = text.removeprefix("+")
    if not digits.isdigit() or not 8 <= len(digits) <= 15:
        return UNKNOWN
    return f"+{country_code(digits)} {MASK} {digits[-4:]}"


class CallState(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    IN_CONFERENCE = "in_conference"
    ENDED = "ended"
    # How a call the room placed ended, shown in its row (the page removes only "ended" rows).
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    COMPLETED = "completed"


_RINGING = frozenset({"started", "ringing", "dialling"})
_ENDED = frozenset(
    {"busy", "cancelled", "unanswered", "rejected", "failed", "timeout", "completed", "disconnected", "ended"}
)


def call_state(status: str, ended: bool = False) -> CallState:
    """The page's state for a stored call status (webhook statuses and the call desk's own)."""
    if ended or status in _ENDED:
        return CallState.ENDED
    if status == "in_conference":
        return CallState.IN_CONFERENCE
    if status in _RINGING:
        return CallState.RINGING
    return CallState.ANSWERED


@dataclass(frozen=True, slots=True)
class PhoneParticipant:
    """One phone leg of a room, as the page may see it (masked)."""

    call_id: str
    number: str  # masked
    state: CallState
    muted: bool
    detail: str | None = None  # the last status behind the state (busy, timeout, …) for dial-outs and endings
    speaking: bool | None = None  # None where the backend does not report it (Vonage: README)
    dial_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "phone",
            "id": self.call_id,
            "call_id": self.call_id,
            "name": self.number,
            "number": self.number,
            "state": self.state.value,
            "status": self.detail,
            "muted": self.muted,
            "speaking": self.speaking,
            "dial_out": self.dial_out,
        }


def phone_participant(
    call_id: str,
    number: str,
    status: str,
    muted: bool,
    *,
    ended: bool = False,
    dial_out: bool = False,
    speaking: bool | None = None,
) -> PhoneParticipant:
    return PhoneParticipant(
        call_id=call_id,
        number=mask_number(number),
        state=call_state(status, ended),
        muted=muted,
        detail=status,
        speaking=None if speaking is None else speaking and not ended,
        dial_out=dial_out,
    )


# ---- keypad commands -------------------------------------------------------------------------------------------


class KeypadCommand(StrEnum):
    TOGGLE_MUTE = "toggle_mute"  # *6
    COUNT = "count"  # *1


COMMAND_KEY = "*"
_COMMANDS = {"6": KeypadCommand.TOGGLE_MUTE, "1": KeypadCommand.COUNT}


@dataclass(frozen=True, slots=True)
class KeypadStep:
    pending: str  # what to remember for the call's next digit ("" or "*")
    command: KeypadCommand | None


def keypad_step(pending: str, digit: str) -> KeypadStep:
    """One digit keyed during the conversation, given what the call's previous digits left pending."""
    if digit == COMMAND_KEY:
        return KeypadStep(COMMAND_KEY, None)
    if pending == COMMAND_KEY:
        return KeypadStep("", _COMMANDS.get(digit))
    return KeypadStep("", None)


def mute_confirmation(muted: bool) -> str:
    return "You are muted." if muted else "You are unmuted."


def count_announcement(count: int) -> str:
    if count <= 1:
        return "You are the only participant in the room."
    return f"There are {count} participants in the room."
