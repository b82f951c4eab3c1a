"""baresip, a real softphone, registers to `dialbridge voice` and is called: a SIPp caller dials in, its answer NCCO
connects it to baresip's account, baresip answers at once (auto-answer), and the two hear each other (RTP both
ways: baresip's recording, and a capture of what crossed the loopback to SIPp). The caller's BYE ends baresip's
call too."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import NccoApp, free_port, voice_engine, wait_until
from tests.engine.test_voice_baresip import BARESIP, Baresip

pytestmark = [
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed: make test installs the baresip package"),
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]

CALLER_HZ, PHONE_HZ = 440.0, 650.0


def test_a_connect_to_a_registered_baresip_rings_it_and_the_two_hear_each_other(tmp_path: Path) -> None:
    ncco = [{"action": "connect", "from": "15550001111", "endpoint": [{"type": "sip", "uri": "sip:alice@127.0.0.1"}]}]
    # baresip 1.0 (libre 1.1) gives up on any challenge but MD5 (README, SIP_DIGEST_ALGORITHMS).
    accounts = {"DIALBRIDGE_SIP_ACCOUNTS": "alice:s3cret", "DIALBRIDGE_SIP_DIGEST_ALGORITHMS": "MD5"}
    caller_media = free_port(socket.SOCK_DGRAM)
    caller_folder = tmp_path / "caller"
    caller_folder.mkdir()
    voice = RtpStream(ssrc=0x7171)
    voice.audio(tone([CALLER_HZ], 8.0))
    caller_xml = sipp.scenario(
        sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.play(voice.write_pcap(caller_folder / "caller.pcap")),
        sipp.pause(9000), sipp.BYE,
    )  # fmt: skip
    with NccoApp(ncco) as app, voice_engine(tmp_path, **app.env, **accounts) as engine:
        account = f"<sip:alice@{engine.sip_target}>;auth_pass=s3cret;regint=600;answermode=auto"
        phone = Baresip(tmp_path / "baresip", freq=PHONE_HZ, rtp_low=17500, account=account)
        try:
            registered = "200 OK (dialbridge) [1 binding]"
            assert wait_until(lambda: registered in phone.log.read_text(), 10), phone.log.read_text()[-3000:]
            with LoopbackCapture() as capture:
                caller = sipp.start(
                    caller_folder, caller_xml, target=engine.sip_target, sip_port=free_port(), media_port=caller_media
                )
                phone.wait_event("CALL_ESTABLISHED", timeout=15)
                assert caller.wait(40) == 0, caller.errors()
                phone.wait_event("CALL_CLOSED", timeout=10)  # the caller's BYE reached baresip
            outbound = {"direction": "outbound", "status": "completed"}
            assert app.wait_for(lambda: any(outbound.items() <= e.items() for e in app.events()), 5)
            placed = [e["status"] for e in app.events() if e.get("direction") == "outbound"]
            assert placed == ["started", "ringing", "answered", "completed"], placed
            invites = [
                d.payload for d in capture.datagrams
                if d.src[1] == engine.sip_port and d.dst[1] == phone.sip_port and d.payload.startswith(b"INVITE ")
            ]  # fmt: skip
            assert invites, "the engine sent baresip no INVITE"
            heard, rate = phone.heard()
            assert len(heard) > 3 * rate, f"baresip decoded only {len(heard) / rate:.1f} s of audio"
            assert tone_energy(heard[-5 * rate :], CALLER_HZ, rate) > 0.3, "baresip does not hear the caller"
            to_caller = received_audio(capture.rtp_to(caller_media))
            assert len(to_caller) > 8000 * 3, f"the caller received {len(to_caller)} samples"
            assert tone_energy(to_caller[-8000 * 4 :], PHONE_HZ) > 0.3, "the caller does not hear baresip"
        finally:
            phone.close()
