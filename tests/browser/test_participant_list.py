"""The room page's phone participant list in Chromium on the embedded backend: a caller arriving and leaving shows
within a second of the webhook that caused it (the server's `participants` signal over the real signalling
socket), and the page's Mute button mutes the call through the call-control API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import LiveServer
from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.browser

WAIT_MS = 30_000
SIGNAL_DEADLINE_MS = 1000
CALLER = "14155559876"


class RecordingControl:
    """Stands in for the voice engine's call-control API (no engine runs here)."""

    name = "recording"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def mute(self, call_uuid: str, muted: bool) -> None:
        self.requests.append(("mute" if muted else "unmute", call_uuid))

    async def hang_up(self, call_uuid: str) -> None:
        self.requests.append(("hangup", call_uuid))

    async def talk(self, call_uuid: str, text: str) -> None:
        self.requests.append(("talk", call_uuid))


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    browser_context = chromium.new_context()
    yield browser_context
    browser_context.close()


def open_room(context: BrowserContext, server: LiveServer, room_id: str) -> Page:
    page = context.new_page()
    page.on("console", lambda message: print(f"[{page.url}] {message.type}: {message.text}"))
    page.goto(f"{server.base_url}/room/{room_id}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    return page


def webhook(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.request(method, server.base_url + path, timeout=5, **kwargs)
    assert response.status_code in (200, 204), response.text
    return response


def test_a_caller_arrives_is_muted_from_the_page_and_leaves_live(
    context: BrowserContext, live_server: LiveServer
) -> None:
    control = RecordingControl()
    live_server.services.roster.voice = control
    page = open_room(context, live_server, "standup")
    pin = page.evaluate("() => window.dialbridgeRoom.config.pin")
    call = {"uuid": "call-1", "conversation_uuid": "CON-1", "from": CALLER, "to": "14155550100"}
    row = page.locator('#participant-list li[data-call-id="call-1"]')

    webhook(live_server, "GET", "/webhooks/answer", params=call)
    webhook(live_server, "POST", "/webhooks/input", json={**call, "dtmf": {"digits": pin, "timed_out": False}})
    answered_at = time.monotonic()
    row.wait_for(state="visible", timeout=SIGNAL_DEADLINE_MS)
    shown_after = time.monotonic() - answered_at
    assert shown_after < 1.0, f"the caller showed {shown_after:.2f} s after the webhook"
    assert row.get_attribute("data-state") == "in_conference"
    assert row.locator(".number").inner_text() == "+1 ••• ••• 9876"
    assert CALLER[1:] not in page.content()  # the full number never reaches the page

    mute = row.get_by_role("button", name="Mute +1 ••• ••• 9876")
    mute.focus()
    page.keyboard.press("Enter")  # keyboard-accessible: a real button
    page.wait_for_function(
        "() => document.querySelector('#participant-list li[data-call-id=\"call-1\"]')?.dataset.muted === 'true'",
        timeout=5000,
    )
    assert control.requests == [("mute", "call-1")]
    assert row.get_by_role("button", name="Unmute +1 ••• ••• 9876").is_visible()

    webhook(live_server, "POST", "/webhooks/events", json={**call, "status": "completed"})
    ended_at = time.monotonic()
    row.wait_for(state="detached", timeout=SIGNAL_DEADLINE_MS)
    gone_after = time.monotonic() - ended_at
    assert gone_after < 1.0, f"the caller left the list {gone_after:.2f} s after the event"
