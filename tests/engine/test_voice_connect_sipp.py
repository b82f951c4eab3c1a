"""NCCO `connect` and `POST /v1/calls` with real peers: `dialbridge voice` calls SIPp, as the trunk that phone
numbers go through (demanding a digest, as trunks do) or as a SIP endpoint, and the two sides of a connect hear
each other (RTP both ways, captured on the loopback). The official `vonage` SDK's `create_call` places a call."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from vonage import Auth, HttpClientOptions, Vonage
from vonage_voice.models.ncco import Talk
from vonage_voice.models.requests import CreateCallRequest

from dialbridge.credentials import VoiceCredentials
from dialbridge.sip.auth import DigestCredentials, verify_authorization
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import NccoApp, free_port, voice_engine, wait_until

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]

CALLER_HZ, CALLEE_HZ = 440.0, 700.0
TRUNK_USER, TRUNK_PASSWORD, REALM = "connect-trunk", "c0nnect-s3cret", "trunk.test"
NUMBER = "15550104567"
RECV_INVITE = '<recv request="INVITE" crlf="true"/>\n'
CHALLENGE = f'WWW-Authenticate: Digest realm="{REALM}", nonce="[pid]-[call_number]-n0nce", algorithm=MD5, qop="auth"\n'
# SIPp checks the Authorization's fields (our user, its realm, its nonce echoed); the digest itself is verified from
# SIPp's message log.
RECV_AUTHORIZED_INVITE = f"""<recv request="INVITE" crlf="true">
  <action>
    <ereg regexp="Digest username=.{TRUNK_USER}., realm=.{REALM.replace(".", "[.]")}., nonce=.[0-9]+-1-n0nce."
      search_in="hdr" header="Authorization:" check_it="true" assign_to="auth"/>
  </action>
</recv>
"""


def uas(folder: Path, xml: str, port: int, media_port: int) -> sipp.SippRun:
    run = sipp.start(folder, sipp.scenario(xml, name="callee"), target=None, sip_port=port, media_port=media_port)
    time.sleep(0.5)  # SIPp binds its port
    return run


def test_a_connect_to_a_phone_goes_through_a_trunk_that_asks_for_a_digest_and_both_hear_each_other(
    tmp_path: Path,
) -> None:
    trunk_port = free_port()
    trunk_media, caller_media = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    callee_voice = RtpStream(ssrc=77)
    callee_voice.audio(tone([CALLEE_HZ], 20.0))
    caller_voice = RtpStream(ssrc=78)
    caller_voice.silence(1.0)
    caller_voice.audio(tone([CALLER_HZ], 6.0))
    ncco = [{"action": "connect", "from": "15550001111", "endpoint": [{"type": "phone", "number": NUMBER}]}]
    trunk_folder, caller_folder = tmp_path / "trunk", tmp_path / "caller"
    trunk_folder.mkdir()
    caller_folder.mkdir()
    trunk_xml = (
        RECV_INVITE
        + sipp.uas_reply("401 Unauthorized", CHALLENGE)
        + sipp.UAS_RECV_ACK
        + RECV_AUTHORIZED_INVITE
        + sipp.uas_reply("180 Ringing")
        + sipp.uas_answer("8", "X-Auth-Seen: [$auth]\n")  # SIPp refuses a variable it never uses
        + sipp.UAS_RECV_ACK
        + sipp.play(callee_voice.write_pcap(trunk_folder / "callee.pcap"))
        + '<recv request="BYE" timeout="30000"/>\n'
        + sipp.OK_TO_LAST
    )
    caller_xml = sipp.scenario(
        sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.play(caller_voice.write_pcap(caller_folder / "caller.pcap")),
        sipp.pause(7000), sipp.BYE,
    )  # fmt: skip
    trunk_env = {
        "DIALBRIDGE_SIP_TRUNK_URI": f"sip:127.0.0.1:{trunk_port}",
        "DIALBRIDGE_SIP_TRUNK_USERNAME": TRUNK_USER,
        "DIALBRIDGE_SIP_TRUNK_PASSWORD": TRUNK_PASSWORD,
    }
    with NccoApp(ncco) as app, voice_engine(tmp_path, **app.env, **trunk_env) as engine, LoopbackCapture() as capture:
        trunk = uas(trunk_folder, trunk_xml, trunk_port, trunk_media)
        caller = sipp.start(
            caller_folder, caller_xml, target=engine.sip_target, sip_port=free_port(), media_port=caller_media
        )
        assert caller.wait(40) == 0, caller.errors()
        assert trunk.wait(20) == 0, f"the trunk did not get the engine's BYE after the caller's:\n{trunk.errors()}"
        outbound = {"direction": "outbound", "status": "completed"}
        assert app.wait_for(lambda: any(outbound.items() <= e.items() for e in app.events()), 5)
        placed = [e for e in app.events() if e.get("direction") == "outbound"]
    to_caller = received_audio(capture.rtp_to(caller_media))
    to_callee = received_audio(capture.rtp_to(trunk_media))
    assert tone_energy(to_caller[-8000 * 3 :], CALLEE_HZ) > 0.3, "the caller does not hear the callee"
    assert tone_energy(to_callee[-8000 * 3 :], CALLER_HZ) > 0.3, "the callee does not hear the caller"
    (first, unanswered), (second, answer) = sipp.received_invites(trunk_folder, "Authorization")
    assert unanswered is None and answer is not None, (first, second)
    assert second.startswith(f"INVITE sip:{NUMBER}@127.0.0.1:{trunk_port}"), second
    assert verify_authorization(
        answer, method="INVITE", credentials=DigestCredentials(TRUNK_USER, TRUNK_PASSWORD), realm=REALM
    ), answer
    statuses = [e["status"] for e in placed]
    assert statuses == ["started", "ringing", "answered", "completed"], statuses
    assert {e["to"] for e in placed} == {NUMBER}


def test_the_sdk_creates_a_call_that_a_sip_phone_answers_and_hears_its_ncco(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callee_port, callee_media = free_port(), free_port(socket.SOCK_DGRAM)
    folder = tmp_path / "callee"
    folder.mkdir()
    xml = (
        RECV_INVITE
        + sipp.uas_reply("180 Ringing")
        + sipp.uas_answer("8")
        + sipp.UAS_RECV_ACK
        + '<recv request="BYE" timeout="30000"/>\n'
        + sipp.OK_TO_LAST
    )
    with NccoApp([]) as app, voice_engine(tmp_path, **app.env) as engine, LoopbackCapture() as capture:
        run = uas(folder, xml, callee_port, callee_media)
        assert engine.voice_dir is not None
        credentials = VoiceCredentials.load_or_create(engine.voice_dir)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(credentials.ca_bundle_path))
        options = HttpClientOptions(api_host=f"127.0.0.1:{engine.api_port}", timeout=5, max_retries=0)
        voice = Vonage(
            Auth(application_id=credentials.application_id, private_key=credentials.private_key_pem), options
        ).voice
        created = voice.create_call(
            CreateCallRequest(
                to=[{"type": "sip", "uri": f"sip:callee@127.0.0.1:{callee_port}"}],
                from_={"number": "15550001111"},
                ncco=[Talk(text="Hello from the engine. This call ends now.")],
                event_url=[app.url("/events")],
            )
        )
        assert (created.status, created.direction) == ("started", "outbound")
        assert run.wait(30) == 0, f"the callee did not get the engine's BYE after the talk:\n{run.errors()}"
        assert wait_until(lambda: "completed" in [e["status"] for e in app.events(created.uuid)], 5)
    statuses = [e["status"] for e in app.events(created.uuid)]
    assert statuses == ["started", "ringing", "answered", "completed"], statuses
    heard = received_audio(capture.rtp_to(callee_media))
    assert len(heard) > 8000, "the callee heard nothing of the NCCO's talk"
    assert float((heard.astype(float) ** 2).mean()) ** 0.5 > 300, "the talk reached the callee as silence"
