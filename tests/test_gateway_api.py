"""The gateway's control API as `dialbridge serve` runs it: the official `vonage` SDK dials through it exactly as it
dials through Vonage Video, and what is not a SIP dial of this application is refused with Vonage's error shape."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vonage import Auth, HttpClientOptions, Vonage
from vonage_video.models import InitiateSipRequest, SipOptions

from dialbridge.credentials import VoiceCredentials
from tests.engine.stack import VoiceStack, voice_stack
from tests.helpers import wait_until
from tests.served import room_config

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def engine_calls(stack: VoiceStack) -> int:
    return int(stack.get("/healthz")["voice_engine"]["calls"])


def test_the_vonage_sdk_dials_and_disconnects_through_the_gateway(
    stack: VoiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = VoiceCredentials.load_or_create(stack.voice_dir)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(credentials.ca_bundle_path))  # how requests (the SDK) trusts it
    options = HttpClientOptions(video_host=f"127.0.0.1:{stack.gateway_api_port}", timeout=10, max_retries=0)
    video = Vonage(
        Auth(application_id=credentials.application_id, private_key=credentials.private_key_pem), options
    ).video
    config = room_config(stack.base, "sdk-room")
    session_id = config["sessionId"]

    placed = video.initiate_sip_call(
        InitiateSipRequest(
            session_id=session_id,
            token=config["token"],
            sip=SipOptions(
                uri=f"sip:dialin@127.0.0.1:{stack.sip_port}",
                headers={"X-OpenTok-SessionId": session_id},
                secure=False,
            ),
        )
    )

    assert placed.id and placed.connection_id and placed.stream_id
    wait_until(lambda: engine_calls(stack) == 1, 15, "the gateway's call never reached the voice engine", every=0.1)
    video.disconnect_client(session_id, placed.connection_id)
    wait_until(
        lambda: engine_calls(stack) == 0, 15, "the engine's call did not end when the SDK disconnected it", every=0.1
    )


def _post(stack: VoiceStack, path: str, body: object, token: str | None) -> tuple[int, dict[str, Any]]:
    credentials = VoiceCredentials.load_or_create(stack.voice_dir)
    context = ssl.create_default_context(cafile=str(credentials.ca_bundle_path))
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"https://127.0.0.1:{stack.gateway_api_port}{path}", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_what_is_not_a_sip_dial_of_this_application_is_refused(stack: VoiceStack) -> None:
    credentials = VoiceCredentials.load_or_create(stack.voice_dir)
    token = credentials.app_token()
    config = room_config(stack.base, "refusals")
    dial = f"/v2/project/{credentials.application_id}/dial"
    good = {"sessionId": config["sessionId"], "token": config["token"], "sip": {"uri": "sip:dialin@127.0.0.1"}}

    def refused(path: str, body: object, with_token: str | None = token) -> tuple[int, str]:
        status, answer = _post(stack, path, body, with_token)
        assert answer["code"] == status, answer
        return status, str(answer["message"])

    assert refused(dial, good, None)[0] == 401
    assert refused(dial, good, "not.a.jwt")[0] == 401
    assert refused(f"/v2/project/{'0' * 8}-0000-0000-0000-000000000000/dial", good)[0] == 404
    assert refused(dial, [1, 2])[0] == 400
    assert refused(dial, {**good, "sip": {"uri": "https://example.com"}})[0] == 400
    status, message = refused(dial, {**good, "sip": {"uri": "sip:dialin@127.0.0.1", "headers": {"Via": "x"}}})
    assert status == 400 and "X-" in message
    status, message = refused(dial, {**good, "sip": {"uri": "sip:dialin@127.0.0.1", "secure": True}})
    assert status == 400 and "secure" in message
    other = room_config(stack.base, "another-room")
    status, message = refused(dial, {**good, "token": other["token"]})
    assert status == 403 and "another room" in message, message
    assert engine_calls(stack) == 0
