"""The running voice engine driven the way the app will drive it on both backends: the official `vonage` SDK's
Voice client, signed with the engine's own application key, against a real call from SIPp. Also: the app's
/healthz and /metrics report the engine."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from vonage import Auth, HttpClientOptions, Vonage
from vonage_voice.models.requests import ListCallsFilter

from dialbridge.credentials import VoiceCredentials
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]


@pytest.fixture
def stack(tmp_path: Path) -> VoiceStack:
    with voice_stack(tmp_path) as running:
        yield running  # type: ignore[misc]


def _voice_client(stack: VoiceStack, monkeypatch: pytest.MonkeyPatch) -> object:
    credentials = VoiceCredentials.load_or_create(stack.voice_dir)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(credentials.ca_bundle_path))  # the engine's own certificate
    options = HttpClientOptions(api_host=f"127.0.0.1:{stack.api_port}", timeout=5, max_retries=0)
    return Vonage(Auth(application_id=credentials.application_id, private_key=credentials.private_key_pem), options)


def test_the_vonage_sdk_lists_mutes_and_hangs_up_a_live_phone_call(
    stack: VoiceStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = stack.new_room("sdk")
    voice = _voice_client(stack, monkeypatch).voice  # type: ignore[attr-defined]
    listener = RtpStream(ssrc=11)
    for digit in pin + "#":
        listener.rfc4733(digit)
    listener.silence(20)
    talker = RtpStream(ssrc=12)
    for digit in pin + "#":
        talker.rfc4733(digit)
    talker.silence(4.0)
    talker.audio(tone([900.0], 16.0))
    runs = {}
    with LoopbackCapture() as capture:
        for name, media, port in (("listener", listener, 17000), ("talker", talker, 17100)):
            folder = tmp_path / name
            folder.mkdir()
            xml = sipp.scenario(
                sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(500),
                sipp.play(media.write_pcap(folder / "media.pcap")), sipp.REMOTE_BYE.format(timeout_ms=40000),
            )  # fmt: skip
            runs[name] = sipp.start(folder, xml, target=stack.sip_target, sip_port=free_port(), media_port=port)
        deadline = time.monotonic() + 20
        while True:  # both callers in the conference: the SDK sees two answered calls in one conversation
            calls, _ = voice.list_calls(ListCallsFilter(status="answered"))
            if len(calls) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(calls) == 2, f"the SDK lists {len(calls)} answered calls"
        time.sleep(9.0)  # both joined (PIN, "joining" prompt) and the talker's tone plays into the conference
        heard_before = time.monotonic()
        for call in calls:  # both: whichever is the talker then speaks no more into the conference
            voice.mute(call.uuid)
        time.sleep(3.0)
        muted_at = time.monotonic()
        for call in calls:
            assert voice.get_call(call.uuid).status == "answered"
            voice.hangup(call.uuid)
        for name, run in runs.items():
            assert run.wait(30) == 0, f"{name} did not get the engine's BYE after the SDK's hangup:\n{run.errors()}"
    unmuted = received_audio([d for d in capture.rtp_to(17000) if heard_before - 3 <= d.at <= heard_before])
    muted = received_audio([d for d in capture.rtp_to(17000) if muted_at - 2 <= d.at <= muted_at])
    assert tone_energy(unmuted, 900.0) > 0.3, "the listener did not hear the talker before the mute"
    assert tone_energy(muted, 900.0) < 0.05, "the listener still hears the talker after the SDK muted it"
    ended = voice.get_call(calls[0].uuid)
    assert ended.status == "completed"


def test_the_apps_health_and_metrics_report_the_voice_engine(stack: VoiceStack) -> None:
    health = stack.get("/healthz")
    assert health["voice_engine"]["status"] == "ok" and health["status"] == "ok"
    assert health["voice_engine"]["sip"] == f"127.0.0.1:{stack.sip_port}"
    with urllib.request.urlopen(stack.base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "dialbridge_voice_engine_up 1" in text
    assert 'dialbridge_voice_tick_lateness_ms{quantile="0.99"}' in text
    assert "dialbridge_voice_rtp_packets_total" in text
