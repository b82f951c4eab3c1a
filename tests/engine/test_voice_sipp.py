"""Real SIP callers (SIPp) against `dialbridge serve` on the embedded backend: web server and voice engine.

Every call goes the production path: SIP INVITE → the engine asks the app's answer webhook (signed: the app is
started with a signature secret and refuses anything its own verifier rejects) → talk + input → digits → the
input webhook → conversation. What the callers hear is read off loopback with a packet capture.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, inband_digits, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]


@pytest.fixture
def stack(tmp_path: Path) -> VoiceStack:
    with voice_stack(tmp_path) as running:
        yield running  # type: ignore[misc]


def _caller(
    stack: VoiceStack, folder: Path, media: RtpStream, *, wait_s: float, after_ms: int = 6000, media_port: int
) -> sipp.SippRun:
    folder.mkdir(parents=True, exist_ok=True)
    pcap = media.write_pcap(folder / "media.pcap")
    xml = sipp.scenario(
        sipp.invite(),
        sipp.ANSWERED,
        sipp.ACK,
        sipp.pause(after_ms),
        sipp.play(pcap),
        sipp.pause(int(wait_s * 1000)),
        sipp.BYE,
    )
    return sipp.start(folder, xml, target=stack.sip_target, sip_port=free_port(), media_port=media_port)


def test_two_callers_with_the_pin_hear_each_other_and_not_themselves(stack: VoiceStack, tmp_path: Path) -> None:
    pin = stack.new_room("standup")
    freqs = {"a": 500.0, "b": 2200.0}
    ports = {"a": 16000, "b": 16100}
    runs = {}
    with LoopbackCapture() as capture:
        for name in ("a", "b"):
            media = RtpStream(ssrc=0x1000 + ord(name))
            for digit in pin + "#":  # keyed 6 s after the 200 OK, while the prompt still plays (barge-in)
                media.rfc4733(digit)
            media.silence(4.5)  # "Thank you. You are joining the meeting now."
            media.audio(tone([freqs[name]], 6.0))
            runs[name] = _caller(stack, tmp_path / name, media, wait_s=13, media_port=ports[name])
        started = time.monotonic()
        for name, run in runs.items():
            assert run.wait(60) == 0, f"caller {name} failed:\n{run.errors()}"
    window = (started + 6 + 1.6 + 5.5, started + 6 + 1.6 + 10)  # both in the conference, both sending their tone
    for me, other in (("a", "b"), ("b", "a")):
        heard = received_audio([d for d in capture.rtp_to(ports[me]) if window[0] <= d.at <= window[1]])
        assert len(heard) > 8000 * 2, f"caller {me} received {len(heard)} samples in the conference window"
        assert tone_energy(heard, freqs[other]) > 0.3, f"caller {me} does not hear the other caller's tone"
        assert tone_energy(heard, freqs[me]) < 0.02, f"caller {me} hears itself"


def test_first_prompt_is_heard_right_after_the_answer(stack: VoiceStack, tmp_path: Path) -> None:
    port = 16200
    with LoopbackCapture() as capture:
        media = RtpStream()
        media.silence(0.5)
        run = _caller(stack, tmp_path / "a", media, wait_s=2, after_ms=100, media_port=port)
        assert run.wait(30) == 0, run.errors()
    audio = received_audio(capture.rtp_to(port))
    assert len(audio) > 8000, "the caller received less than a second of audio"
    loud = abs(audio.astype(int)) > 2000
    assert loud[:16000].any(), "no speech in the first two seconds of the call"


def test_a_wrong_pin_three_times_hears_goodbye_and_the_engine_hangs_up(stack: VoiceStack, tmp_path: Path) -> None:
    stack.new_room("secret")
    media = RtpStream()
    for attempt in ("111111", "222222", "333333"):
        for digit in attempt + "#":
            media.rfc4733(digit)
        media.silence(4.0)
    pcap = media.write_pcap(tmp_path / "wrong.pcap")
    xml = sipp.scenario(
        sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(1000), sipp.play(pcap),
        sipp.REMOTE_BYE.format(timeout_ms=40000),
    )  # fmt: skip
    run = sipp.start(tmp_path / "sipp", xml, target=stack.sip_target, sip_port=free_port(), media_port=16300)
    assert run.wait(60) == 0, f"the engine did not hang up after three wrong PINs:\n{run.errors()}"


def test_a_caller_keying_inband_tones_joins(stack: VoiceStack, tmp_path: Path) -> None:
    pin = stack.new_room("inband")
    port_a, port_b = 16400, 16500
    with LoopbackCapture() as capture:
        a = RtpStream(ssrc=1)
        inband_digits(a, pin + "#")
        a.silence(4.5)
        a.audio(tone([600.0], 5.0))
        run_a = sipp.start(
            tmp_path / "a",
            sipp.scenario(
                sipp.invite(payloads="8 0"), sipp.ANSWERED, sipp.ACK, sipp.pause(1500),
                sipp.play(a.write_pcap(tmp_path / "a.pcap")), sipp.pause(12000), sipp.BYE,
            ),
            target=stack.sip_target, sip_port=free_port(), media_port=port_a,
        )  # fmt: skip
        b = RtpStream(ssrc=2)
        for digit in pin + "#":
            b.rfc4733(digit)
        b.silence(9.0)
        run_b = _caller(stack, tmp_path / "b", b, wait_s=11, after_ms=1500, media_port=port_b)
        started = time.monotonic()
        assert run_a.wait(60) == 0, run_a.errors()
        assert run_b.wait(60) == 0, run_b.errors()
    window = (started + 1.5 + 2.0 + 5.0, started + 1.5 + 2.0 + 9.0)
    heard = received_audio([d for d in capture.rtp_to(port_b) if window[0] <= d.at <= window[1]])
    assert tone_energy(heard, 600.0) > 0.3, "the in-band caller did not reach the conference"


def test_a_caller_keying_sip_info_joins(stack: VoiceStack, tmp_path: Path) -> None:
    pin = stack.new_room("info")
    port_a, port_b = 16600, 16700
    with LoopbackCapture() as capture:
        a = RtpStream(ssrc=3)
        a.silence(4.0)
        a.audio(tone([700.0], 6.0))
        run_a = sipp.start(
            tmp_path / "a",
            sipp.scenario(
                sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(1000), sipp.play(a.write_pcap(tmp_path / "a.pcap")),
                sipp.info_digits(pin + "#"), sipp.pause(9000), sipp.bye(cseq=40),
            ),
            target=stack.sip_target, sip_port=free_port(), media_port=port_a,
        )  # fmt: skip
        b = RtpStream(ssrc=4)
        for digit in pin + "#":
            b.rfc4733(digit)
        b.silence(10.0)
        run_b = _caller(stack, tmp_path / "b", b, wait_s=11, after_ms=1000, media_port=port_b)
        started = time.monotonic()
        assert run_a.wait(60) == 0, run_a.errors()
        assert run_b.wait(60) == 0, run_b.errors()
    window = (started + 1.0 + 6.5, started + 1.0 + 9.5)
    heard = received_audio([d for d in capture.rtp_to(port_b) if window[0] <= d.at <= window[1]])
    assert tone_energy(heard, 700.0) > 0.3, "the SIP INFO caller did not reach the conference"


def test_sipp_builtin_pcap_scenario_with_30_ms_packets_is_answered(stack: VoiceStack, tmp_path: Path) -> None:
    folder = tmp_path / "builtin"
    folder.mkdir()
    (folder / "pcap").symlink_to("/usr/share/sip-tester")
    run = sipp.SippRun(
        subprocess.Popen(
            [
                shutil.which("sipp") or "sipp", stack.sip_target, "-sn", "uac_pcap", "-s", "dialin", "-i", "127.0.0.1",
                "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", "16800", "-m", "1", "-l", "1",
                "-timeout", "40s", "-timeout_error", "-trace_err", "-nostdin",
            ],
            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ),
        folder,
    )  # fmt: skip
    assert run.wait(60) == 0, run.errors()
