"""Phone participants against the real embedded stack (`dialbridge serve`: web server + voice engine) with SIPp
callers: the participants API lists a PIN caller masked and in the conference; muting it through the API stops its
audio reaching the other caller; hanging it up sends it a BYE; `*6` keyed over RFC 4733 mutes it."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack
from tests.helpers import page_config

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(120),
]

CALLER_A = "+14155550123"
CALLER_B = "+447700900456"
DEBIAN_PCAPS = Path("/usr/share/sip-tester")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def room_config(stack: VoiceStack, room_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.base}/room/{room_id}", timeout=5) as response:
        return page_config(response.read().decode())


def phones(stack: VoiceStack, config: dict[str, Any]) -> list[dict[str, Any]]:
    listed = stack.room_api(config, "participants")["participants"]
    return [p for p in listed if p["kind"] == "phone"]


# Polled gently: the stack and the SIPp callers share the machine's cores with the test.
wait_until = partial(helpers.wait_until, every=0.1)


def keyed_pin(pin: str, ssrc: int) -> RtpStream:
    media = RtpStream(ssrc=ssrc)
    for digit in pin + "#":
        media.rfc4733(digit)
    return media


def test_a_pin_caller_is_listed_masked_muted_through_the_api_and_hung_up(stack: VoiceStack, tmp_path: Path) -> None:
    config = room_config(stack, "standup")
    port_a, port_b = 17000, 17100
    a = keyed_pin(config["pin"], 0xA)
    a.silence(5.0)  # "Thank you…", "You are the first participant."
    a.audio(tone([500.0], 30.0))
    run_a = sipp.start(
        tmp_path / "a",
        sipp.scenario(
            sipp.invite(caller=CALLER_A), sipp.ANSWERED, sipp.ACK, sipp.pause(500),
            sipp.play(a.write_pcap(tmp_path / "a.pcap")), sipp.REMOTE_BYE.format(timeout_ms=60000),
        ),
        target=stack.sip_target, sip_port=free_port(), media_port=port_a,
    )  # fmt: skip
    b = keyed_pin(config["pin"], 0xB)
    b.silence(40.0)
    run_b = sipp.start(
        tmp_path / "b",
        sipp.scenario(
            sipp.invite(caller=CALLER_B), sipp.ANSWERED, sipp.ACK, sipp.pause(2500),
            sipp.play(b.write_pcap(tmp_path / "b.pcap")), sipp.pause(45000), sipp.BYE,
        ),
        target=stack.sip_target, sip_port=free_port(), media_port=port_b,
    )  # fmt: skip
    try:
        with LoopbackCapture() as capture:
            wait_until(
                lambda: [p["state"] for p in phones(stack, config)] == ["in_conference", "in_conference"],
                30,
                "both callers in the conference",
            )
            listed = phones(stack, config)
            assert {p["number"] for p in listed} == {"+1 ••• ••• 0123", "+44 ••• ••• 0456"}
            assert "4155550123" not in json.dumps(listed) and all(not p["muted"] for p in listed)
            [caller_a] = [p for p in listed if p["number"].endswith("0123")]

            def heard_since(start: float) -> list[Any]:
                return [d for d in capture.rtp_to(port_b) if d.at >= start]

            def tone_at_b(start: float) -> float:
                wait_until(lambda: len(heard_since(start)) >= 100, 10, "2 s of audio at caller B")
                return tone_energy(received_audio(heard_since(start)[:100]), 500.0)

            # A's tone starts ~7 s after its answer: wait until B hears it, then measure 2 s of it.
            wait_until(lambda: tone_at_b(time.monotonic()) > 0.3, 20, "caller B hearing caller A's tone")

            muted = stack.room_api(config, "mute", {"call_id": caller_a["call_id"], "muted": True})
            assert muted["muted"] is True
            assert [p["muted"] for p in phones(stack, config) if p["call_id"] == caller_a["call_id"]] == [True]
            after_mute = time.monotonic() + 0.3  # what was already mixed and in flight
            assert tone_at_b(after_mute) < 0.02, "caller B still hears the muted caller"

            ended = stack.room_api(config, "hang-up", {"call_id": caller_a["call_id"]})
            assert ended["state"] == "ended"
            assert run_a.wait(15) == 0, f"caller A got no BYE after the hang-up:\n{run_a.errors()}"
            wait_until(lambda: len(phones(stack, config)) == 1, 10, "caller A leaving the list")
    finally:
        for run in (run_a, run_b):
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()


def test_star_six_keyed_by_sipp_mutes_the_caller(stack: VoiceStack, tmp_path: Path) -> None:
    config = room_config(stack, "keys")
    media = keyed_pin(config["pin"], 0xC)
    media.silence(1.0)
    folder = tmp_path / "c"
    run = sipp.start(
        folder,
        sipp.scenario(
            sipp.invite(caller=CALLER_A), sipp.ANSWERED, sipp.ACK, sipp.pause(500),
            sipp.play(media.write_pcap(tmp_path / "pin.pcap")), sipp.pause(9000),  # PIN, then the join prompts
            sipp.play(DEBIAN_PCAPS / "dtmf_2833_star.pcap"), sipp.pause(1200),
            sipp.play(DEBIAN_PCAPS / "dtmf_2833_6.pcap"), sipp.pause(12000), sipp.BYE,
        ),
        target=stack.sip_target, sip_port=free_port(), media_port=17200,
    )  # fmt: skip
    try:
        wait_until(lambda: [p["state"] for p in phones(stack, config)] == ["in_conference"], 30, "the caller joining")
        assert phones(stack, config)[0]["muted"] is False
        wait_until(lambda: phones(stack, config)[0]["muted"] is True, 20, "*6 muting the caller")
        assert run.wait(30) == 0, run.errors()
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
