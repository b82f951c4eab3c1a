"""`CallDesk`: what the answer, input and event webhooks do — look facts up, let the call flow decide, record.

The decisions themselves are `conference.callflow.CallFlow`'s; this class only gathers what it needs from the
store and writes down what happened, so both backends (Vonage and the embedded engine) share one behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from dialbridge.conference.callflow import CallerQuota, CallFlow, PinDecision, PinOutcome
from dialbridge.conference.ncco import Ncco
from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import DIAL_OUT_HEADER, AnswerRequest, CallEvent, PinInput
from dialbridge.store.dial_outs import OPEN_STATES, DialOutStore
from dialbridge.store.store import PinRecord, Store

log = logging.getLogger(__name__)

LONGEST_PIN_TTL_S = 5.0

# What a call's record says after each PIN decision.
CALL_STATUS = {
    PinOutcome.ACCEPTED: "in_conference",
    PinOutcome.REJECTED: "awaiting_pin",
    PinOutcome.EXHAUSTED: "pin_refused",
    PinOutcome.LOCKED_OUT: "locked_out",
}


class CallListener(Protocol):
    """Who hears of calls joining, changing and leaving rooms (the roster: it signals the room's browsers)."""

    def call_changed(self, room_id: str, call_uuid: str, session_id: str | None = None) -> None:
        """Called after the write that changed the call; must not block or raise."""
        ...

    async def others_present(self, room: Room, call_uuid: str, phones: int | None = None) -> int:
        """How many are in the room besides this call (browsers and phones; `phones` when already counted)."""
        ...


class CallDesk:
    def __init__(
        self,
        store: Store,
        flow: CallFlow,
        quota: CallerQuota,
        clock: Callable[[], float],
        dial_outs: DialOutStore | None = None,
    ) -> None:
        """`flow.pin_max_digits` is the shortest PIN length; the flow used grows with the longest PIN in use."""
        self.store = store
        self.quota = quota
        self.clock = clock
        self.dial_outs = dial_outs
        self.listener: CallListener | None = None
        self._min_pin_length = flow.pin_max_digits
        self._flow_now = flow
        self._longest_pin_cached = flow.pin_max_digits
        self._longest_pin_until = 0.0

    async def _flow(self) -> CallFlow:
        """The call flow for the current longest PIN; it is immutable, so it is rebuilt only when that changes."""
        pin_max_digits = await self._longest_pin()
        if self._flow_now.pin_max_digits != pin_max_digits:
            self._flow_now = replace(self._flow_now, pin_max_digits=pin_max_digits)
        return self._flow_now

    async def _longest_pin(self) -> int:
        """maxDigits follows the longest PIN in use (PINs grow with the number of rooms). It changes only when the
        PIN length grows, so it is looked up at most once every few seconds rather than on every call."""
        now = time.monotonic()
        if now >= self._longest_pin_until:
            self._longest_pin_cached = max(await self.store.read(self.store.longest_pin), self._min_pin_length)
            self._longest_pin_until = now + LONGEST_PIN_TTL_S
        return self._longest_pin_cached

    async def answer(self, request: AnswerRequest) -> Ncco:
        now = self.clock()
        account_room = await self.store.read(self.store.room, request.account_room) if request.account_room else None
        if account_room is not None:
            await self.store.record_call(request.call, "in_conference", now, account_room.room_id)
            self._changed(account_room.room_id, request.call.uuid, account_room.session_id)
            others = await self.listener.others_present(account_room, request.call.uuid) if self.listener else 0
            return (await self._flow()).join_room(account_room, others_present=others)
        if request.account_room:
            log.warning(
                "call %s: its SIP account names room %s, which does not exist: asking for a PIN",
                request.call.uuid,
                request.account_room,
            )
        session_id = request.session_header
        bridge_room = await self.store.read(self.store.room_by_session, session_id) if session_id else None
        guesses_left = 1
        if bridge_room is None:
            by_caller = await self.store.read(
                self.store.caller_failures, request.call.caller, now - self.quota.window_s
            )
            guesses_left = self.quota.max_failures - by_caller
        ncco = (await self._flow()).answer(bridge_room=bridge_room, caller_guesses_left=guesses_left)
        if bridge_room is not None:
            if not await self._link_dial_out(request, bridge_room.room_id):
                log.warning(
                    "call %s was placed by a dial-out of room %s that has closed meanwhile (its gateway stopped, or "
                    "the room hung up): nobody is on the room's side, so the call ends",
                    request.call.uuid,
                    bridge_room.room_id,
                )
                return ()  # an NCCO that runs out ends the call (Vonage's rule, and the engine's)
            await self.store.record_call(request.call, "in_conference", now, bridge_room.room_id)
            self._changed(bridge_room.room_id, request.call.uuid, bridge_room.session_id)
        else:
            await self.store.record_call(request.call, "awaiting_pin" if guesses_left > 0 else "locked_out", now)
        return ncco

    async def pin_entered(self, entry: PinInput) -> Ncco:
        now = self.clock()
        guessed = bool(entry.digits)
        flow = await self._flow()

        def decide(on_call: int, by_caller: int, room: Room | None) -> tuple[PinDecision, PinRecord]:
            decision = flow.pin_entered(
                guessed=guessed,
                room=room,
                failures_on_call=on_call,
                caller_guesses_left=self.quota.max_failures - by_caller,
            )
            record = PinRecord(
                outcome=decision.outcome.value,
                failed=decision.is_failure,
                guessed=guessed,
                call_status=CALL_STATUS[decision.outcome],
                room_id=decision.room.room_id if decision.room else None,
            )
            return decision, record

        since = now - self.quota.window_s
        decision, callers = await self.store.settle_pin_entry(entry, since, now, decide)
        if decision.outcome is PinOutcome.ACCEPTED and decision.room is not None:
            room = decision.room
            self._changed(room.room_id, entry.call.uuid, room.session_id)
            if self.listener is not None:
                others = await self.listener.others_present(room, entry.call.uuid, phones=callers)
                return flow.join_room(room, others_present=others)
        return decision.ncco

    def _changed(self, room_id: str, call_uuid: str, session_id: str | None = None) -> None:
        if self.listener is not None:
            self.listener.call_changed(room_id, call_uuid, session_id)

    async def event(self, event: CallEvent, payload: Mapping[str, Any]) -> str | None:
        # A final event also ends the dial-out the call was, in the same write (the room may dial again).
        room_id = await self.store.record_call_event(event, payload, self.clock())
        if room_id is not None:
            self._changed(room_id, event.call.uuid)
        return room_id

    async def _link_dial_out(self, request: AnswerRequest, room_id: str) -> bool:
        """A call that a room's dial-out placed carries that dial-out's id; remember which call it became, but only
        for a dial-out of the very room the call is bridged into (the header alone proves nothing). False when that
        dial-out has closed before its call got here: the gateway that placed it died (`SipParticipantWatch` closed
        it), so the call would bridge into nothing and stay. DialOutStore's transactions wait for the write lock:
        on a worker thread, not the event loop."""
        dial_out_id = request.sip_header(DIAL_OUT_HEADER)
        if self.dial_outs is None or not dial_out_id:
            return True
        dial_outs = self.dial_outs

        def link() -> bool:  # the lookup and the update on one trip to the worker thread
            dial_out = dial_outs.get(dial_out_id)
            if dial_out is None or dial_out.room_id != room_id:
                return True  # not this room's dial-out: the session header alone decides, as for any call
            if dial_out.state in OPEN_STATES and dial_out.call_uuid is not None:
                return True  # a second call naming a dial-out already linked: bridged, not linked
            return dial_outs.mark_call(dial_out_id, request.call.uuid)  # refused once the dial-out has closed

        return await asyncio.to_thread(link)
