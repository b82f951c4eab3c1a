"""The phone call flow: answer → PIN → conversation, as pure functions returning NCCO.

Rules (the web layer looks facts up and records outcomes; this module only decides):
- A call that carries the video session header of an existing room is the room's own phone bridge: it joins the
  conversation named after that session at once.
- A call from a SIP account that names a room (the engine's registrar authenticated it) joins that room as a right
  PIN would (`join_room`): the account's password stood in for the PIN.
- Any other caller is asked for the room PIN, followed by #.
- A caller number that has used up its quota of wrong guesses in the current window hears goodbye and nothing
  after it, at answer and at every entry, whatever it keys; the guess that uses the quota up ends the call too.
- A right PIN joins the conversation named after that room's session. A wrong or empty one is announced and the
  caller is asked again, until the call's `attempts_per_call`-th failure, which ends the call with goodbye.
- An NCCO that ends with a talk ends the call; no path yields a conversation without a name.
- A caller who joins a room with nobody in it hears that they are the first participant. With a keypad URL, the
  caller's conversation is preceded by an asynchronous input, so digits keyed in the room reach that URL one by one
  (keypad commands, `participants.keypad_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from dialbridge.conference.ncco import Conversation, DtmfInput, KeypadInput, Ncco, Talk
from dialbridge.conference.rooms import Room


@dataclass(frozen=True, slots=True)
class Prompts:
    ask_pin: str = "Welcome. Please enter the PIN of your meeting, followed by the hash key."
    wrong_pin: str = "That PIN was not recognised."
    ask_again: str = "Please enter the PIN again, followed by the hash key."
    joining: str = "Thank you. You are joining the meeting now."
    first_participant: str = "You are the first participant."
    too_many_failures: str = "Sorry, that PIN was not recognised. Goodbye."
    locked_out: str = "Sorry, too many wrong PINs have been entered from this number. Please try later. Goodbye."


@dataclass(frozen=True, slots=True)
class CallerQuota:
    """Wrong PIN guesses one caller number may make within a sliding window before it is refused outright."""

    max_failures: int = 10
    window_s: float = 15 * 60


class PinOutcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # counts as a failure; the caller may try again
    EXHAUSTED = "exhausted"  # the call's last failure: the call ends
    LOCKED_OUT = "locked_out"  # not checked at all: the caller number is locked out


@dataclass(frozen=True, slots=True)
class PinDecision:
    outcome: PinOutcome
    ncco: Ncco
    room: Room | None = None

    @property
    def is_failure(self) -> bool:
        return self.outcome in (PinOutcome.REJECTED, PinOutcome.EXHAUSTED)


@dataclass(frozen=True, slots=True)
class CallFlow:
    input_url: str
    pin_max_digits: int
    input_timeout_s: int = 5
    attempts_per_call: int = 3
    prompts: Prompts = field(default_factory=Prompts)
    keypad_url: str | None = None  # where digits keyed during the conversation go (asynchronous input)
    # The NCCOs that depend on nothing but the fields above, built once: every call hears one of them.
    _asking: Ncco = field(init=False, repr=False, compare=False)
    _asking_again: Ncco = field(init=False, repr=False, compare=False)
    _locked_out: Ncco = field(init=False, repr=False, compare=False)
    _too_many_failures: Ncco = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = {
            "_asking": self._ask(self.prompts.ask_pin),
            "_asking_again": (Talk(self.prompts.wrong_pin), *self._ask(self.prompts.ask_again)),
            "_locked_out": (Talk(self.prompts.locked_out),),
            "_too_many_failures": (Talk(self.prompts.too_many_failures),),
        }
        for name, ncco in fixed.items():
            object.__setattr__(self, name, ncco)  # frozen: set once, here

    def answer(self, *, bridge_room: Room | None, caller_guesses_left: int) -> Ncco:
        """NCCO for a new call; `bridge_room` is the room whose session header the call carries, if any."""
        if bridge_room is not None:
            return (Conversation(bridge_room.session_id),)
        if caller_guesses_left <= 0:
            return self._locked_out
        return self._asking

    def pin_entered(
        self, *, guessed: bool, room: Room | None, failures_on_call: int, caller_guesses_left: int
    ) -> PinDecision:
        """Decide on an entry: `guessed` is False for an empty one (timeout, bare #); `room` is the room the
        digits are the PIN of, if any; `caller_guesses_left` is what the caller number's quota still allows."""
        if caller_guesses_left <= 0:
            return PinDecision(PinOutcome.LOCKED_OUT, self._locked_out)
        if room is not None:
            return PinDecision(PinOutcome.ACCEPTED, self.join_room(room, others_present=1), room)
        if guessed and caller_guesses_left == 1:  # this wrong guess used up the caller's quota
            return PinDecision(PinOutcome.EXHAUSTED, self._locked_out)
        if failures_on_call + 1 >= self.attempts_per_call:
            return PinDecision(PinOutcome.EXHAUSTED, self._too_many_failures)
        return PinDecision(PinOutcome.REJECTED, self._asking_again)

    def join_room(self, room: Room, *, others_present: int) -> Ncco:
        """What a caller with the right PIN hears and does: `others_present` counts the room's browsers and other
        phones at that moment."""
        talks = [Talk(self.prompts.joining)]
        if others_present <= 0:
            talks.append(Talk(self.prompts.first_participant))
        keypad = (KeypadInput(self.keypad_url),) if self.keypad_url else ()
        return (*talks, *keypad, Conversation(room.session_id))

    def _ask(self, text: str) -> Ncco:
        return (
            Talk(text, barge_in=True),
            DtmfInput(
                event_url=self.input_url,
                max_digits=self.pin_max_digits,
                time_out_s=self.input_timeout_s,
                submit_on_hash=True,
            ),
        )
