"""The hub's own duties, with stand-in sockets: a reader that stops reading must not hold up the room."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dialbridge.engine.rooms.hub import SignallingHub
from dialbridge.engine.rooms.signalling import CLOSE_SLOW_CONSUMER

NOW = 1_800_000_000.0


class RecordingSocket:
    def __init__(self, *, stalled: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str | None] | None = None
        self._unstall = asyncio.Event()
        if not stalled:
            self._unstall.set()

    async def send_text(self, data: str) -> None:
        await self._unstall.wait()
        self.sent.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def unstall(self) -> None:
        self._unstall.set()


def test_a_member_that_stops_reading_is_dropped_and_the_others_are_told() -> None:
    async def scenario() -> None:
        hub = SignallingHub(outbox_limit=3)
        fast, slow = RecordingSocket(), RecordingSocket(stalled=True)
        publisher = hub.join(fast, session_id="emb_x", connection_id="a", data="", may_publish=True, now=NOW)
        stalled = hub.join(slow, session_id="emb_x", connection_id="b", data="", may_publish=True, now=NOW)
        for _ in range(4):  # each publish queues a streamCreated for b, and b reads none of them
            hub.receive(publisher, '{"type": "publish"}', now=NOW)
            await asyncio.sleep(0)  # as between two frames from a real socket: writers get to run
        slow.unstall()
        await asyncio.sleep(0.01)  # let both writers run

        assert slow.closed is not None and slow.closed[0] == CLOSE_SLOW_CONSUMER
        assert {"type": "connectionDestroyed", "connectionId": "b", "reason": "networkDisconnected"} in fast.sent
        session = hub.session("emb_x")
        assert session is not None and session.connection_ids == ["a"]
        await hub.leave(stalled)  # the reader side notices the close later: harmless
        await hub.leave(publisher)
        assert hub.session("emb_x") is None

    run_in_own_loop(scenario())


def run_in_own_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    # Playwright's sync API (browser tests in the same run) keeps an event loop running on the main thread.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, coroutine).result(timeout=30)
