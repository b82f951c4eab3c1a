"""A real dialbridge server on 127.0.0.1 (uvicorn in a thread) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from live_server import LiveServer
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from dialbridge.config import Settings
from dialbridge.web.app import create_app

CHROMIUM = "/usr/bin/chromium"
PAGE_HZ = 440.0  # singing_chromium's microphone
WAIT_MS = 30_000
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]


@pytest.fixture
def live_server(db_url: str) -> Iterator[LiveServer]:
    settings = Settings(_env_file=None, database_url=db_url)  # type: ignore[call-arg]
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


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. Run `make test` (which runs "
            "scripts/install-system-deps) or `sudo apt-get install chromium`."
        )
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def singing_browser(playwright: Playwright, folder: Path, hz: float = PAGE_HZ) -> Browser:
    """Chromium whose microphone plays a steady `hz` tone (a WAV file as the fake capture device)."""
    path = folder / f"mic-{hz:g}.wav"
    rate = 48_000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * hz * np.arange(rate * 60) / rate)).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={path}"]
    )


@pytest.fixture
def singing_chromium(playwright: Playwright, tmp_path: Path) -> Iterator[Browser]:
    """Chromium singing `PAGE_HZ` into its microphone."""
    browser = singing_browser(playwright, tmp_path)
    yield browser
    browser.close()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    browser_context = chromium.new_context()
    yield browser_context
    browser_context.close()


def open_room(context: BrowserContext, server: LiveServer, room_id: str) -> Page:
    """The room's page in `context`, once its session has connected (the page's console goes to the test's output)."""
    page = context.new_page()
    page.on("console", lambda message: print(f"[{page.url}] {message.type}: {message.text}"))
    page.goto(f"{server.base_url}/room/{room_id}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    return page
