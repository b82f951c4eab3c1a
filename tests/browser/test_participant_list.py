"""The room page's phone participant list in Chromium on the embedded backend: a caller arriving and leaving shows
within a second of the webhook that caused it (the server's `participants` signal over the real signalling
socket), and the page's Mute button mutes the call through the call-control API."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from live_server import LiveServer
from playwright.sync_api import BrowserContext

from tests.browser.conftest import open_room
from tests.helpers import RecordingControl

pytestmark = pytest.mark.browser

SIGNAL_DEADLINE_MS = 1000
CALLER = "14155559876"


def webhook(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.request(method, server.base_url + path, timeout=5, **kwargs)
    assert response.status_code in (200, 204), response.text
    return response


def test_a_caller_arrives_is_muted_from_the_page_and_leaves_live(
    context: BrowserContext, live_server: LiveServer, call_control: RecordingControl
) -> None:
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
    assert call_control.requests == [("mute", "call-1", None)]
    assert row.get_by_role("button", name="Unmute +1 ••• ••• 9876").is_visible()

    webhook(live_server, "POST", "/webhooks/events", json={**call, "status": "completed"})
    ended_at = time.monotonic()
    row.wait_for(state="detached", timeout=SIGNAL_DEADLINE_MS)
    gone_after = time.monotonic() - ended_at
    assert gone_after < 1.0, f"the caller left the list {gone_after:.2f} s after the event"
