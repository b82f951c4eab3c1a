"""Run a test's coroutine on an event loop of its own thread.

Playwright's sync API (the browser tests, in the same pytest session) keeps an event loop running on the main
thread, and asyncio refuses to start another one there: tests that need a loop of their own start it here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_in_thread(main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool = False) -> T:
    def run() -> T:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if use_uvloop else None) as runner:
            return runner.run(main())

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
