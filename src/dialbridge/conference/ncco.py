"""Typed NCCO (Vonage Call Control Object) actions — the only language the call flow speaks.

Vonage executes these in its cloud; the embedded voice engine executes the same list on this machine. Only the
actions and fields dialbridge uses are modelled; tests validate every one against `vonage_voice.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Talk:
    text: str
    barge_in: bool = False
    language: str = "en-US"

    def to_json(self) -> dict[str, Any]:
        return {"action": "talk", "text": self.text, "bargeIn": self.barge_in, "language": self.language}


@dataclass(frozen=True, slots=True)
class DtmfInput:
    """Collect DTMF digits and POST them to `event_url`; the answer to that POST replaces the rest of the call."""

    event_url: str
    max_digits: int
    time_out_s: int
    submit_on_hash: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_digits <= 20:
            raise ValueError("maxDigits must be within 1..20")
        if not 0 <= self.time_out_s <= 10:
            raise ValueError("timeOut must be within 0..10 seconds")

    def to_json(self) -> dict[str, Any]:
        return {
            "action": "input",
            "type": ["dtmf"],
            "dtmf": {
                "maxDigits": self.max_digits,
                "timeOut": self.time_out_s,
                "submitOnHash": self.submit_on_hash,
            },
            "eventUrl": [self.event_url],
            "eventMethod": "POST",
        }


@dataclass(frozen=True, slots=True)
class KeypadInput:
    """Asynchronous DTMF input: each digit goes to `event_url` as it is keyed while the NCCO carries on (the
    conversation after it). Vonage allows no dtmf settings in this mode, so none are sent."""

    event_url: str

    def to_json(self) -> dict[str, Any]:
        return {
            "action": "input",
            "type": ["dtmf"],
            "mode": "asynchronous",
            "eventUrl": [self.event_url],
            "eventMethod": "POST",
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    """Join the named conference. A nameless conversation would merge strangers: the name is mandatory."""

    name: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a conversation needs a name")

    def to_json(self) -> dict[str, Any]:
        return {"action": "conversation", "name": self.name}


Action = Talk | DtmfInput | KeypadInput | Conversation
Ncco = tuple[Action, ...]


def ncco_json(ncco: Ncco) -> list[dict[str, Any]]:
    return [action.to_json() for action in ncco]
