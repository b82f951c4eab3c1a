"""Owners' next deadlines on a heap, so that a tick with nothing due (the engine ticks every 20 ms) looks at nothing.

Each owner has at most one deadline, which `deadline_of(owner)` reads from the owner itself. `schedule(owner)` files
it after anything that may have changed it; records are never removed from the heap (lazy deletion): a record
whose deadline is no longer the one filed for its owner, or whose owner was forgotten, is skipped when it comes up.
The SIP agent keeps its transactions' and legs' deadlines the same way (`SipAgent._timers`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Owner = TypeVar("Owner", bound=Hashable)

# Past this many stale records per live one the heap is rebuilt from the live ones: a deadline filed far ahead
# (a placed call's 2-hour length limit) and then dropped would otherwise stay on the heap until its time.
_STALE_PER_LIVE = 2
_MIN_REBUILD = 64


class Deadlines(Generic[Owner]):
    def __init__(self, deadline_of: Callable[[Owner], float | None]) -> None:
        self._deadline_of = deadline_of
        self._filed: dict[Owner, float] = {}  # each owner's live record's deadline
        # (deadline, order, owner): the order breaks ties, first filed first, and owners are never compared.
        self._heap: list[tuple[float, int, Owner]] = []
        self._order = itertools.count()

    def schedule(self, owner: Owner) -> None:
        """File the owner's current deadline, unless it is the one filed already (None: it has none now)."""
        deadline = self._deadline_of(owner)
        if deadline == self._filed.get(owner):
            return
        if deadline is None:
            self.forget(owner)
            return
        self._filed[owner] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), owner))
        if len(self._heap) > _MIN_REBUILD + _STALE_PER_LIVE * len(self._filed):
            self._heap = [record for record in self._heap if self._filed.get(record[2]) == record[0]]
            heapq.heapify(self._heap)

    def forget(self, owner: Owner) -> None:
        """The owner is gone, or has no deadline now: its record, if any, goes stale."""
        self._filed.pop(owner, None)

    def pop_due(self, now: float) -> list[Owner]:
        """The owners whose filed deadline is `now` or earlier, in deadline order, each once and no longer filed:
        whoever handles one files its next deadline with `schedule` (`due` does it for them)."""
        heap, filed = self._heap, self._filed
        due: list[Owner] = []
        while heap and heap[0][0] <= now:
            deadline, _, owner = heapq.heappop(heap)
            if filed.get(owner) == deadline:
                del filed[owner]
                due.append(owner)
        return due

    @contextmanager
    def due(self, now: float) -> Iterator[list[Owner]]:
        """`pop_due(now)` for the block to handle, each owner filed again after it, whatever happened: one whose
        handler raised (the shell logs a failed tick and ticks on) or was not reached is looked at on the next tick,
        not forgotten."""
        owners = self.pop_due(now)
        try:
            yield owners
        finally:
            for owner in owners:
                self.schedule(owner)

    def __len__(self) -> int:
        """How many records the heap holds, stale ones included (bounded by the live ones: see `schedule`)."""
        return len(self._heap)
