"""How often one source may do a thing: a sliding window per source, free of I/O (the caller passes the time).

Used wherever a stranger's request costs something real: an INVITE (a call slot, an answer webhook) in the voice
engine, a browser-phone call (a WebRTC peer in the gateway) in the web app. Memory stays bounded under a flood from
spoofed or many sources: past `max_sources`, the source heard from least recently is forgotten. A flood can then
only make the window forget some sources (what they do is still bounded by the caller's total caps); it never
refuses a new source because the table is full, which would let spoofed packets lock real callers out.
"""

from __future__ import annotations

from collections import deque
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
        self._seen: dict[Source, deque[float]] = {}

    def allow(self, source: Source, now: float) -> bool:
        """Count an event of `source` at `now` if it is within its limit (True), or refuse it, uncounted (False)."""
        seen = self._seen.pop(source, None)  # re-inserted below: the dict's order is the order of last activity
        if seen is None:
            seen = deque()
            if len(self._seen) >= self.max_sources:
                del self._seen[next(iter(self._seen))]
        self._seen[source] = seen
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

    @property
    def sources(self) -> int:
        return len(self._seen)
