"""How often one source may do a thing: a sliding window per source, free of I/O (the caller passes the time).

Used wherever a stranger's request costs something real: an INVITE (a call slot, an answer webhook) in the voice
engine, a browser-phone call (a WebRTC peer in the gateway) in the web app. Memory stays bounded under a flood from
spoofed or many sources: past `max_sources`, the source heard from least recently is forgotten. A flood can then
only make the window forget some sources (what they do is still bounded by the caller's total caps); it never
refuses a new source because the table is full, which would let spoofed packets lock real callers out. And the
table shrinks back after a flood: `forget_idle` drops the sources silent for a whole window (the caller runs it on
its clock), which cost nothing to forget, since all their events have left the window.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

Source = TypeVar("Source", bound=Hashable)

MAX_SOURCES: Final = 10_000


class SourceRate(Generic[Source]):
    """At most `limit` events per source in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float, max_sources: int = MAX_SOURCES) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"need limit >= 1 and window_s > 0, got {limit} and {window_s}")
        self.limit = limit
        self.window_s = window_s
        self.max_sources = max_sources
        # In the order of last activity (least recent first): what is forgotten first, in O(1) from the front.
        self._seen: OrderedDict[Source, deque[float]] = OrderedDict()

    def allow(self, source: Source, now: float) -> bool:
        """Count an event of `source` at `now` if it is within its limit (True), or refuse it, uncounted (False)."""
        seen = self._seen.get(source)
        if seen is None:
            seen = deque()
            if len(self._seen) >= self.max_sources:
                self._seen.popitem(last=False)
            self._seen[source] = seen
        else:
            self._seen.move_to_end(source)
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(now)
        return True

    def retry_after(self, source: Source, now: float) -> float:
        """Seconds until `source` may act again (0 when it may now)."""
        seen = self._seen.get(source)
        if seen is None or len(seen) < self.limit:
            return 0.0
        return max(0.0, seen[len(seen) - self.limit] + self.window_s - now)

    def forget_idle(self, now: float) -> None:
        """Forget the sources whose every event has left the window, from the least recently active on, stopping
        at the first still within it: O(1) but for each source forgotten. (A source refused since may have older
        events than one behind it, which then waits at most one window more.)"""
        seen = self._seen
        horizon = now - self.window_s
        while seen:
            source, events = next(iter(seen.items()))
            if events and events[-1] > horizon:
                return
            del seen[source]

    @property
    def sources(self) -> int:
        return len(self._seen)
