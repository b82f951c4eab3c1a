"""The webhooks as production serves them: a real server whose HTTP protocol (server/http.py) takes webhook
requests on its direct path, never through ASGI. `webhook_client` gives a test either that or the ASGI test
client, so one test checks both ways in."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from dialbridge.server.http import DialbridgeHttpProtocol
from dialbridge.web.app import DialbridgeApp
from dialbridge.web.webhooks import WEBHOOKS, WebhookEndpoints

BOTH_PATHS = ["asgi", "direct"]  # a `request.param` for fixtures made with webhook_client


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[tuple[str, int]]:
    """`app` served by uvicorn with dialbridge's protocol on a loopback port, in a thread of its own."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", http=DialbridgeHttpProtocol, **{"lifespan": "off", **options})
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(instance.serve(sockets=[listener])), daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        thread.join(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        instance.should_exit = True
        thread.join(10)
        listener.close()


class ServedClient(httpx.Client):
    """An HTTP client of a served app, with the app at hand as on TestClient (`client.app.state.services`)."""

    def __init__(self, app: DialbridgeApp, base_url: str) -> None:
        super().__init__(base_url=base_url, timeout=10)
        self.app = app


@contextmanager
def webhook_client(way_in: str, app: DialbridgeApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """A client of `app`: through ASGI ("asgi", the test client), or over a socket to a real server ("direct"),
    where it fails the test if any webhook request reached the app through ASGI instead of the direct path."""
    if way_in == "asgi":
        with TestClient(app) as client:
            yield client
        return
    through_asgi: list[str] = []
    asgi_entry = WebhookEndpoints.__call__

    async def recording(self: WebhookEndpoints, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in WEBHOOKS:
            through_asgi.append(scope["path"])
        await asgi_entry(self, scope, receive, send)

    monkeypatch.setattr(WebhookEndpoints, "__call__", recording)
    with serving(app, lifespan="on") as (host, port), ServedClient(app, f"http://{host}:{port}") as client:
        yield client
    assert through_asgi == [], f"webhook requests that missed the direct path: {through_asgi}"
