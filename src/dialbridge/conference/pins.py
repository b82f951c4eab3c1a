"""PIN policy: how long PINs are and how they are drawn.

Rules: PINs are drawn from the OS CSPRNG; every room has its own; and the share of the PIN space in use stays at or
below `max_fill` (1 %), so a blind guess joins a room with probability at most 1 %. The length therefore grows
with the number of rooms — older rooms keep their shorter PINs, which only lowers the fill.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

PIN_MAX_LENGTH = 20  # NCCO input accepts at most 20 digits


@dataclass(frozen=True, slots=True)
class PinPolicy:
    min_length: int = 6
    max_fill: float = 0.01

    def length_for(self, rooms: int) -> int:
        """Length for the next PIN when `rooms` rooms already hold one."""
        length = self.min_length
        while (rooms + 1) > self.max_fill * 10**length:
            length += 1
        if length > PIN_MAX_LENGTH:
            raise ValueError("PIN space exhausted")
        return length

    @staticmethod
    def draw(length: int, randbelow: Callable[[int], int] = secrets.randbelow) -> str:
        return str(randbelow(10**length)).zfill(length)
