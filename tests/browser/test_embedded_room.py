"""Two Chromium pages in one embedded room: real signalling, real peer-to-peer WebRTC over loopback."""

from __future__ import annotations

from typing import Any

import pytest
from live_server import LiveServer
from playwright.sync_api import BrowserContext, Page, Playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, open_room

pytestmark = pytest.mark.browser


# Frames decoded by the first subscriber video on the page (0 until one exists and plays).
DECODED_FRAMES = """() => {
  const video = document.querySelector('#subscribers video');
  return video && video.videoWidth > 0 ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
}"""


def events(page: Page, event_type: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(
        "(type) => window.dialbridgeRoom.events.filter(e => e.type === type)", event_type
    )
    return found


def wait_for_event(page: Page, event_type: str) -> None:
    page.wait_for_function(
        "(type) => window.dialbridgeRoom.events.some(e => e.type === type)", arg=event_type, timeout=WAIT_MS
    )


def own_connection_id(page: Page) -> str:
    connection_id: str = page.evaluate("() => window.dialbridgeRoom.session.connection.connectionId")
    return connection_id


def wait_for_decoding(page: Page) -> None:
    """The other participant's video is playing: frames keep being decoded, not merely an element present."""
    page.wait_for_function(f"() => ({DECODED_FRAMES})() > 0", timeout=WAIT_MS)
    first = page.evaluate(DECODED_FRAMES)
    page.wait_for_function(f"(first) => ({DECODED_FRAMES})() >= first + 10", arg=first, timeout=WAIT_MS)


def two_in_a_room(context: BrowserContext, server: LiveServer) -> tuple[Page, Page]:
    alice = open_room(context, server, "standup")
    bob = open_room(context, server, "standup")
    wait_for_decoding(alice)
    wait_for_decoding(bob)
    return alice, bob


def test_two_pages_in_a_room_each_see_the_others_video(context: BrowserContext, live_server: LiveServer) -> None:
    alice, bob = two_in_a_room(context, live_server)

    # each heard of the other's connection and stream, and the stream is the other one's
    assert own_connection_id(bob) in [e["connectionId"] for e in events(alice, "connectionCreated")]
    assert own_connection_id(alice) in [e["connectionId"] for e in events(bob, "connectionCreated")]
    assert len(events(alice, "streamCreated")) == 1 and len(events(bob, "streamCreated")) == 1
    size = bob.evaluate(
        "() => { const v = document.querySelector('#subscribers video'); return [v.videoWidth, v.videoHeight]; }"
    )
    assert size[0] > 0 and size[1] > 0


@pytest.mark.parametrize("leave", ["navigate away", "close the tab"])
def test_a_page_that_leaves_is_destroyed_in_the_other(
    context: BrowserContext, live_server: LiveServer, leave: str
) -> None:
    alice, bob = two_in_a_room(context, live_server)
    bob_connection = own_connection_id(bob)
    [bob_stream] = events(alice, "streamCreated")

    if leave == "navigate away":
        bob.goto("about:blank")
    else:
        bob.close()

    wait_for_event(alice, "connectionDestroyed")
    assert events(alice, "streamDestroyed") == [{"type": "streamDestroyed", "streamId": bob_stream["streamId"]}]
    assert events(alice, "connectionDestroyed") == [{"type": "connectionDestroyed", "connectionId": bob_connection}]
    assert alice.locator("#subscribers video").count() == 0  # bob's picture is gone from alice's page


def test_server_force_disconnect_ends_that_page_and_removes_its_stream_from_the_other(
    context: BrowserContext, live_server: LiveServer
) -> None:
    alice, bob = two_in_a_room(context, live_server)
    session_id = bob.evaluate("() => window.dialbridgeRoom.config.sessionId")
    bob_connection = own_connection_id(bob)
    [bob_stream] = events(alice, "streamCreated")

    platform = live_server.services.platform
    live_server.run(platform.disconnect(session_id, bob_connection))

    wait_for_event(bob, "sessionDisconnected")
    assert events(bob, "sessionDisconnected") == [{"type": "sessionDisconnected", "reason": "forceDisconnected"}]
    wait_for_event(alice, "connectionDestroyed")
    assert events(alice, "streamDestroyed") == [{"type": "streamDestroyed", "streamId": bob_stream["streamId"]}]
    # the server no longer counts bob in the room, and alice stays
    assert live_server.run(live_server.services.hub.force_disconnect(session_id, bob_connection)) is False
    assert events(alice, "sessionDisconnected") == []


def test_phone_panel_reports_what_the_server_says(context: BrowserContext, live_server: LiveServer) -> None:
    """The room page's phone controls reach the room's API with the page's participant token and show its answer,
    whose message names the fix: no gateway running here (502), no SIP trunk configured for phones (503). A number
    that is not E.164 is refused inline, saying what is wrong, and never sent."""
    page = context.new_page()
    page.goto(f"{live_server.base_url}/room/phone-panel")
    page.click("#dial-conference")
    page.wait_for_function("document.getElementById('phone-status').textContent.includes('dialbridge gateway')")
    assert page.text_content("#dial-conference") == "Bring in the phone conference"  # it may be tried again
    page.fill("#number", "+1 415 555 0100")  # spaces as people type them
    page.click("#dial-number button")
    page.wait_for_function("document.getElementById('phone-status').textContent.includes('DIALBRIDGE_SIP_TRUNK_URI')")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    for typed, problem in [
        ("12345", "Start with + and the country code"),
        ("+1415555x", "remove “x”"),
        ("+12345", "Too short"),
        ("+1234567890123456", "Too long"),
        ("", "Type the number"),
    ]:
        page.fill("#number", typed)
        page.press("#number", "Enter")
        assert problem in (page.text_content("#number-error") or ""), typed
        assert page.get_attribute("#number", "aria-invalid") == "true"
    assert requests == []
    page.fill("#number", "+14155550100")
    assert page.text_content("#number-error") == ""  # fixed as typed: the complaint goes
    assert page.locator("#phone-calls li").count() == 0


def test_a_participant_no_network_path_reaches_is_reported_not_left_black(
    playwright: Playwright, live_server: LiveServer
) -> None:
    """Without `--allow-loopback-in-peer-connection`, Chromium in the tests' loopback-only namespace gathers no ICE
    candidate at all: as on a network that blocks WebRTC, no pair ever forms and ICE never says "failed". The
    page must say so rather than show "Connected." over a black tile."""
    args = [arg for arg in CHROMIUM_ARGS if arg != "--allow-loopback-in-peer-connection"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        context = browser.new_context()
        alice = open_room(context, live_server, "blocked")
        open_room(context, live_server, "blocked")
        wait_for_event(alice, "streamCreated")
        alice.wait_for_function(
            "() => document.getElementById('alert').textContent.includes('no network path to this participant')",
            timeout=WAIT_MS,
        )
        assert "Could not show a participant" in (alice.text_content("#alert") or "")
        assert alice.get_attribute("#alert", "role") == "alert"  # announced by screen readers
        assert alice.text_content(".tile.failed .trouble") == "No connection"
    finally:
        browser.close()
