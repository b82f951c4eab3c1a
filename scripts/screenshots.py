"""The room page's screenshots in the README: docs/room-desktop.png (1280x800) and docs/room-phone.png (390x844).

A real dialbridge app on 127.0.0.1 (as the browser tests run it), Debian's Chromium with its fake camera and
microphone: two browsers in one room, the phone conference brought in (the gateway's room participant, joined as
the gateway joins), a phone caller who keyed the PIN and a phone being dialled. Run it where WebRTC finds only
loopback, as the tests do:

    unshare -n sh -c 'ip link set lo up && PYTHONPATH=.:tests/browser .venv/bin/python scripts/screenshots.py'
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from live_server import LiveServer, live_server_on
from playwright.sync_api import Page, sync_playwright
from room_participant import bridge_joins

from dialbridge.config import Settings
from dialbridge.store.dial_outs import PHONE
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import wait_until

ROOM = "design-review"
CALLER = "14155559876"
DIAL_IN = "+14155550100"


def open_room(page: Page, server: LiveServer) -> None:
    page.goto(f"{server.base_url}/room/{ROOM}")
    page.wait_for_function("() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')")


def give_name(page: Page, who: str) -> None:
    page.fill("#name-field", who)
    page.press("#name-field", "Enter")
    page.locator("#name-field").blur()
    page.evaluate("() => localStorage.clear()")  # the next page of this browser joins as a newcomer


def caller_keys_the_pin(server: LiveServer, pin: str) -> None:
    call = {"uuid": "call-screenshot", "conversation_uuid": "CON-1", "from": CALLER, "to": DIAL_IN[1:]}
    httpx.get(f"{server.base_url}/webhooks/answer", params=call).raise_for_status()
    body = {**call, "dtmf": {"digits": pin, "timed_out": False}}
    httpx.post(f"{server.base_url}/webhooks/input", json=body).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the two PNG files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as driver:
        database = f"sqlite:///{folder}/dialbridge.db"
        settings = Settings(_env_file=None, database_url=database, dial_in_number=DIAL_IN)  # type: ignore[call-arg]
        with live_server_on(settings) as server:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            desktop = browser.new_context(viewport={"width": 1280, "height": 800})
            # The room, its bridge, a PIN caller and a phone being dialled, before the pages that are pictured load.
            server.run(server.services.rooms.get_or_create(ROOM))
            bridge, _ = bridge_joins(server, ROOM)
            server.services.dial_outs.store.start(
                dial_out_id="do_screenshot", room_id=ROOM, kind=PHONE, target="+442071838750", now=time.time()
            )
            alice = desktop.new_page()
            open_room(alice, server)
            caller_keys_the_pin(server, alice.evaluate("() => window.dialbridgeRoom.config.pin"))
            bob = desktop.new_page()
            open_room(bob, server)
            give_name(bob, "Bob")
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1).new_page()
            open_room(phone, server)
            give_name(phone, "Carol")
            for page in (alice, phone):
                page.wait_for_function("() => document.querySelectorAll('.tile video').length >= 4")
                page.wait_for_function("() => document.querySelectorAll('#participant-list li').length >= 5")
            for page in (alice, phone):
                wait_until(lambda page=page: page.evaluate(_PLAYING), 30, "every picture playing", every=0.2)
            args.out.mkdir(parents=True, exist_ok=True)
            alice.screenshot(path=str(args.out / "room-desktop.png"))
            phone.screenshot(path=str(args.out / "room-phone.png"))
            bridge.close()
            browser.close()
    for name in ("room-desktop.png", "room-phone.png"):
        print(args.out / name, (args.out / name).stat().st_size, "bytes")


# Pictures decoding on the page: the screenshot waits for them, not for black tiles.
_PLAYING = (
    "() => [...document.querySelectorAll('.tile:not(.audio-only) video')]"
    ".every((v) => v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 30)"
)

if __name__ == "__main__":
    main()
