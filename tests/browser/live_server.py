"""The handle browser tests get on the running server (see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dialbridge.web.services import Services

T = TypeVar("T")


@dataclass
class LiveServer:
    base_url: str
    services: Services
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's own event loop (where the hub's sockets live) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)
