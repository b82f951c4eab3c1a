"""Two browsers and two phones in one room, on `dialbridge serve` as `make run` starts it (issue 15 §6).

Each party sings its own tone: Chromium A 890 Hz, Chromium B 1090 Hz (each its own browser process, since the fake
microphone is per process), a SIPp caller 1697 Hz, baresip 2061 Hz. Browser A brings the phone conference in; both
phones key the PIN. Every phone hears both browsers, every browser hears both phones, nobody hears themselves.
Then browser A mutes the SIPp caller from its participant list (its tone leaves what browser B and baresip hear),
unmutes it (it comes back), and hangs it up (SIPp gets a BYE; its row leaves the list in both browsers).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, Playwright

from tests.browser.conftest import singing_browser
from tests.browser.test_room_bridge import PHONE_PARTICIPANTS, WAIT_MS, bring_in_the_conference
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_level_db
from tests.engine.stack import VoiceStack, free_port, voice_stack
from tests.engine.test_voice_baresip import BARESIP, Baresip
from tests.helpers import wait_until
from tests.media_probe import SUBSCRIBER_LEVELS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed: make test installs the baresip package"),
    pytest.mark.timeout(180),
]
# G.711's companding and Opus are not linear: a mix of tones carries their sums and differences (up to the fourth
# order here, some 40 dB under them). So no tone is within 80 Hz of such a product of the others (or it would seem
# heard where it is absent), and the phones' tones are coprime with 8 kHz (a tone that repeats every few samples, as
# 1320 Hz does every 200, gives the quantization error the same period: a line at every multiple of 40 Hz).
A_HZ, B_HZ, SIPP_HZ, BARESIP_HZ = 890, 1090, 1697, 2061
TONES = [A_HZ, B_HZ, SIPP_HZ, BARESIP_HZ]
SIPP_MEDIA_PORT = 17400
BARESIP_RTP_LOW = 17500
SIPP_MASKED = "+1 ••• ••• 1111"
# Frequencies nobody plays: what stands there is the path's noise (G.711's quantization noise is broadband, and
# loud in a conference of loud tones). A party is heard when its tone stands well above that noise; a page or phone
# does not hear itself when its own tone stands no higher than the noise does.
QUIET_HZ = [650, 2460, 2710, 2910]  # 100 Hz or more from every tone, 35 Hz or more from every product
# G.711 noise of the loud phone tones puts lines of its own near a tone (up to 13 dB over its neighbours, seen); the
# self-echo this guards against (the mixer not subtracting a member's own voice) stands 30 dB over, a muted caller 50.
HEARD_OVER_NOISE_DB, OWN_OVER_NOISE_DB = 15.0, 18.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def subscribers(page: Page, count: int) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('.OT_subscriber video').length === {count}", timeout=WAIT_MS
    )


def phone_rows(page: Page) -> list[tuple[str, str]]:
    return [(p["number"], p["state"]) for p in page.evaluate(PHONE_PARTICIPANTS)]


def beside(hz: int) -> list[int]:
    """Frequencies 40 and 60 Hz either side of a tone: the noise around it (every product is 80 Hz or more away)."""
    return [hz - 60, hz - 40, hz + 40, hz + 60]


MEASURED_HZ = sorted({*TONES, *QUIET_HZ, *(f for hz in TONES for f in beside(hz))})


def tone_levels(samples: np.ndarray) -> dict[int, float]:
    return {hz: round(tone_level_db(samples, hz), 1) for hz in MEASURED_HZ}


def assert_hears(party: str, levels: dict[int, float], report: str, *, not_: set[int]) -> None:
    """`party` hears every tone but those in `not_` (its own; a muted one's), which stand no higher than the noise
    around them. G.711's noise is not flat (it follows the loud tones it quantizes), so an absent tone is judged
    against its own neighbourhood, and a heard one against the quiet frequencies' median."""
    noise = float(np.median([levels[hz] for hz in QUIET_HZ]))  # one glitch's line does not move it
    for hz in TONES:
        if hz in not_:
            around = float(np.median([levels[f] for f in beside(hz)]))
            assert levels[hz] < around + OWN_OVER_NOISE_DB, f"{party} hears {hz} Hz: {report}"
        else:
            assert levels[hz] > noise + HEARD_OVER_NOISE_DB, f"{party} does not hear {hz} Hz: {report}"


def page_levels(page: Page) -> dict[int, float]:
    """What the page's subscribers play, per frequency, in dB over the page's noise floor."""
    levels = page.evaluate(SUBSCRIBER_LEVELS, MEASURED_HZ)
    return {int(hz): round(level, 1) for hz, level in levels.items()}


def test_two_browsers_and_two_phones_hear_each_other_and_a_phone_is_muted_and_hung_up_from_the_page(
    stack: VoiceStack, playwright: Playwright, tmp_path: Path
) -> None:
    pin = stack.new_room("four")
    browser_a = singing_browser(playwright, tmp_path, A_HZ)
    browser_b = singing_browser(playwright, tmp_path, B_HZ)
    phone = Baresip(tmp_path / "baresip", freq=BARESIP_HZ, rtp_low=BARESIP_RTP_LOW)
    try:
        _context_a, page_a = bring_in_the_conference(browser_a, stack, "four")
        page_b = browser_b.new_context().new_page()
        page_b.goto(f"{stack.base}/room/four")
        subscribers(page_b, 2)  # browser A and the phone conference
        subscribers(page_a, 2)  # the phone conference and browser B

        with LoopbackCapture() as capture:
            media = RtpStream(ssrc=0x7070)
            for digit in pin + "#":
                media.rfc4733(digit)
            media.silence(3.5)  # "Thank you. You are joining the meeting now."
            media.audio(tone([SIPP_HZ], 60.0, level=0.3))
            xml = sipp.scenario(
                sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(300),
                sipp.play(media.write_pcap(tmp_path / "sipp.pcap")),
                sipp.REMOTE_BYE.replace("{timeout_ms}", "90000"),
            )  # fmt: skip
            caller = sipp.start(
                tmp_path / "sipp", xml, target=stack.sip_target, sip_port=free_port(), media_port=SIPP_MEDIA_PORT,
                timeout_s=120,
            )  # fmt: skip
            phone.command("dial", f"sip:dialin@{stack.sip_target}")
            phone.wait_event("CALL_ESTABLISHED", timeout=10)
            time.sleep(1.5)  # keys barge in on the welcome prompt
            for digit in pin + "#":
                phone.command("sndcode", digit)
                time.sleep(0.3)
            for page in (page_a, page_b):
                wait_until(
                    lambda page=page: [s for _, s in phone_rows(page)] == ["in_conference"] * 2,
                    20,
                    "both phones never showed in the conference",
                    every=0.5,
                )
            time.sleep(4.0)  # "you are joining the meeting now" has ended for both

            def phones_heard(seconds: float = 2.0) -> tuple[dict[int, float], dict[int, float]]:
                """What each phone heard over the last `seconds`: the SIPp caller's and baresip's RTP, decoded."""
                since = time.monotonic() - seconds
                to_sipp = [d for d in capture.rtp_to(SIPP_MEDIA_PORT) if d.at >= since]
                to_baresip = [
                    d for port in range(*phone.rtp_ports) for d in capture.rtp_to(port) if d.at >= since
                ]  # fmt: skip
                return tone_levels(received_audio(to_sipp)), tone_levels(received_audio(to_baresip))

            heard_a, heard_b = page_levels(page_a), page_levels(page_b)
            sipp_heard, baresip_heard = phones_heard()
            report = f"A {heard_a}, B {heard_b}, SIPp {sipp_heard}, baresip {baresip_heard}"
            assert_hears("browser A", heard_a, report, not_={A_HZ})
            assert_hears("browser B", heard_b, report, not_={B_HZ})
            assert_hears("the SIPp caller", sipp_heard, report, not_={SIPP_HZ})
            assert_hears("baresip", baresip_heard, report, not_={BARESIP_HZ})

            # The engine reports who speaks: both phones sing throughout.
            speaking = {p["number"]: p["speaking"] for p in page_b.evaluate(PHONE_PARTICIPANTS)}
            assert list(speaking.values()) == [True, True], speaking

            # Browser A mutes the SIPp caller from its list: the tone leaves what B and baresip hear.
            row_a = page_a.locator("#participant-list li", has_text=SIPP_MASKED)
            row_b = page_b.locator("#participant-list li", has_text=SIPP_MASKED)
            row_a.get_by_role("button", name=f"Mute {SIPP_MASKED}").click()
            for row in (row_a, row_b):  # the change reaches every browser
                wait_until(lambda row=row: row.get_attribute("data-muted") == "true", 5, "the mute was not shown")
            wait_until(  # a muted caller speaks to nobody
                lambda: {p["number"]: p["speaking"] for p in page_b.evaluate(PHONE_PARTICIPANTS)}[SIPP_MASKED] is False,
                3,
                "the muted caller still shows as speaking",
                every=0.2,
            )
            time.sleep(2.0)
            muted_b = page_levels(page_b)
            _, baresip_muted = phones_heard()
            report = f"B {muted_b}, baresip {baresip_muted}"
            assert_hears("browser B, the caller muted,", muted_b, report, not_={B_HZ, SIPP_HZ})
            assert_hears("baresip, the caller muted,", baresip_muted, report, not_={BARESIP_HZ, SIPP_HZ})

            row_a.get_by_role("button", name=f"Unmute {SIPP_MASKED}").click()
            wait_until(lambda: row_b.get_attribute("data-muted") == "false", 5, "the unmute was not shown")
            time.sleep(2.5)
            unmuted_b = page_levels(page_b)
            _, baresip_unmuted = phones_heard()
            report = f"B {unmuted_b}, baresip {baresip_unmuted}"
            assert_hears("browser B, the caller unmuted,", unmuted_b, report, not_={B_HZ})
            assert_hears("baresip, the caller unmuted,", baresip_unmuted, report, not_={BARESIP_HZ})

            # Hang up: SIPp gets the BYE (its scenario ends only on one), its row leaves both lists.
            row_a.get_by_role("button", name=f"Hang up {SIPP_MASKED}").click()
            assert caller.wait(30) == 0, f"the SIPp caller got no BYE:\n{caller.errors()}"
            row_a.wait_for(state="detached", timeout=5000)
            row_b.wait_for(state="detached", timeout=5000)
            # The API lists the call until the engine's completed event has been recorded; baresip stays.
            wait_until(lambda: len(phone_rows(page_b)) == 1, 5, "the hung-up caller stayed listed", every=0.2)
            assert [n for n, _ in phone_rows(page_b)] != [SIPP_MASKED]
    finally:
        phone.close()
        browser_a.close()
        browser_b.close()
