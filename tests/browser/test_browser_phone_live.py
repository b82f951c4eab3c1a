"""The browser phone end to end: Chromium opens /phone of `dialbridge serve` (embedded backend); its WebRTC call ends
in the gateway, which dials in to the voice engine like a SIP phone; the page keys the room's PIN on its keypad (the
digits reach the engine as RFC 4733 events) and hears a SIPp caller who joined with that PIN."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext
from test_phone_page_static import REMOTE_PEAK

from tests.engine import sipp
from tests.engine.rtp_media import RtpStream, tone
from tests.engine.stack import VoiceStack, free_port, voice_stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]
TONE_HZ = 700.0
WAIT_MS = 20_000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def test_the_browser_phone_keys_the_pin_and_hears_a_phone_caller(
    stack: VoiceStack, context: BrowserContext, tmp_path: Path
) -> None:
    # A digit keyed twice must arrive twice and only twice, or the PIN is wrong and the page never hears the caller.
    room_id, pin = stack.new_room_keying_a_digit_twice("browser-phone")
    caller = RtpStream(ssrc=21)
    for digit in pin + "#":
        caller.rfc4733(digit)
    caller.silence(3.5)
    caller.audio(tone([TONE_HZ], 30.0))
    folder = tmp_path / "sipp"
    folder.mkdir()
    xml = sipp.scenario(
        sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(300), sipp.play(caller.write_pcap(folder / "media.pcap")),
        sipp.pause(32000), sipp.BYE,
    )  # fmt: skip
    run = sipp.start(folder, xml, target=stack.sip_target, sip_port=free_port(), media_port=17200)

    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.base}/room/{room_id}")  # the room offers the browser phone and names the SIP address
    assert page.text_content("#sip-address") == f"sip:dialin@127.0.0.1:{stack.sip_port}"
    assert page.get_attribute("#browser-phone", "href") == "/phone"
    page.goto(f"{stack.base}/phone")
    assert page.text_content("#sip-address") == f"sip:dialin@127.0.0.1:{stack.sip_port}"
    page.click("#call")
    page.wait_for_function("() => window.dialbridgePhone.state === 'in call'", timeout=WAIT_MS)
    gateway = stack.get("/healthz")["gateway"]
    assert gateway["browser_phones"] == 1 and gateway["peers"] == 1, gateway
    time.sleep(1.0)  # the prompt starts; the keypad barges in
    for digit in pin:
        page.click(f"#key-{digit}")
        time.sleep(0.15)
    page.click("#key-hash")
    time.sleep(5.0)  # "Thank you. You are joining the meeting now.", then the conference
    heard = page.evaluate(REMOTE_PEAK)
    assert abs(heard["hz"] - TONE_HZ) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not the caller's tone"
    assert heard["db"] - heard["medianDb"] > 30, heard

    page.click("#hangup")
    page.wait_for_function("() => window.dialbridgePhone.state === 'ended'", timeout=WAIT_MS)
    deadline = time.monotonic() + 10
    while stack.get("/healthz")["voice_engine"]["calls"] != 1:  # the browser's call ended; the SIPp call lives on
        assert time.monotonic() < deadline, "the browser phone's call was not ended in the engine"
        time.sleep(0.2)
    gateway = stack.get("/healthz")["gateway"]
    assert (gateway["calls"], gateway["peers"], gateway["browser_phones"]) == (0, 0, 0), gateway
    assert errors == []
    assert run.wait(40) == 0, run.errors()
    log = stack.log.read_text()
    assert "browser phone call ended" in log  # the gateway's own lines are there; aioice's line per candidate pair not
    assert "aioice" not in log, log
