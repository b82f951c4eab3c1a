"""What a room is, as the call flow sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_valid_room_id(room_id: str) -> bool:
    return ROOM_ID.fullmatch(room_id) is not None


@dataclass(frozen=True, slots=True)
class Room:
    room_id: str
    session_id: str
    pin: str
