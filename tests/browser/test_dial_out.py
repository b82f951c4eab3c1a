"""Dial-out from a room on the embedded backend, end to end: `dialbridge serve` (web server, voice engine, gateway as
real processes), Chromium in the room with a 440 Hz microphone, and SIPp as the far end — a SIP trunk that asks for
a digest (407), a callee that is busy, one that never answers, one reached by SIP URI over TCP. Each call's state
reaches the page from the gateway's session-monitoring callbacks, and the gateway's participant leaves the room on
any final state."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from dialbridge.sip.auth import DigestCredentials, verify_authorization
from tests.browser.conftest import PAGE_HZ
from tests.browser.test_room_bridge import gateway_pid
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack
from tests.engine.test_voice_baresip import BARESIP, Baresip
from tests.helpers import wait_until
from tests.media_probe import SUBSCRIBER_PEAK

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(150),
]
CALLEE_HZ = 700.0
WAIT_MS = 20_000
RING_S = 4  # DIALBRIDGE_DIAL_OUT_RING_S for this module's server
TRUNK_USER, TRUNK_PASSWORD, REALM = "room-trunk", "tr0nk-s3cret", "trunk.test"
NUMBER = "+15550104567"  # inside the allow-list (+1555); the page shows it masked
MASKED = "+1 ••• ••• 4567"


@pytest.fixture(scope="module")
def trunk_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, trunk_port: int) -> Iterator[VoiceStack]:
    with voice_stack(
        tmp_path_factory.mktemp("dial-out"),
        DIALBRIDGE_SIP_TRUNK_URI=f"sip:127.0.0.1:{trunk_port}",
        DIALBRIDGE_SIP_TRUNK_USERNAME=TRUNK_USER,
        DIALBRIDGE_SIP_TRUNK_PASSWORD=TRUNK_PASSWORD,
        DIALBRIDGE_DIAL_OUT_PREFIXES="+1555",
        DIALBRIDGE_DIAL_OUT_RING_S=str(RING_S),
    ) as running:
        yield running


def open_room(browser: Browser, stack: VoiceStack, room: str) -> tuple[BrowserContext, Page]:
    stack.new_room(room)
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{stack.base}/room/{room}")
    page.wait_for_function(
        "() => window.dialbridgeRoom?.events.some(e => e.type === 'sessionConnected')", timeout=WAIT_MS
    )
    return context, page


def dial_number(page: Page, number: str) -> None:
    page.fill("#number", number)
    page.click("#dial-number button[type=submit]")


def dial_sip_uri(page: Page, uri: str) -> dict[str, Any]:
    """POST /dial-out {"sip_uri"} with the page's own token (the page has no field for it)."""
    answer: dict[str, Any] = page.evaluate(
        """async (uri) => {
          const config = window.dialbridgeRoom.config;
          const response = await fetch(`/api/rooms/${config.roomId}/dial-out`, {
            method: "POST",
            headers: { "Content-Type": "application/json", Authorization: `Bearer ${config.participantToken}` },
            body: JSON.stringify({ sip_uri: uri }),
          });
          return { status: response.status, body: await response.json() };
        }""",
        uri,
    )
    return answer


def row_state(page: Page, state: str) -> None:
    """Wait until the participant list shows a phone row in `state`."""
    page.wait_for_selector(f"#participant-list li[data-state='{state}']", timeout=WAIT_MS)


def subscribers(page: Page) -> int:
    return int(page.evaluate("() => document.querySelectorAll('.OT_subscriber video').length"))


def gateway_calls(stack: VoiceStack) -> int:
    return int(stack.get("/healthz")["gateway"]["calls"])


def dial_out_rows(stack: VoiceStack, room: str) -> list[tuple[str, str | None]]:
    with contextlib.closing(sqlite3.connect(stack.database)) as db:
        return db.execute("SELECT state, progress FROM dial_outs WHERE room_id = ?", (room,)).fetchall()


def participant_left(page: Page, stack: VoiceStack) -> None:
    """The gateway's participant for the call has left the room: no stream in the page, no call in the gateway."""
    page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 0", timeout=WAIT_MS)
    wait_until(lambda: gateway_calls(stack) == 0, 10, "the gateway still holds the call", every=0.1)


# SIPp as the trunk/callee: an INVITE received, with actions on it (SIPp refuses a variable it never uses).
RECV_INVITE = """<recv request="INVITE" crlf="true">
  <action>
    {check}
  </action>
</recv>
"""
KEEP_CSEQ = '<ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="invite_cseq"/>'  # for the 487
PROXY_CHALLENGE = (
    f'Proxy-Authenticate: Digest realm="{REALM}", nonce="[pid]-[call_number]-n0nce", algorithm=MD5, qop="auth"\n'
)
# SIPp 3.6.1's verifyauth reads only Authorization: here SIPp checks the Proxy-Authorization's fields (our user,
# its realm, its nonce echoed, a 32-hex response) and the test verifies the digest itself from SIPp's message log.
CHECK_PROXY_AUTH = (
    f'<ereg regexp="Digest username=.{TRUNK_USER}., realm=.{REALM.replace(".", "[.]")}., nonce=.[0-9]+-1-n0nce." '
    'search_in="hdr" header="Proxy-Authorization:" check_it="true" assign_to="proxyauth"/>'
)
RESPONSE_TO_INVITE = """<send><![CDATA[
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$invite_cseq] INVITE
Content-Length: 0

]]></send>
"""
# The callee hangs up: BYE in the dialog (From/To as the dialog's, swapped from the INVITE's).
CALLEE_BYE = """<send retrans="500"><![CDATA[
BYE [$contact];transport=[transport] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To: [$caller]
[last_Call-ID:]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
<recv response="200"/>
"""
# The gateway gives up ringing: CANCEL (answered 200), then 487 to the INVITE, and its ACK.
CANCELLED = (
    f'<recv request="CANCEL" timeout="{(RING_S + 5) * 1000}"/>\n'
    + sipp.OK_TO_LAST
    + RESPONSE_TO_INVITE.format(status="487 Request Terminated")
    + sipp.UAS_RECV_ACK
)
KEEP_CALLER = (
    '<ereg regexp="[^\\r\\n]+" search_in="hdr" header="From:" assign_to="caller"/>'
    '<ereg regexp="sip:[^>;]+" search_in="hdr" header="Contact:" assign_to="contact"/>'
)


def trunk(folder: Path, xml: str, port: int, transport: str = "u1", media_port: int = 0) -> sipp.SippRun:
    run = sipp.start(
        folder, sipp.scenario(xml, name="trunk"), target=None, sip_port=port, media_port=media_port or free_port(),
        transport=transport, timeout_s=60,
    )  # fmt: skip
    time.sleep(0.5)  # SIPp binds its port
    return run


def test_a_number_through_a_trunk_that_asks_for_a_digest(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser, tmp_path: Path
) -> None:
    callee = RtpStream(ssrc=77)
    callee.audio(tone([CALLEE_HZ], 20.0))
    folder = tmp_path / "sipp"
    folder.mkdir()
    xml = (
        RECV_INVITE.format(check="")
        + sipp.uas_reply("407 Proxy Authentication Required", PROXY_CHALLENGE)
        + sipp.UAS_RECV_ACK
        + RECV_INVITE.format(check=CHECK_PROXY_AUTH)
        + sipp.uas_reply("183 Session Progress")
        + sipp.uas_reply("180 Ringing")
        + sipp.uas_answer("8", "X-Auth-Seen: [$proxyauth]\n")  # SIPp refuses a variable it never uses
        + sipp.UAS_RECV_ACK
        + sipp.play(callee.write_pcap(folder / "callee.pcap"))
        + '<recv request="BYE" timeout="60000"/>\n'
        + sipp.OK_TO_LAST
    )
    media_port = free_port(socket.SOCK_DGRAM)
    run = trunk(folder, xml, trunk_port, media_port=media_port)
    context, page = open_room(singing_chromium, stack, "trunk-call")
    with LoopbackCapture() as capture:
        dial_number(page, NUMBER)
        row_state(page, "answered")
        page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 1")
        time.sleep(3.0)
        heard = page.evaluate(SUBSCRIBER_PEAK)
        rows = page.eval_on_selector_all("#participant-list li", "items => items.map(i => i.textContent)")
        time.sleep(1.0)
    to_callee = received_audio(capture.rtp_to(media_port))
    assert abs(heard["hz"] - CALLEE_HZ) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not the callee"
    assert heard["db"] - heard["medianDb"] > 30, heard
    assert tone_energy(to_callee[-8000 * 2 :], PAGE_HZ) > 0.3, "the callee does not hear the page's 440 Hz"
    assert any(MASKED in row for row in rows) and not any(NUMBER in row for row in rows), rows

    page.click("#participant-list li[data-state='answered'] button.hang-up")
    assert run.wait(30) == 0, run.errors()
    participant_left(page, stack)
    (first, unanswered), (second, answer) = sipp.received_invites(folder, "Proxy-Authorization")
    assert unanswered is None and answer is not None, (first, second)
    assert verify_authorization(
        answer, method="INVITE", credentials=DigestCredentials(TRUNK_USER, TRUNK_PASSWORD), realm=REALM
    ), answer
    assert second.startswith(f"INVITE sip:{NUMBER}@127.0.0.1:{trunk_port}"), second
    assert NUMBER.removeprefix("+") not in stack.log.read_text(), "the number is in the server's log"
    context.close()


def test_a_busy_callee_ends_as_busy(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser, tmp_path: Path
) -> None:
    xml = (
        RECV_INVITE.format(check="")
        + sipp.uas_reply("180 Ringing")
        + sipp.pause(500)
        + sipp.uas_reply("486 Busy Here")
        + sipp.UAS_RECV_ACK
    )
    run = trunk(tmp_path / "sipp", xml, trunk_port)
    context, page = open_room(singing_chromium, stack, "busy-call")
    dial_number(page, NUMBER)
    row_state(page, "busy")
    participant_left(page, stack)
    assert run.wait(20) == 0, run.errors()
    assert dial_out_rows(stack, "busy-call") == [("failed", "busy")]
    with urllib.request.urlopen(f"{stack.base}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    posted = re.search(r'^dialbridge_gateway_callbacks_total\{result="posted"\} ([0-9.]+)$', metrics, re.MULTILINE)
    assert posted is not None and float(posted.group(1)) >= 3, "ringing, busy and the created call: each posted"
    context.close()


def test_a_callee_that_never_answers_ends_as_no_answer(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser, tmp_path: Path
) -> None:
    xml = RECV_INVITE.format(check=KEEP_CSEQ) + sipp.uas_reply("180 Ringing") + CANCELLED
    run = trunk(tmp_path / "sipp", xml, trunk_port)
    context, page = open_room(singing_chromium, stack, "unanswered")
    dial_number(page, NUMBER)
    row_state(page, "ringing")
    started = time.monotonic()
    row_state(page, "no_answer")
    assert RING_S - 1 <= time.monotonic() - started <= RING_S + 8  # generous: a loaded machine is slow
    participant_left(page, stack)
    assert run.wait(20) == 0, run.errors()
    assert dial_out_rows(stack, "unanswered") == [("failed", "no_answer")]
    context.close()


def test_early_media_reaches_the_page_while_it_rings(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser, tmp_path: Path
) -> None:
    """183 with SDP: the callee's network plays something (a ringback, an announcement) before any answer; the
    room hears it. Early media is no answer: the call still ends as no_answer when the ring time is up."""
    callee = RtpStream(ssrc=78)
    callee.audio(tone([CALLEE_HZ], 6.0))
    folder = tmp_path / "sipp"
    folder.mkdir()
    xml = (
        RECV_INVITE.format(check=KEEP_CSEQ)
        + sipp.uas_answer("8", status="183 Session Progress")
        + sipp.play(callee.write_pcap(folder / "early.pcap"))
        + CANCELLED
    )
    run = trunk(folder, xml, trunk_port)
    context, page = open_room(singing_chromium, stack, "early-media")
    dial_number(page, NUMBER)
    row_state(page, "ringing")
    page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 1")
    time.sleep(1.5)
    heard = page.evaluate(SUBSCRIBER_PEAK)
    assert page.query_selector("#participant-list li[data-state='ringing']") is not None  # still not answered
    assert abs(heard["hz"] - CALLEE_HZ) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not the early media"
    assert heard["db"] - heard["medianDb"] > 30, heard
    row_state(page, "no_answer")
    participant_left(page, stack)
    assert run.wait(20) == 0, run.errors()
    context.close()


def test_a_number_outside_the_allow_list_is_refused_and_nothing_is_dialled(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", trunk_port))
        listener.settimeout(2.0)
        context, page = open_room(singing_chromium, stack, "abroad")
        dial_number(page, "+442079460000")
        page.wait_for_function(
            "() => document.querySelector('#phone-status').textContent.includes('DIALBRIDGE_DIAL_OUT_PREFIXES')"
        )
        with pytest.raises(TimeoutError):
            listener.recv(65535)
    assert dial_out_rows(stack, "abroad") == []
    context.close()


def test_a_sip_uri_over_tcp_answers_then_hangs_up(stack: VoiceStack, singing_chromium: Browser, tmp_path: Path) -> None:
    port = free_port()
    xml = (
        RECV_INVITE.format(check=KEEP_CALLER)
        + sipp.uas_reply("180 Ringing")
        + sipp.uas_answer("8")
        + sipp.UAS_RECV_ACK
        + sipp.pause(2500)
        + CALLEE_BYE
    )
    run = trunk(tmp_path / "sipp", xml, port, transport="t1")
    context, page = open_room(singing_chromium, stack, "by-uri")
    placed = dial_sip_uri(page, f"sip:callee@127.0.0.1:{port};transport=tcp")
    assert placed["status"] == 201, placed
    row_state(page, "answered")
    row_state(page, "completed")
    participant_left(page, stack)
    assert run.wait(20) == 0, run.errors()
    assert dial_out_rows(stack, "by-uri") == [("ended", "completed")]
    refused = dial_sip_uri(page, "sips:callee@127.0.0.1")
    assert refused["status"] == 422 and "no TLS" in str(refused["body"]), refused
    context.close()


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed: make test installs the baresip package")
def test_baresip_called_by_sip_uri_and_the_room_hear_each_other(
    stack: VoiceStack, singing_chromium: Browser, tmp_path: Path
) -> None:
    phone_hz = 650.0
    phone = Baresip(tmp_path / "baresip", freq=phone_hz, rtp_low=17500, auto_answer=True)
    try:
        context, page = open_room(singing_chromium, stack, "softphone")
        placed = dial_sip_uri(page, f"sip:baresip@127.0.0.1:{phone.sip_port}")
        assert placed["status"] == 201, placed
        phone.wait_event("CALL_ESTABLISHED", timeout=15)
        row_state(page, "answered")
        page.wait_for_function("() => document.querySelectorAll('.OT_subscriber video').length === 1")
        time.sleep(3.0)
        heard = page.evaluate(SUBSCRIBER_PEAK)
        page.click("#participant-list li[data-state='answered'] button.hang-up")
        phone.wait_event("CALL_CLOSED", timeout=10)
        participant_left(page, stack)
        context.close()
        recorded, rate = phone.heard()
    finally:
        phone.close()
    assert abs(heard["hz"] - phone_hz) <= 2 * heard["binHz"] + 8, f"the page hears {heard}, not baresip"
    assert heard["db"] - heard["medianDb"] > 30, heard
    tail = recorded[-rate * 2 :]
    assert tone_energy(tail, PAGE_HZ, rate) > 0.3, "baresip does not hear the page's 440 Hz"


def test_a_dial_out_whose_gateway_dies_ends_as_failed(
    stack: VoiceStack, trunk_port: int, singing_chromium: Browser, tmp_path: Path
) -> None:
    """SIGKILL: the gateway reports nothing. Its participant's socket closing is the sign; the app closes the
    dial-out as failed and the room sees it (rather than a call that stays answered for good)."""
    xml = (
        RECV_INVITE.format(check="")
        + sipp.uas_answer("8")
        + sipp.UAS_RECV_ACK
        + '<recv request="BYE" timeout="60000"/>\n'
        + sipp.OK_TO_LAST
    )
    run = trunk(tmp_path / "sipp", xml, trunk_port)
    try:
        context, page = open_room(singing_chromium, stack, "orphaned")
        dial_number(page, NUMBER)
        row_state(page, "answered")
        os.kill(gateway_pid(stack), signal.SIGKILL)
        row_state(page, "failed")
        assert dial_out_rows(stack, "orphaned") == [("failed", "failed")]
        context.close()
    finally:
        run.process.kill()
        run.process.wait()
    wait_until(lambda: stack.get("/healthz")["status"] == "ok", 20, "the gateway was not started again", every=0.1)
