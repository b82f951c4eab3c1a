"""The room page as people use it, in Chromium on the embedded backend: a phone-sized screen, the microphone toggle,
leaving and coming back, the keyboard, the invitation, a missing camera, and the phone bridge's state in every tab."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import LiveServer, live_server_on
from playwright.sync_api import Browser, BrowserContext, Page
from room_participant import bridge_joins

from dialbridge.conference.participants import CallState, PhoneParticipant
from dialbridge.config import Settings
from dialbridge.roster import Roster
from tests.browser.conftest import PAGE_HZ, WAIT_MS, open_room
from tests.helpers import RecordingControl
from tests.media_probe import SUBSCRIBER_PEAK

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

DIAL_IN = "+14155550100"
CALLER = "14155559876"
MASKED_CALLER = "+1 ••• ••• 9876"
# Every control a person needs, by selector.
CONTROLS = [
    "#toggle-mic",
    "#toggle-camera",
    "#leave",
    "#dial-conference",
    "#number",
    "#dial-number button",
    "#copy-invite",
    "#browser-phone",
    '#participant-list li[data-call-id="call-1"] .mute',
    '#participant-list li[data-call-id="call-1"] .hang-up',
]


def caller_keys_the_pin(server: LiveServer, page: Page, uuid: str = "call-1") -> None:
    pin = page.evaluate("() => window.dialbridgeRoom.config.pin")
    call = {"uuid": uuid, "conversation_uuid": "CON-" + uuid, "from": CALLER, "to": DIAL_IN[1:]}
    httpx.get(f"{server.base_url}/webhooks/answer", params=call, timeout=5).raise_for_status()
    body = {**call, "dtmf": {"digits": pin, "timed_out": False}}
    httpx.post(f"{server.base_url}/webhooks/input", json=body, timeout=5).raise_for_status()
    page.locator(f'#participant-list li[data-call-id="{uuid}"]').wait_for(timeout=5000)


def heard(page: Page) -> dict[str, Any]:
    """What the page's subscribers play, mixed: the strongest frequency and how far it stands above the floor."""
    found: dict[str, Any] = page.evaluate(SUBSCRIBER_PEAK)
    found["above_floor_db"] = found["db"] - found["medianDb"]
    return found


def hears_the_tone(found: dict[str, Any]) -> bool:
    return bool(abs(found["hz"] - PAGE_HZ) <= 2 * found["binHz"] + 8 and found["above_floor_db"] > 30)


@pytest.fixture
def server_with_dial_in(db_url: str) -> Iterator[LiveServer]:
    settings = Settings(_env_file=None, database_url=db_url, dial_in_number=DIAL_IN)  # type: ignore[call-arg]
    with live_server_on(settings) as server:
        yield server


def test_at_phone_width_nothing_overflows_and_every_control_is_reachable(
    chromium: Browser, live_server: LiveServer, call_control: RecordingControl
) -> None:
    context = chromium.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    try:
        page = open_room(context, live_server, "narrow")
        open_room(context, live_server, "narrow")
        caller_keys_the_pin(live_server, page)
        page.wait_for_function("() => document.querySelectorAll('.tile video').length === 2", timeout=WAIT_MS)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), page.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        for selector in CONTROLS:
            control = page.locator(selector)
            control.scroll_into_view_if_needed()
            assert control.is_visible(), selector
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
            # Not under the toolbar or anything else: what a tap at its centre reaches is the control itself.
            on_top = page.evaluate(
                """([x, y, selector]) => {
                  const hit = document.elementFromPoint(x, y);
                  return !!hit && hit.closest(selector) === document.querySelector(selector);
                }""",
                [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, selector],
            )
            assert on_top, f"{selector} is covered at its centre"
    finally:
        context.close()


def test_the_mic_toggle_stops_the_audio_the_other_tab_hears(singing_chromium: Browser, live_server: LiveServer) -> None:
    context = singing_chromium.new_context()
    try:
        alice = open_room(context, live_server, "mic")
        bob = open_room(context, live_server, "mic")
        bob.wait_for_function("() => document.querySelectorAll('#subscribers video').length === 1", timeout=WAIT_MS)
        alice_tile = bob.locator("#subscribers .tile")
        deadline = time.monotonic() + 20
        while not hears_the_tone(found := heard(bob)):
            assert time.monotonic() < deadline, f"bob never heard alice's microphone: {found}"
        # The speaking indicator follows the audio level bob receives (audioLevelUpdated).
        bob.wait_for_function(
            "() => document.querySelector('#subscribers .tile').dataset.speaking === 'true'", timeout=5000
        )
        assert alice_tile.get_attribute("data-speaking") == "true"

        alice.click("#toggle-mic")
        assert alice.get_attribute("#toggle-mic", "aria-label") == "Unmute your microphone"
        assert alice.get_attribute("#self-tile", "data-mic-off") == "true"
        bob.wait_for_function(
            "() => document.querySelector('#subscribers .tile').dataset.speaking === 'false'", timeout=5000
        )
        muted = heard(bob)
        assert not hears_the_tone(muted), f"bob still hears alice with her microphone off: {muted}"

        alice.click("#toggle-mic")
        deadline = time.monotonic() + 10
        while not hears_the_tone(found := heard(bob)):
            assert time.monotonic() < deadline, f"bob does not hear alice again after unmuting: {found}"
    finally:
        context.close()


def test_leave_removes_the_tile_in_the_other_tab_and_rejoin_brings_it_back(
    context: BrowserContext, live_server: LiveServer
) -> None:
    alice = open_room(context, live_server, "leaving")
    bob = open_room(context, live_server, "leaving")
    for page in (alice, bob):
        page.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 1", timeout=WAIT_MS)
    assert bob.locator("#participant-list li.browser").count() == 2

    alice.get_by_role("button", name="Leave").click()
    bob.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 0", timeout=WAIT_MS)
    # The stream goes first, then the connection: bob is then the only browser listed.
    bob.wait_for_function("() => document.querySelectorAll('#participant-list li.browser').length === 1")
    assert alice.locator("#left").is_visible()
    assert alice.text_content("#left-heading") == "You left the room"
    assert alice.text_content("#alert") == ""  # leaving is no failure

    alice.get_by_role("button", name="Rejoin the room").click()
    bob.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 1", timeout=WAIT_MS)
    alice.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 1", timeout=WAIT_MS)


def test_the_keyboard_reaches_mute_and_hang_up_and_enter_activates_them(
    context: BrowserContext, live_server: LiveServer, call_control: RecordingControl
) -> None:
    page = open_room(context, live_server, "keyboard")
    caller_keys_the_pin(live_server, page)

    def tab_to(label: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.getAttribute('aria-label')") == label:
                # The focus shows: a visible outline, not the browser's default nothing on a dark page.
                outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
                assert outline != "none", f"no visible focus on {label}"
                return
        raise AssertionError(f"Tab never reached {label!r}")

    tab_to(f"Mute {MASKED_CALLER}")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#participant-list li[data-call-id=\"call-1\"]').dataset.muted === 'true'",
        timeout=5000,
    )
    assert call_control.requests == [("mute", "call-1", None)]
    # The row was redrawn: the focus stays on its mute control, now Unmute.
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == f"Unmute {MASKED_CALLER}"

    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == f"Hang up {MASKED_CALLER}"
    page.keyboard.press("Enter")
    page.locator('#participant-list li[data-call-id="call-1"]').wait_for(state="detached", timeout=5000)
    assert call_control.requests == [("mute", "call-1", None), ("hangup", "call-1", None)]


def test_the_invitation_copies_the_number_pin_and_addresses(chromium: Browser, server_with_dial_in: LiveServer) -> None:
    context = chromium.new_context()
    try:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_with_dial_in.base_url)
        page = open_room(context, server_with_dial_in, "invite")
        pin = page.evaluate("() => window.dialbridgeRoom.config.pin")
        assert page.text_content("#pin") == pin and page.text_content("#dial-in-number") == DIAL_IN
        page.get_by_role("button", name="Copy invitation").click()
        page.wait_for_function("() => document.getElementById('copy-status').textContent.includes('copied')")
        copied: str = page.evaluate("() => navigator.clipboard.readText()")
        assert f"call {DIAL_IN}, then key the PIN {pin} and #" in copied
        assert page.text_content("#sip-address") in copied  # type: ignore[operator]
        assert f"{server_with_dial_in.base_url}/room/invite" in copied
        assert f"{server_with_dial_in.base_url}/phone (it asks for the PIN)" in copied
        assert page.get_attribute("#browser-phone", "href") == "/phone"
    finally:
        context.close()


# The WCAG contrast ratio of an element's text colour against its background colour.
CONTRAST = """(selector) => {
  const style = getComputedStyle(document.querySelector(selector));
  const luminance = (colour) => {
    const [r, g, b] = colour.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [light, dark] = [luminance(style.color), luminance(style.backgroundColor)].sort((a, b) => b - a);
  return (light + 0.05) / (dark + 0.05);
}"""


# getUserMedia as a browser answers when the person refuses the camera (and, with `everything`, the microphone too).
REFUSE_CAMERA = """(everything) => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) => (constraints.video || everything)
    ? Promise.reject(new DOMException("Permission denied", "NotAllowedError"))
    : original(constraints);
}"""


@pytest.mark.parametrize("refused", ["camera", "camera and microphone"])
def test_a_refused_camera_joins_audio_only_and_a_refused_microphone_listens(
    context: BrowserContext, live_server: LiveServer, refused: str
) -> None:
    other = open_room(context, live_server, "no-camera")
    page = context.new_page()
    page.add_init_script(f"({REFUSE_CAMERA})({'true' if refused != 'camera' else 'false'})")
    page.goto(f"{live_server.base_url}/room/no-camera")
    page.wait_for_function("() => document.getElementById('alert').textContent.includes('No ')", timeout=WAIT_MS)
    alert = page.text_content("#alert") or ""
    assert page.text_content("#status") == "Connected."  # in the room all the same
    assert page.evaluate(CONTRAST, "#alert p") >= 4.5  # WCAG AA for its text
    page.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 1", timeout=WAIT_MS)
    if refused == "camera":
        assert alert.startswith("No camera (the browser was not allowed to use it): you joined with your microphone")
        assert page.is_enabled("#toggle-mic") and page.is_disabled("#toggle-camera")
        # The others get a tile that says who it is, not a black rectangle.
        other.wait_for_function(
            "() => document.querySelectorAll('#subscribers .tile.audio-only').length === 1", timeout=WAIT_MS
        )
        assert other.locator("#subscribers .tile.audio-only .placeholder").is_visible()
    else:
        assert alert.startswith("No microphone or camera (the browser was not allowed to use it): you can watch")
        assert page.is_disabled("#toggle-mic") and page.is_disabled("#toggle-camera")
        assert page.text_content("#self-tile .name") == "You (listening only)"
        time.sleep(1)
        assert other.locator("#subscribers .tile").count() == 0  # nothing published


def test_a_tab_that_did_not_dial_sees_the_bridge_live_and_can_end_it(
    context: BrowserContext, live_server: LiveServer
) -> None:
    """D1: the bridge is the room's, not the dialling tab's. Every tab shows it live (the button disabled and saying
    so), can hang it up, and shows it can be brought in again once it has left."""
    pages = [open_room(context, live_server, "bridged"), open_room(context, live_server, "bridged")]
    bridge, _dial_out_id = bridge_joins(live_server, "bridged")
    try:
        for page in pages:
            row = page.locator("#phone-calls li.conference")
            row.wait_for(timeout=WAIT_MS)
            page.wait_for_function("() => document.getElementById('dial-conference').disabled", timeout=5000)
            assert page.text_content("#dial-conference") == "Phone conference is in the room"
            assert row.locator(".state").inner_text() == "In the room"
            # An audio-only participant: a phone tile with its name, speaking while the bridge carries sound.
            tile = page.locator("#subscribers .tile.phone.audio-only")
            tile.wait_for(timeout=WAIT_MS)
            assert tile.locator(".name").inner_text() == "Phone conference"
            page.wait_for_function(
                "() => document.querySelector('#subscribers .tile.phone').dataset.speaking === 'true'",
                timeout=10_000,
            )

        hang_up = pages[1].get_by_role("button", name="Hang up the phone conference")
        pages[1].wait_for_function(
            "() => !document.querySelector('#phone-calls li.conference button').disabled", timeout=5000
        )
        hang_up.click()
        for page in pages:
            page.locator("#phone-calls li.conference").wait_for(state="detached", timeout=WAIT_MS)
            page.wait_for_function("() => !document.getElementById('dial-conference').disabled", timeout=5000)
            assert page.text_content("#dial-conference") == "Bring in the phone conference"
            assert page.locator("#subscribers .tile.phone").count() == 0
    finally:
        bridge.close()


@pytest.mark.parametrize(
    ("end", "status", "words"),
    [
        (CallState.BUSY, "busy", "Busy"),
        (CallState.NO_ANSWER, "no_answer", "No answer"),
        (CallState.FAILED, "failed", "Failed"),
        (CallState.COMPLETED, "completed", "Call ended"),
        (CallState.ENDED, "unanswered", "No answer"),
        (CallState.ENDED, "carrier_refused", "Carrier refused"),
    ],
)
def test_a_dial_out_shows_its_live_state_in_words_in_every_tab(
    context: BrowserContext, live_server: LiveServer, end: CallState, status: str, words: str
) -> None:
    """A phone the room called: its state as the participant signals give it, in words (an unknown one as it came),
    in every tab; its end stays shown among the calls the room placed while its row leaves the people list (at once
    for "ended", after a moment for an end that says how)."""
    pages = [open_room(context, live_server, "dialler"), open_room(context, live_server, "dialler")]
    room = live_server.run(live_server.services.rooms.find("dialler"))
    assert room is not None
    roster = live_server.services.roster

    def signal(state: CallState, detail: str) -> None:
        participant = PhoneParticipant("do_1", "+44 ••• ••• 8750", state, False, detail=detail, dial_out=True)
        live_server.run(_sent(roster, room.session_id, participant))

    for state, detail, shown in [(CallState.RINGING, "ringing", "Ringing…"), (end, status, words)]:
        signal(state, detail)
        for page in pages:
            row = page.locator('#phone-calls li[data-call-id="do_1"]')
            page.wait_for_function(
                "(shown) => document.querySelector('#phone-calls li[data-call-id=\"do_1\"] .state')?.textContent"
                " === shown",
                arg=shown,
                timeout=5000,
            )
            assert row.locator(".who").inner_text() == "+44 ••• ••• 8750"
    for page in pages:
        assert page.locator('#phone-calls li[data-call-id="do_1"] button').count() == 0  # nothing left to hang up
        page.locator('#participant-list li[data-call-id="do_1"]').wait_for(state="detached", timeout=10_000)
        assert page.locator('#phone-calls li[data-call-id="do_1"] .state').inner_text() == words


async def _sent(roster: Roster, session_id: str, participant: PhoneParticipant) -> None:
    roster.send(session_id, participant)
    await roster.drain()


def test_a_stopped_camera_shows_as_a_name_in_the_other_tab(context: BrowserContext, live_server: LiveServer) -> None:
    alice = open_room(context, live_server, "camera")
    bob = open_room(context, live_server, "camera")
    tile = bob.locator("#subscribers .tile")
    bob.wait_for_function("() => document.querySelector('#subscribers video')?.videoWidth > 0", timeout=WAIT_MS)
    assert "audio-only" not in (tile.get_attribute("class") or "")

    alice.get_by_role("button", name="Stop your camera").click()
    assert alice.locator("#self-tile .placeholder").is_visible()
    bob.wait_for_function(
        "() => document.querySelector('#subscribers .tile').classList.contains('audio-only')", timeout=WAIT_MS
    )
    assert tile.locator(".placeholder").is_visible()

    alice.get_by_role("button", name="Start your camera").click()
    bob.wait_for_function(
        "() => !document.querySelector('#subscribers .tile').classList.contains('audio-only')", timeout=WAIT_MS
    )


def test_a_name_given_shows_on_the_tile_and_in_the_list_of_the_others(
    context: BrowserContext, live_server: LiveServer
) -> None:
    alice = open_room(context, live_server, "names")
    bob = open_room(context, live_server, "names")
    bob.wait_for_function("() => document.querySelectorAll('#subscribers .tile').length === 1", timeout=WAIT_MS)
    assert bob.text_content("#subscribers .tile .name") == "Guest"

    alice.fill("#name-field", "  Alice Liddell  ")
    alice.press("#name-field", "Enter")
    assert alice.text_content("#name-status") == "Others now see you as Alice Liddell."
    bob.wait_for_function(
        "() => document.querySelector('#subscribers .tile .name')?.textContent === 'Alice Liddell'", timeout=WAIT_MS
    )
    assert bob.locator("#participant-list li.browser:not(.self) .who").inner_text() == "Alice Liddell"
    assert bob.locator("#subscribers .tile").count() == 1  # her new stream replaced the old one
    # Kept in this browser: the next visit joins under it.
    carol = open_room(context, live_server, "names")
    assert carol.input_value("#name-field") == "Alice Liddell"


# A network on which the room's signalling cannot be reached: every WebSocket closes before it opens, as the browser
# reports a connection refused or cut (code 1006).
NO_SIGNALLING = """() => {
  window.WebSocket = class extends EventTarget {
    constructor() {
      super();
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code: 1006, reason: "" }), 50);
    }
    send() {}
    close() {}
  };
  window.WebSocket.OPEN = 1;
}"""


def test_a_room_the_network_does_not_reach_says_so_and_offers_to_rejoin(
    context: BrowserContext, live_server: LiveServer
) -> None:
    page = context.new_page()
    page.add_init_script(f"({NO_SIGNALLING})()")
    page.goto(f"{live_server.base_url}/room/unreachable")
    page.wait_for_function("() => document.getElementById('alert').textContent !== ''", timeout=WAIT_MS)
    assert page.text_content("#alert") == (
        "Could not connect to the room (the signalling connection closed (code 1006)): check your network, then rejoin."
    )
    assert page.text_content("#left-heading") == "You are not in the room"
    assert page.get_by_role("button", name="Rejoin the room").is_visible()
    assert page.is_disabled("#dial-conference")
