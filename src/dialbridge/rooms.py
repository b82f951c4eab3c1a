"""`RoomDirectory`: finds a room, or creates it with exactly one video session and one PIN.

Concurrent first visits — in this process or in other instances sharing the database — must create one session
only. The room row is claimed first (unique room id, unique PIN, a lease), the winner creates the video session
and completes the row; the others wait for it. A creator that dies leaves a lease that expires and is taken over;
a creator whose platform call fails removes its claim, so no half-written room remains.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from dialbridge.conference.pins import PinPolicy
from dialbridge.conference.rooms import Room
from dialbridge.platforms.base import VideoPlatform
from dialbridge.store.store import PinTaken, Store

LEASE_S = 30.0
POLL_S = 0.05


RETRY_AFTER_S = int(LEASE_S)  # by then the other creator has finished, or its lease has expired and is taken over


class RoomBeingCreated(Exception):
    """Another server holds the room's claim and has not finished it: nothing failed, the room is not ready yet
    (a 503 with Retry-After, not the 502 of a platform that failed)."""


@dataclass(frozen=True, slots=True)
class RoomCreated:
    room: Room
    created: bool


class RoomDirectory:
    def __init__(self, store: Store, platform: VideoPlatform, pins: PinPolicy, clock: Callable[[], float]) -> None:
        self.store = store
        self.platform = platform
        self.pins = pins
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def find(self, room_id: str) -> Room | None:
        return await self.store.read(self.store.room, room_id)

    async def get_or_create(self, room_id: str) -> RoomCreated:
        room = await self.find(room_id)
        if room is not None:
            return RoomCreated(room, created=False)
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        try:
            async with lock:  # one creator per room in this process; the lease covers other processes
                return await self._create_or_wait(room_id)
        finally:
            if not lock.locked():
                self._locks.pop(room_id, None)

    async def _create_or_wait(self, room_id: str) -> RoomCreated:
        give_up_at = self.clock() + 2 * LEASE_S
        while True:
            room = await self.find(room_id)
            if room is not None:
                return RoomCreated(room, created=False)
            now = self.clock()
            state = await self.store.read(self.store.room_state, room_id)
            if state is None:
                # Counting a million rooms takes milliseconds: done on a worker thread, not the event loop.
                rooms = await asyncio.to_thread(self.store.room_count)
                pin = self.pins.draw(self.pins.length_for(rooms), secrets.randbelow)
                try:
                    claimed = await self.store.claim_room(room_id, pin, now, now + LEASE_S)
                except PinTaken:
                    continue  # the PIN was drawn twice: draw again
                if claimed:
                    return RoomCreated(await self._create_session(room_id), created=True)
            else:
                _session, lease_until = state
                if (
                    lease_until is not None
                    and lease_until < now
                    and await self.store.take_over_room(room_id, now, now + LEASE_S)
                ):
                    return RoomCreated(await self._create_session(room_id), created=True)
            if now > give_up_at:
                raise RoomBeingCreated(
                    f"room {room_id!r} is still being created by another server; try again in {RETRY_AFTER_S} s"
                )
            await asyncio.sleep(POLL_S)

    async def _create_session(self, room_id: str) -> Room:
        try:
            session_id = await self.platform.create_session()
        except BaseException:
            await self.store.abandon_room(room_id)
            raise
        return await self.store.complete_room(room_id, session_id)


def random_room_id() -> str:
    return secrets.token_urlsafe(9)
