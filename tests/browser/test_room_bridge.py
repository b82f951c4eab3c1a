"""The room meets the phone on the embedded backend, end to end: `dialbridge serve` (web server, voice engine and
gateway as real processes), Chromium in a room clicks "Bring in the phone conference", a SIPp caller keys the PIN,
and the two hear each other through the gateway; the page never hears itself back."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser.conftest import PAGE_HZ
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack
from tests.helpers import wait_until
from tests.media_probe import SUBSCRIBER_PEAK

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(120),
]
CALLER_HZ = 700.0  # the phone caller's voice
WAIT_MS = 20_000
CALLER_MEDIA_PORT = 17300
# The room's phone participants, as the page's own token reads them from the API.
PHONE_PARTICIPANTS = """async () => {
  const config = window.dialbridgeRoom.config;
  const response = await fetch(`/api/rooms/${config.roomId}/participants`,
                               { headers: { Authorization: `Bearer ${config.participantToken}` } });
  return (await response.json()).participants.filter((p) => p.kind === "phone");
}"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def bring_in_the_conference(
    browser: Browser, stack: VoiceStack, room: str, errors: list[str] | None = None
) -> tuple[BrowserContext, Page]:
    """A page of `room` that has clicked "Bring in the phone conference" and shows the gateway's stream."""
    context = browser.new_context()
    page = context.new_page()
    if errors is not None:
        page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.base}/room/{room}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    page.click("#dial-conference")
    # The gateway joins as a participant named "Phone" and publishes the conference's audio.
    page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 1", timeout=WAIT_MS)
    return context, page


def test_a_phone_caller_and_the_room_hear_each_other_through_the_gateway(
    stack: VoiceStack, singing_chromium: Browser, tmp_path: Path
) -> None:
    pin = stack.new_room("bridged")
    errors: list[str] = []
    context, page = bring_in_the_conference(singing_chromium, stack, "bridged", errors)
    page.wait_for_function("() => document.querySelectorAll('#phone-calls li').length === 1", timeout=WAIT_MS)
    assert page.text_content("#phone-status") == ""

    caller = RtpStream(ssrc=31)
    for digit in pin + "#":
        caller.rfc4733(digit)
    caller.silence(3.5)  # "Thank you. You are joining the meeting now."
    caller.audio(tone([CALLER_HZ], 25.0))
    folder = tmp_path / "sipp"
    folder.mkdir()
    xml = sipp.scenario(
        sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(300),
        sipp.play(caller.write_pcap(folder / "media.pcap")), sipp.pause(30000), sipp.BYE,
    )  # fmt: skip
    with LoopbackCapture() as capture:
        run = sipp.start(folder, xml, target=stack.sip_target, sip_port=free_port(), media_port=CALLER_MEDIA_PORT)
        time.sleep(9.0)  # the prompt, the PIN, "joining", then the conference
        heard = page.evaluate(SUBSCRIBER_PEAK)
        phones = page.evaluate(PHONE_PARTICIPANTS)
        time.sleep(2.0)
    to_caller = received_audio(capture.rtp_to(CALLER_MEDIA_PORT))
    last_seconds = to_caller[-8000 * 3 :]  # the conference, after the prompts
    assert abs(heard["hz"] - CALLER_HZ) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not the caller"
    assert heard["db"] - heard["medianDb"] > 30, heard
    assert tone_energy(last_seconds, PAGE_HZ) > 0.3, "the caller does not hear the page's 440 Hz"
    # The caller is the room's one phone participant; the gateway's own call, which carries the room into the
    # conference, is not listed as one.
    assert [(p["number"], p["state"]) for p in phones] == [("+1 ••• ••• 1111", "in_conference")], phones
    assert errors == []
    assert run.wait(60) == 0, run.errors()
    context.close()


def test_every_tab_sees_the_bridge_live_and_a_second_one_is_refused(
    stack: VoiceStack, singing_chromium: Browser
) -> None:
    """D1: the bridge is the room's. A tab that did not dial shows it live (the button disabled and saying so, as in
    the tab that dialled); the API still refuses a second bridge (409, naming the live call); that tab can hang it
    up, and then every tab offers to bring it in again."""
    stack.new_room("twice")
    context, page = bring_in_the_conference(singing_chromium, stack, "twice")
    other = context.new_page()
    other.goto(f"{stack.base}/room/twice")
    for tab in (page, other):
        tab.locator("#phone-calls li.conference[data-state='in_conference']").wait_for(timeout=WAIT_MS)
        assert tab.is_disabled("#dial-conference")
        assert tab.text_content("#dial-conference") == "Phone conference is in the room"
    refused = other.evaluate(
        """async () => {
          const config = window.dialbridgeRoom.config;
          const response = await fetch(`/api/rooms/${config.roomId}/dial-out`, { method: "POST", body: "{}",
            headers: { "Content-Type": "application/json", Authorization: `Bearer ${config.participantToken}` } });
          return [response.status, (await response.json()).error.message];
        }"""
    )
    assert refused[0] == 409 and "already" in refused[1], refused

    other.get_by_role("button", name="Hang up the phone conference").click()
    for tab in (page, other):
        tab.locator("#phone-calls li.conference").wait_for(state="detached", timeout=WAIT_MS)
        tab.wait_for_function("() => !document.getElementById('dial-conference').disabled", timeout=WAIT_MS)
        assert tab.text_content("#dial-conference") == "Bring in the phone conference"
    assert other.text_content("#phone-status") == ""
    context.close()


def gateway_pid(stack: VoiceStack) -> int:
    """The pid of the gateway process `serve` started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == stack.process.pid and b"gateway" in command:
            return int(entry.name)
    raise AssertionError("serve started no gateway process")


def test_a_killed_gateway_is_restarted_and_its_call_ends(stack: VoiceStack, singing_chromium: Browser) -> None:
    """The gateway dies mid-call (SIGKILL: no BYE). serve starts it again, /healthz says degraded meanwhile, the app
    ends the orphaned call (so no record stays in the conference), and the room can bring the conference in again."""
    stack.new_room("crash")
    context, page = bring_in_the_conference(singing_chromium, stack, "crash")
    wait_until(
        lambda: stack.get("/healthz")["voice_engine"]["calls"] == 1,
        15,
        "the bridge never reached the engine",
        every=0.1,
    )

    os.kill(gateway_pid(stack), signal.SIGKILL)
    wait_until(lambda: stack.get("/healthz")["status"] == "degraded", 15, "/healthz did not say degraded", every=0.1)
    wait_until(
        lambda: stack.get("/healthz")["voice_engine"]["calls"] == 0,
        15,
        "the orphaned bridge call was not ended",
        every=0.1,
    )
    wait_until(lambda: stack.get("/healthz")["status"] == "ok", 20, "the gateway was not started again", every=0.1)
    page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 0", timeout=WAIT_MS)
    # The call's final event (posted by the engine after it hung up) is what frees the room to dial again.
    wait_until(lambda: not _open_dial_outs(stack, "crash"), 15, "the orphaned dial-out stayed open", every=0.1)
    with contextlib.closing(sqlite3.connect(stack.database)) as db:  # no call record stays "in conference"
        live = db.execute("SELECT status FROM calls WHERE room_id = 'crash' AND ended_at IS NULL").fetchall()
    assert live == [], live

    page.click("#dial-conference")
    page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 1", timeout=WAIT_MS)
    wait_until(
        lambda: stack.get("/healthz")["voice_engine"]["calls"] == 1,
        15,
        "the room could not bring it in again",
        every=0.1,
    )
    assert "the gateway stopped (killed by SIGKILL)" in stack.log.read_text()
    context.close()


def _open_dial_outs(stack: VoiceStack, room_id: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(stack.database)) as db:
        rows = db.execute(
            "SELECT state FROM dial_outs WHERE room_id = ? AND state IN ('dialling', 'live')", (room_id,)
        ).fetchall()
    return [row[0] for row in rows]
