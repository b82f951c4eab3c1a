"""`Roster`: who is in a room (browsers and phones), the controls on phone participants, keypad commands, and the
signals that keep every browser of the room up to date.

Rules:
- Phone participants are the room's calls that have not ended (the event webhooks' records) and the room's open
  dial-outs not yet linked to a call; browsers are the embedded hub's connections (the Vonage page learns browser
  connections from its own session events, so there the list holds phones only).
- Every change of a phone participant — a webhook's write, a mute, a hang-up, a dial-out's state — is sent to the
  room's video session as a signal of type `participants`, `{"participant": {...}}`, masked like the list. Signals
  are fire-and-forget: at most `MAX_SIGNALS_IN_FLIGHT` at once (more wait their turn; past `MAX_SIGNALS_QUEUED`
  they are dropped with a warning — the page also reloads the list when it reconnects), and a failure is logged,
  never raised into the webhook that caused it.
- A call may be acted on only through a room it is in: a call of another room, or unknown, is `UnknownCall` (404)
  and no request is sent.
- Phone numbers leave this module masked only; logs name calls by uuid.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dialbridge.callcontrol import CallControl
from dialbridge.conference.participants import (
    CallState,
    KeypadCommand,
    PhoneParticipant,
    count_announcement,
    keypad_step,
    mask_number,
    mute_confirmation,
    phone_participant,
)
from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import PinInput, SpeakingReport
from dialbridge.engine.rooms.hub import SignallingHub
from dialbridge.gateway.events import ANSWERED, FINAL_STATES, RINGING
from dialbridge.platforms.base import CallGone, NotSupported, PlatformError, VideoPlatform
from dialbridge.store.dial_outs import CONFERENCE, DIALLING, LIVE, PHONE, DialOut, DialOutStore
from dialbridge.store.store import CallRecord, Store
from dialbridge.tokens import is_sip_participant

log = logging.getLogger(__name__)

SIGNAL_TYPE = "participants"
MAX_SIGNALS_IN_FLIGHT = 8
MAX_SIGNALS_QUEUED = 1000
MAX_DIAL_OUTS_REMEMBERED = 10_000


class UnknownCall(LookupError):
    """The room has no such call (unknown, or another room's)."""


class CallNotLive(Exception):
    """The call has ended: there is nothing to act on."""


class Roster:
    def __init__(
        self,
        store: Store,
        platform: VideoPlatform,
        dial_outs: DialOutStore,
        voice: CallControl | None,
        hub: SignallingHub | None,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.platform = platform
        self.dial_outs = dial_outs
        self.voice = voice
        self.hub = hub  # the embedded backend's: browsers connected to this process
        self.clock = clock
        self._slots = asyncio.Semaphore(MAX_SIGNALS_IN_FLIGHT)
        # How far each recent phone dial-out's signals have got (see dial_out_changed).
        self._dial_out_shown: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_of_call: dict[str, asyncio.Task[None]] = {}  # each call's signals go out one after the other
        # Who speaks, as the embedded engine reports it per conversation (a room's session); never stored.
        self._speaking_in: dict[str, frozenset[str]] = {}
        self._speaking: set[str] = set()

    # ---- the list --------------------------------------------------------------------------------------------
    async def participants(self, room: Room) -> list[dict[str, Any]]:
        calls = await self.store.read(self.store.calls_in_room, room.room_id)
        dial_outs = await asyncio.to_thread(self.dial_outs.for_room, room.room_id)
        placed_by = {d.call_uuid: d.kind for d in dial_outs if d.call_uuid}
        # The room's own bridge into its phone conference is no phone participant: the callers it carries are.
        listed = [
            self._phone(call, dial_out=call.uuid in placed_by).to_json()
            for call in calls
            if placed_by.get(call.uuid) != CONFERENCE
        ]
        listed += [_dial_out_participant(d).to_json() for d in dial_outs if d.call_uuid is None and _open_phone(d)]
        return self._browsers(room) + listed

    def _browsers(self, room: Room) -> list[dict[str, Any]]:
        if self.hub is None:
            return []
        # A SIP participant (the gateway bridging the conference, a phone dial-out) is not a browser: its callers
        # are listed as phones.
        return [
            {"kind": "browser", "id": connection_id, "name": _browser_name(data), "state": "in_conference"}
            for connection_id, data in self.hub.connections(room.session_id)
            if not is_sip_participant(data)
        ]

    async def others_present(self, room: Room, call_uuid: str, phones: int | None = None) -> int:
        """The room's browsers and phone callers besides `call_uuid`; `phones` when the caller counted them (a right
        PIN's write does, in its own transaction)."""
        if phones is None:
            phones = await self.store.read(self.store.callers_in_room, room.room_id, call_uuid)
        return phones + len(self._browsers(room))

    # ---- controls --------------------------------------------------------------------------------------------
    async def set_muted(self, room: Room, call_id: str, muted: bool) -> dict[str, Any]:
        call = await self._live_call_of(room, call_id)
        voice = self._voice()
        try:
            await voice.mute(call.uuid, muted)
        except CallGone as exc:
            raise CallNotLive(f"call {call_id!r} has ended: there is nothing to mute") from exc
        await self.store.set_call_muted(call.uuid, muted)
        self.call_changed(room.room_id, call.uuid)
        return self._phone(await self._call(call.uuid) or call).to_json()

    async def hang_up(self, room: Room, call_id: str) -> dict[str, Any]:
        call = await self._live_call_of(room, call_id)
        try:
            await self._voice().hang_up(call.uuid)
        except CallGone as exc:
            raise CallNotLive(f"call {call_id!r} has ended already") from exc
        # The completed event will follow from the Voice API; the list shows the hang-up at once.
        ended = phone_participant(call.uuid, call.caller, "completed", bool(call.muted), ended=True)
        self.send(room.session_id, ended)
        return ended.to_json()

    async def keypad(self, entry: PinInput) -> None:
        """One digit keyed during the conversation (asynchronous input): `*6` toggles mute, `*1` counts the room."""
        call = await self._call(entry.call.uuid)
        if call is None or call.room_id is None or call.ended_at is not None or len(entry.digits) != 1:
            return
        step = keypad_step(call.keypad, entry.digits)
        if step.pending != call.keypad:
            await self.store.set_call_keypad(call.uuid, step.pending)
        if step.command is None or self.voice is None:
            return
        try:
            await self._keypad_command(step.command, call, self.voice)
        except PlatformError:  # the caller's call ended meanwhile, or the Voice API failed: nothing to answer
            log.warning("keypad command %s for call %s failed", step.command.value, call.uuid, exc_info=True)

    async def _keypad_command(self, command: KeypadCommand, call: CallRecord, voice: CallControl) -> None:
        assert call.room_id is not None
        if command is KeypadCommand.TOGGLE_MUTE:
            muted = not call.muted
            await voice.mute(call.uuid, muted)
            await self.store.set_call_muted(call.uuid, muted)
            self.call_changed(call.room_id, call.uuid)
            await voice.talk(call.uuid, mute_confirmation(muted))
        elif command is KeypadCommand.COUNT:
            room = await self.store.read(self.store.room, call.room_id)
            others = await self.others_present(room, call.uuid) if room is not None else 0
            await voice.talk(call.uuid, count_announcement(others + 1))

    # ---- signals ---------------------------------------------------------------------------------------------
    def call_changed(self, room_id: str, call_uuid: str, session_id: str | None = None) -> None:
        """A call of the room changed (after its write): tell the room's browsers, without waiting. With the room's
        `session_id` known and nobody of it connected here (embedded), there is no one to tell and nothing to read:
        this runs for every caller's answer and PIN."""
        if session_id is not None and self.hub is not None and not self.hub.connections(session_id):
            return
        self._spawn(call_uuid, self._signal_call(room_id, call_uuid))

    def speaking(self, report: SpeakingReport) -> None:
        """The engine's report of who speaks in a conversation: each call that started or stopped speaking is sent
        to the room's browsers (when any is connected here) with the rest of its row."""
        before = self._speaking_in.pop(report.conversation, frozenset())
        if report.speaking:
            self._speaking_in[report.conversation] = report.speaking
        self._speaking.difference_update(before - report.speaking)
        self._speaking.update(report.speaking)
        if self.hub is not None and not self.hub.connections(report.conversation):
            return
        for call_uuid in before ^ report.speaking:
            self._spawn(call_uuid, self._signal_call_of_any_room(call_uuid))

    def dial_out_changed(self, room: Room, dial_out: DialOut) -> None:
        """Signal a phone dial-out's state, never one behind what was signalled already: the dial request's own
        answer ("ringing") and the gateway's report that it answered race, and the page must not go back."""
        if dial_out.kind != PHONE:
            return
        participant = _dial_out_participant(dial_out)
        rank = _DIAL_OUT_RANK.get(participant.state, _FINAL_RANK)
        if rank < self._dial_out_shown.get(dial_out.id, -1):
            return
        self._dial_out_shown[dial_out.id] = rank
        if len(self._dial_out_shown) > MAX_DIAL_OUTS_REMEMBERED:  # the oldest is long over
            del self._dial_out_shown[next(iter(self._dial_out_shown))]
        self.send(room.session_id, participant)

    def send(self, session_id: str, participant: PhoneParticipant) -> None:
        self._spawn(participant.call_id, self._signal(session_id, participant))

    async def drain(self) -> None:
        """Wait for the signals under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _spawn(self, call_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` once the signals spawned before it for the same call are out: concurrent requests to the
        platform's signal API arrive in any order, and a room's list that got a hung-up call's earlier "unmuted"
        after its "ended" would show it live again (seen on the Vonage backend under load)."""
        if len(self._tasks) >= MAX_SIGNALS_QUEUED:
            work.close()
            log.warning("participant signal dropped: %d already waiting", len(self._tasks))
            return
        previous = self._last_of_call.get(call_id)

        async def in_turn() -> None:
            if previous is not None:
                await asyncio.wait({previous})  # its outcome is its own: each signal logs its failure
            await work

        task = asyncio.get_running_loop().create_task(in_turn())
        self._last_of_call[call_id] = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._signal_done, call_id))

    def _signal_done(self, call_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._last_of_call.get(call_id) is task:
            del self._last_of_call[call_id]

    async def _signal_call(self, room_id: str, call_uuid: str) -> None:
        try:
            found = await self.store.read(self.store.call_in_room, call_uuid, room_id)
            if found is None:
                return
            call, session_id, placed_by = found
            if placed_by != CONFERENCE:  # the room's bridge, as in the list
                await self._signal(session_id, self._phone(call, dial_out=placed_by is not None))
        except Exception:
            log.exception("participant signal for call %s failed", call_uuid)

    async def _signal_call_of_any_room(self, call_uuid: str) -> None:
        call = await self._call(call_uuid)
        if call is not None and call.room_id is not None:
            await self._signal_call(call.room_id, call_uuid)

    async def _signal(self, session_id: str, participant: PhoneParticipant) -> None:
        data = json.dumps({"participant": participant.to_json()}, separators=(",", ":"), ensure_ascii=False)
        try:
            async with self._slots:
                await self.platform.signal(session_id, SIGNAL_TYPE, data)
        except Exception:
            log.warning("participant signal for call %s failed", participant.call_id, exc_info=True)

    # ---- internals -------------------------------------------------------------------------------------------
    def _voice(self) -> CallControl:
        if self.voice is None:
            raise NotSupported(
                "this server cannot control calls: the legacy API key + secret reach no Voice API; configure "
                "DIALBRIDGE_VONAGE_APPLICATION_ID + DIALBRIDGE_VONAGE_PRIVATE_KEY"
            )
        return self.voice

    async def _call(self, call_uuid: str) -> CallRecord | None:
        return await self.store.read(self.store.call, call_uuid)

    async def _live_call_of(self, room: Room, call_id: str) -> CallRecord:
        call = await self._call(call_id)
        if call is None or call.room_id != room.room_id:
            raise UnknownCall(f"room {room.room_id!r} has no call {call_id!r}")
        if call.ended_at is not None:
            raise CallNotLive(f"call {call_id!r} has ended ({call.status}): there is nothing to act on")
        return call

    def _phone(self, call: CallRecord, *, dial_out: bool = False) -> PhoneParticipant:
        # The embedded engine reports who speaks (`speaking`); Vonage's Voice API does not: unknown there.
        speaking = call.uuid in self._speaking if self.hub is not None else None
        return phone_participant(
            call.uuid,
            call.caller,
            call.status,
            bool(call.muted),
            ended=call.ended_at is not None,
            dial_out=dial_out,
            speaking=speaking,
        )


_DIAL_OUT_RANK = {CallState.RINGING: 0, CallState.ANSWERED: 1}
_FINAL_RANK = 2  # any end


def _open_phone(dial_out: DialOut) -> bool:
    return dial_out.kind == PHONE and dial_out.ended_at is None and dial_out.state in (DIALLING, LIVE)


def dial_out_state(dial_out: DialOut) -> CallState:
    """A phone dial-out's state for the page: how its SIP call went where the gateway reported it (the end it
    reported stays shown), else its record's (a hang-up by the room, or a platform that reports nothing: on Vonage a
    phone dial-out's own call record, linked by the answer webhook, then says how it goes)."""
    progress = dial_out.progress
    if progress in FINAL_STATES:
        return CallState(progress)
    if dial_out.ended_at is not None or dial_out.state not in (DIALLING, LIVE):
        return CallState.ENDED
    if progress in (RINGING, ANSWERED):
        return CallState(progress)
    # Without reports (Vonage), a placed call is as far as dial_sip's answer says: connected.
    return CallState.RINGING if dial_out.state == DIALLING else CallState.ANSWERED


def _dial_out_participant(dial_out: DialOut) -> PhoneParticipant:
    """A phone dial-out before (or without) a call record: its own state."""
    state = dial_out_state(dial_out)
    return PhoneParticipant(
        call_id=dial_out.id,
        number=mask_number(dial_out.target),
        state=state,
        muted=False,
        detail=dial_out.progress or dial_out.state,
        dial_out=True,
    )


def _browser_name(data: str) -> str:
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    name = parsed.get("name") if isinstance(parsed, dict) else None
    return str(name)[:80] if name else "Browser participant"
