"""The handle browser tests get on the running server (see conftest.py), and the server itself: a real dialbridge app
served by uvicorn in a thread on 127.0.0.1 (also used by scripts/screenshots.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn

from dialbridge.config import Settings
from dialbridge.web.app import create_app
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


@contextlib.contextmanager
def live_server_on(settings: Settings) -> Iterator[LiveServer]:
    """The app for `settings` listening on a free port of 127.0.0.1 until the block ends."""
    app = create_app(settings)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve(sockets=[listener]))
        loop.close()

    thread = threading.Thread(target=serve, name="uvicorn", daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        thread.join(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app.state.services, loops[0])
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
