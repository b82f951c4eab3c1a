"""How long the room's bridge into the phone conference lives (issue 15 §1), on `dialbridge serve` as `make run`
starts it: a browser that leaves while another stays does not end it, and hears the conference again when it
rejoins; when the room's last browser leaves, the bridge leaves too (its SIP call ends, the room may bring the
conference in again), while the phone caller stays in the conference."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Playwright

from tests.browser.test_room_bridge import WAIT_MS, bring_in_the_conference
from tests.browser.test_room_two_and_two import singing_browser, subscribers
from tests.engine import sipp
from tests.engine.rtp_media import RtpStream, tone
from tests.engine.stack import VoiceStack, free_port, voice_stack
from tests.helpers import wait_until
from tests.media_probe import SUBSCRIBER_LEVELS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(150),
]
PAGE_HZ, CALLER_HZ, QUIET_HZ = 890, 1697, 2460


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def hears_the_caller(page: Page) -> bool:
    levels = page.evaluate(SUBSCRIBER_LEVELS, [CALLER_HZ, QUIET_HZ])
    return bool(levels[str(CALLER_HZ)] > levels[str(QUIET_HZ)] + 20)


def open_dial_outs(stack: VoiceStack, room_id: str) -> int:
    with contextlib.closing(sqlite3.connect(stack.database)) as db:
        row = db.execute(
            "SELECT count(*) FROM dial_outs WHERE room_id = ? AND state IN ('dialling', 'live')", (room_id,)
        ).fetchone()
    return int(row[0])


def test_the_bridge_outlives_a_browser_that_leaves_and_leaves_with_the_last_one(
    stack: VoiceStack, playwright: Playwright, tmp_path: Path
) -> None:
    pin = stack.new_room("stay")
    browser = singing_browser(playwright, tmp_path, PAGE_HZ)
    try:
        _context_a, page_a = bring_in_the_conference(browser, stack, "stay")
        context_b = browser.new_context()
        page_b = context_b.new_page()
        page_b.goto(f"{stack.base}/room/stay")
        subscribers(page_b, 2)  # browser A and the phone conference

        media = RtpStream(ssrc=0x5A5A)
        for digit in pin + "#":
            media.rfc4733(digit)
        media.silence(3.5)
        media.audio(tone([CALLER_HZ], 60.0))
        xml = sipp.scenario(
            sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(300),
            sipp.play(media.write_pcap(tmp_path / "caller.pcap")), sipp.pause(90_000), sipp.BYE,
        )  # fmt: skip
        sipp.start(tmp_path / "sipp", xml, target=stack.sip_target, sip_port=free_port(), media_port=17600)
        wait_until(lambda: hears_the_caller(page_b), 20, "browser B never heard the caller", every=0.5)

        page_b.close()  # B leaves; A stays: the bridge stays
        time.sleep(2.0)
        assert stack.get("/healthz")["gateway"]["calls"] == 1
        # One analyser reading can miss the tone while the machine is starved (2 runs in 24 with both cores loaded);
        # the bridge ending or A's audio stopping would fail this for good.
        wait_until(lambda: hears_the_caller(page_a), 5, "browser A stopped hearing the caller when B left", every=0.5)

        page_b = context_b.new_page()  # B rejoins and hears the conference again
        page_b.goto(f"{stack.base}/room/stay")
        subscribers(page_b, 2)
        wait_until(lambda: hears_the_caller(page_b), 10, "browser B did not hear the caller after rejoining")

        # The last browsers leave: the bridge's call ends; the caller stays in the conference.
        page_a.close()
        page_b.close()
        wait_until(lambda: stack.get("/healthz")["gateway"]["calls"] == 0, 10, "the bridge stayed", every=0.2)
        wait_until(lambda: stack.get("/healthz")["voice_engine"]["calls"] == 1, 10, "the bridge's call", every=0.2)
        wait_until(lambda: open_dial_outs(stack, "stay") == 0, 10, "the dial-out stayed open", every=0.2)

        page_c = context_b.new_page()  # the room can bring the conference in again
        page_c.goto(f"{stack.base}/room/stay")
        page_c.wait_for_function(
            "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
        )
        page_c.click("#dial-conference")
        subscribers(page_c, 1)
        wait_until(lambda: hears_the_caller(page_c), 10, "the second bridge did not carry the caller")
    finally:
        browser.close()
