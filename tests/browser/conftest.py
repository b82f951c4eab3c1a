"""A real dialbridge server on 127.0.0.1 (uvicorn in a thread) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from live_server import LiveServer, live_server_on
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from dialbridge.config import Settings
from tests.helpers import RecordingControl

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
    with live_server_on(Settings(_env_file=None, database_url=db_url)) as server:  # type: ignore[call-arg]
        yield server


@pytest.fixture
def call_control(live_server: LiveServer) -> RecordingControl:
    """The live server's call-control API (mute, hang-up, talk) replaced by a recorder of its requests."""
    control = RecordingControl()
    live_server.services.roster.voice = control
    return control


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
