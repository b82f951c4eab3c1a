"""Runs one call's NCCO, sans-I/O: the engine feeds it events with the current time and carries out the
commands it returns. It reads no clock, does no I/O and knows nothing of the application behind the webhooks.

`now` is UNIX time in seconds (`time.time()`): it schedules the input timer and stamps the input payload.

Rules (Vonage NCCO reference; every transition is in the `_start_next`/`_submit`/`_interrupt` family below):
- Actions run in order; when the NCCO runs out the call ends: Hangup("ncco_completed").
- talk / stream: Play; the next action starts when the engine reports `playback_finished` (all loops played;
  loop 0 plays until something else ends it). Digits keyed during a play without barge-in are dropped, as
  Vonage drops them.
- bargeIn: once a talk/stream has bargeIn=true, it and every further talk/stream up to the next input is
  barge-in (Vonage's "stays true until an input action is encountered"). A digit during a barge-in play stops it
  (StopPlayback), skips the talks/streams still queued before the input, and starts that input with the digit
  already counted. Without a digit the input starts when the plays have finished.
- input: collects DTMF up to maxDigits (submitted at once, timed_out false); with submitOnHash a # submits what
  was keyed (the # is not part of the digits), without it # is a digit like any other; timeOut seconds without
  a digit (counted from the input's start, then from each digit) submits with timed_out true. The result is
  posted to the input's eventUrl, or to the application's event URL when it has none (Vonage's default), and
  the call waits for the answer: an NCCO replaces the rest of the call's NCCO; an empty 2xx body carries on with
  the rest; a failed request (after the client's retry), a non-2xx or an invalid NCCO plays the apology and
  hangs up with a reason naming the failure. With no URL at all the call carries on.
- input in asynchronous mode: does not wait; from then on every digit that no synchronous input or barge-in play
  takes is posted on its own (`{"dtmf": {"digits": "5", "timed_out": false}, ...}`, the input payload with one
  digit) to its eventUrl (or the application's event URL) as it is keyed, while the NCCO carries on — through a
  conversation too. Its answers change nothing. A new NCCO (transfer, an input's or notify's answer) ends it.
- notify: posts its payload and waits for the answer, as Vonage does (notify is synchronous): a non-empty NCCO
  replaces the rest; anything else — an empty body, `[]`, a failure — carries on with the rest (Vonage: "If no
  success, continue the call flow").
- conversation: JoinConversation; the call stays there until the caller hangs up (the engine drops the runner)
  or `conversation_left`, after which the next action runs.
- connect: PlaceCall; the call waits (CONNECTING) while the engine calls the endpoint and, once it answers, bridges
  the two. `connect_ended` — the connected call ended, or never connected — runs the next action. With eventType
  "synchronous", a connect that never connected instead posts its final event to the connect's eventUrl
  (`connect_failed`) and waits for the answer, which is read as a notify's: a non-empty NCCO replaces the rest.
- transfer (call control): stops whatever runs (StopPlayback / LeaveConversation / EndConnected / forgets a pending
  webhook) and runs the given NCCO in place of the rest.
- `fail(reason)`: the apology, then Hangup(reason) — for failures found by the engine (e.g. the answer webhook).
- Once Hangup is returned the runner is ENDED and answers every event with no commands. Events that do not fit
  the state (a stale playback id, an unexpected request id, digits outside 0-9 * #) are ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from dialbridge.engine.calls.ncco import Action, Connect, Conversation, Input, Notify, Stream, Talk
from dialbridge.engine.calls.payloads import CallInfo, WebhookResult, input_payload

DTMF_DIGITS = frozenset("0123456789*#")
DEFAULT_APOLOGY = "Sorry, this call cannot be completed. Goodbye."


@dataclass(frozen=True, slots=True)
class TalkSource:
    text: str
    language: str = "en-US"
    level: float = 0.0
    loop: int = 1  # 0 = until stopped
    style: int = 0
    premium: bool = False


@dataclass(frozen=True, slots=True)
class StreamSource:
    url: str
    level: float = 0.0
    loop: int = 1  # 0 = until stopped


@dataclass(frozen=True, slots=True)
class Play:
    playback_id: int
    source: TalkSource | StreamSource
    barge_in: bool


@dataclass(frozen=True, slots=True)
class StopPlayback:
    playback_id: int


@dataclass(frozen=True, slots=True)
class PostWebhook:
    """Send `payload` to `url` (JSON body for POST) and report the outcome with `webhook_answered(request_id)`."""

    request_id: int
    url: str
    method: str
    payload: dict[str, Any]
    purpose: Literal["input", "notify", "keypad", "connect"]


@dataclass(frozen=True, slots=True)
class JoinConversation:
    name: str
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class LeaveConversation:
    name: str


@dataclass(frozen=True, slots=True)
class PlaceCall:
    """Call the connect action's endpoint and bridge it with this call once it answers."""

    connect: Connect


@dataclass(frozen=True, slots=True)
class EndConnected:
    """Hang up the call a connect placed (ringing or connected): a transfer moves this call on."""


@dataclass(frozen=True, slots=True)
class Hangup:
    reason: str


Command = Play | StopPlayback | PostWebhook | JoinConversation | LeaveConversation | PlaceCall | EndConnected | Hangup


class RunnerState(StrEnum):
    IDLE = "idle"  # not started
    PLAYING = "playing"  # a talk or stream plays
    COLLECTING = "collecting"  # an input collects digits
    AWAITING_WEBHOOK = "awaiting_webhook"  # an input's or notify's request is out; its answer decides what is next
    IN_CONVERSATION = "in_conversation"
    CONNECTING = "connecting"  # a connect's call rings or is connected
    APOLOGIZING = "apologizing"  # the apology plays; the call hangs up after it
    ENDED = "ended"  # Hangup was returned


class NccoRunner:
    def __init__(
        self,
        call: CallInfo,
        *,
        event_url: str | None = None,
        apology_text: str = DEFAULT_APOLOGY,
    ) -> None:
        self.call = call
        self._event_url = event_url  # the application's event URL: where an input without eventUrl posts
        self._apology = TalkSource(apology_text)
        self._state = RunnerState.IDLE
        self._queue: deque[Action] = deque()
        self._current: Action | None = None
        self._sticky_barge_in = False
        self._next_id = 0
        self._playback_id: int | None = None
        self._barging = False  # the current play is barge-in
        self._digits: list[str] = []
        self._deadline: float | None = None
        self._request_id: int | None = None
        self._hangup_reason: str | None = None
        self._keypad: tuple[str, str] | None = None  # an asynchronous input's (url, method): digits go there

    # -- what the engine and GET /v1/calls read ----------------------------------------------------------------

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def current_action(self) -> Action | None:
        """The NCCO action being carried out (None before the start, during the apology and after the end)."""
        return self._current

    @property
    def remaining(self) -> tuple[Action, ...]:
        return tuple(self._queue)

    @property
    def digits(self) -> str:
        """What the current input has collected so far."""
        return "".join(self._digits)

    @property
    def hangup_reason(self) -> str | None:
        return self._hangup_reason

    def next_timer(self) -> float | None:
        """When `on_timer` must be called next (UNIX time), if at all."""
        return self._deadline if self._state is RunnerState.COLLECTING else None

    # -- events --------------------------------------------------------------------------------------------------

    def start(self, ncco: Sequence[Action], now: float) -> list[Command]:
        if self._state is not RunnerState.IDLE:
            raise RuntimeError(f"the runner has already started (state {self._state})")
        self._replace(ncco)
        return self._start_next(now)

    def playback_finished(self, playback_id: int, now: float) -> list[Command]:
        if playback_id != self._playback_id:
            return []  # stale: a play that was stopped or already finished
        self._playback_id = None
        if self._state is RunnerState.APOLOGIZING:
            return self._end(self._hangup_reason or "failed")
        if self._state is RunnerState.PLAYING:
            return self._start_next(now)
        return []

    def digit(self, digit: str, now: float) -> list[Command]:
        if digit not in DTMF_DIGITS:
            return []
        if self._state is RunnerState.PLAYING and self._barging:
            return self._barge_in(digit, now)
        if self._state is RunnerState.COLLECTING:
            return self._collect(digit, now)
        if self._keypad is not None and self._state not in (RunnerState.APOLOGIZING, RunnerState.ENDED):
            url, method = self._keypad
            payload = input_payload(self.call, digit, False, now)
            return [PostWebhook(self._new_id(), url, method, payload, "keypad")]
        return []  # Vonage drops digits keyed outside an input and a barge-in play

    def webhook_answered(self, request_id: int, result: WebhookResult, now: float) -> list[Command]:
        if self._state is not RunnerState.AWAITING_WEBHOOK or request_id != self._request_id:
            return []
        self._request_id = None
        if isinstance(self._current, Input):
            if not result.ok:
                return self._apologize(f"input webhook failed: {_failure(result)}")
            if result.ncco is not None:
                self._replace(result.ncco)
        elif result.ok and result.ncco:  # notify, connect: only a non-empty NCCO changes the course
            self._replace(result.ncco)
        return self._start_next(now)

    def conversation_left(self, now: float) -> list[Command]:
        if self._state is not RunnerState.IN_CONVERSATION:
            return []
        return self._start_next(now)

    def connect_ended(self, now: float) -> list[Command]:
        """The connect's call is over, or never connected: on with the next action."""
        if self._state is not RunnerState.CONNECTING:
            return []
        return self._start_next(now)

    def connect_failed(self, url: str, method: str, payload: dict[str, Any], now: float) -> list[Command]:
        """A synchronous connect never connected: its final event goes to `url`, whose answer may hold an NCCO."""
        if self._state is not RunnerState.CONNECTING:
            return []
        return self._post(url, method, payload, "connect")

    def transfer(self, ncco: Sequence[Action], now: float) -> list[Command]:
        if self._state is RunnerState.ENDED:
            return []
        commands = self._interrupt()
        self._replace(ncco)
        return commands + self._start_next(now)

    def on_timer(self, now: float) -> list[Command]:
        if self._state is RunnerState.COLLECTING and self._deadline is not None and now >= self._deadline:
            return self._submit(timed_out=True, now=now)
        return []

    def fail(self, reason: str, now: float) -> list[Command]:
        """Apologise and hang up with `reason`, whatever runs (e.g. the answer webhook failed)."""
        if self._state in (RunnerState.ENDED, RunnerState.APOLOGIZING):
            return []
        return self._interrupt() + self._apologize(reason)

    # -- transitions ---------------------------------------------------------------------------------------------

    def _replace(self, ncco: Sequence[Action]) -> None:
        """A new NCCO takes the place of the rest of the current one."""
        self._queue = deque(ncco)
        self._sticky_barge_in = False
        self._keypad = None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _start_next(self, now: float) -> list[Command]:
        self._digits, self._deadline, self._barging = [], None, False
        if not self._queue:
            return self._end("ncco_completed")
        action = self._current = self._queue.popleft()
        if isinstance(action, Talk | Stream):
            self._sticky_barge_in = self._barging = action.barge_in or self._sticky_barge_in
            self._playback_id = self._new_id()
            self._state = RunnerState.PLAYING
            return [Play(self._playback_id, _source(action), self._barging)]
        if isinstance(action, Input) and action.asynchronous:
            url = action.event_url[0] if action.event_url else self._event_url
            if url is not None:
                self._keypad = (url, action.event_method)
            return self._start_next(now)
        if isinstance(action, Input):
            self._sticky_barge_in = False
            self._deadline = now + action.time_out
            self._state = RunnerState.COLLECTING
            return []
        if isinstance(action, Conversation):
            self._state = RunnerState.IN_CONVERSATION
            return [JoinConversation(action.name, action)]
        if isinstance(action, Connect):
            self._state = RunnerState.CONNECTING
            return [PlaceCall(action)]
        assert isinstance(action, Notify)
        return self._post(action.event_url[0], action.event_method, action.payload, "notify")

    def _barge_in(self, digit: str, now: float) -> list[Command]:
        assert self._playback_id is not None
        commands: list[Command] = [StopPlayback(self._playback_id)]
        self._playback_id = None
        while self._queue and isinstance(self._queue[0], Talk | Stream):
            self._queue.popleft()  # barge-in cuts the whole prompt short, up to the input
        if not (self._queue and isinstance(self._queue[0], Input)):
            return commands + self._start_next(now)  # an NCCO built without its input: the digit has no taker
        commands += self._start_next(now)
        return commands + self._collect(digit, now)

    def _collect(self, digit: str, now: float) -> list[Command]:
        action = self._current
        assert isinstance(action, Input)
        if digit == "#" and action.submit_on_hash:
            return self._submit(timed_out=False, now=now)
        self._digits.append(digit)
        if len(self._digits) >= action.max_digits:
            return self._submit(timed_out=False, now=now)
        self._deadline = now + action.time_out
        return []

    def _submit(self, *, timed_out: bool, now: float) -> list[Command]:
        action = self._current
        assert isinstance(action, Input)
        url = action.event_url[0] if action.event_url else self._event_url
        payload = input_payload(self.call, "".join(self._digits), timed_out, now)
        self._digits, self._deadline = [], None
        if url is None:
            return self._start_next(now)  # nowhere to ask: carry on with the rest
        return self._post(url, action.event_method, payload, "input")

    def _post(
        self, url: str, method: str, payload: dict[str, Any], purpose: Literal["input", "notify", "connect"]
    ) -> list[Command]:
        self._request_id = self._new_id()
        self._state = RunnerState.AWAITING_WEBHOOK
        return [PostWebhook(self._request_id, url, method, payload, purpose)]

    def _interrupt(self) -> list[Command]:
        """Stop what runs now, for a transfer or a failure."""
        commands: list[Command] = []
        if self._playback_id is not None:
            commands.append(StopPlayback(self._playback_id))
        if self._state is RunnerState.IN_CONVERSATION and isinstance(self._current, Conversation):
            commands.append(LeaveConversation(self._current.name))
        if self._state is RunnerState.CONNECTING:
            commands.append(EndConnected())
        self._playback_id, self._request_id, self._deadline, self._digits = None, None, None, []
        return commands

    def _apologize(self, reason: str) -> list[Command]:
        self._hangup_reason = reason
        self._current = None
        self._queue.clear()
        self._playback_id = self._new_id()
        self._state = RunnerState.APOLOGIZING
        return [Play(self._playback_id, self._apology, barge_in=False)]

    def _end(self, reason: str) -> list[Command]:
        self._hangup_reason = reason
        self._current = None
        self._queue.clear()
        self._state = RunnerState.ENDED
        return [Hangup(reason)]


def _source(action: Talk | Stream) -> TalkSource | StreamSource:
    if isinstance(action, Talk):
        return TalkSource(action.text, action.language, action.level, action.loop, action.style, action.premium)
    return StreamSource(action.stream_url[0], action.level, action.loop)


def _failure(result: WebhookResult) -> str:
    if result.error:
        return result.error
    return f"HTTP {result.status}" if result.status is not None else "no answer"


__all__ = [
    "DEFAULT_APOLOGY",
    "CallInfo",
    "Command",
    "Hangup",
    "JoinConversation",
    "LeaveConversation",
    "NccoRunner",
    "Play",
    "PostWebhook",
    "RunnerState",
    "StopPlayback",
    "StreamSource",
    "TalkSource",
    "WebhookResult",
]
