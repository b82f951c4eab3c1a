"""Error messages say what was wrong with the request in the caller's words, and what to send instead — never the
parser's own ("1: JSON decode error", "Invalid header string: 'utf-8' codec can't decode byte 0xb7…")."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from dialbridge.config import Settings
from dialbridge.tokens import AUDIENCE, ISSUER, ParticipantTokens, TokenError
from dialbridge.web.app import create_app
from tests.conftest import FakeClock
from tests.engine.stack import free_port
from tests.helpers import phone_call_headers

JSON = {"content-type": "application/json"}
SECRET = "the-server-secret-" + "x" * 48  # 64 bytes: long enough for HS512 too


@pytest.mark.parametrize(
    ("path", "what"), [("/api/rooms", "the request body"), ("/webhooks/input", "the webhook body")]
)
def test_a_body_that_is_not_json_is_a_400_saying_what_and_where(client: TestClient, path: str, what: str) -> None:
    response = client.post(path, content=b'{"room_id": "a",}', headers=JSON)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith(f"{what} is not valid JSON (")
    assert re.search(r", at character 1[56]\): send a JSON object", error["message"])  # the comma (orjson: 15)


@pytest.mark.parametrize(
    ("body", "headers"), [(b"[1, 2]", JSON), (b"room_id=a", {"content-type": "application/x-www-form-urlencoded"})]
)
def test_an_api_body_that_is_not_a_json_object_says_so(
    client: TestClient, body: bytes, headers: dict[str, str]
) -> None:
    response = client.post("/api/rooms", content=body, headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "the request body must be a JSON object, sent as Content-Type: application/json"
    )


def test_a_wrong_field_is_still_named(client: TestClient) -> None:
    response = client.post("/api/rooms", json={"room_id": 5})

    assert response.status_code == 422
    assert response.json()["error"]["message"] == "room_id: Input should be a valid string"


def claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sid": "s", "room": "r", "cid": "c", "exp": now + 60, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "said"),
    [
        (b64(b"\xb7\xb7\xb7") + ".e30.c2ln", "it is not a well-formed JWT (header.claims.signature)"),
        ("abc", "it is not a well-formed JWT (header.claims.signature)"),
        ("a.b.c", "it is not a well-formed JWT (header.claims.signature)"),
        (jwt.encode(claims(), "another-server-" + "y" * 32), "its signature does not match"),
        (jwt.encode({**claims(), "aud": "elsewhere"}, SECRET), "it is not a dialbridge participant token"),
        (jwt.encode({k: v for k, v in claims().items() if k != "cid"}, SECRET), "it has no 'cid' claim"),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), "it is not signed with HS256"),
    ],
)
def test_a_bad_participant_token_is_named_in_words_that_fit_a_websocket_close(token: str, said: str) -> None:
    with pytest.raises(TokenError) as refused:
        ParticipantTokens(SECRET).verify(token, now=time.time())

    message = str(refused.value)
    assert message == f"invalid participant token: {said}; reload the room page for a new one" or (
        message.startswith(f"invalid participant token: {said}")
        and message.endswith("; reload the room page for a new one")
    )
    assert len(message.encode()) <= 123  # a WebSocket close reason's limit: the signalling socket sends it whole


def test_the_browser_phone_without_its_gateway_says_which_process_to_start(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    # No gateway listens (the tests' namespace holds nothing on its port): the page is told what to run.
    alone = settings.model_copy(update={"voice_dir": str(tmp_path / "voice"), "gateway_api_port": free_port()})
    with TestClient(create_app(alone, clock=clock)) as client:
        headers = phone_call_headers(client.get("/phone").text)
        offer = {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"}
        response = client.post("/api/phone/calls", json=offer, headers=headers)
        hangup = client.post("/api/phone/hangup", json={"call_id": "abc-123"}, headers=headers)

    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "gateway_unavailable"
    assert "`dialbridge gateway`" in error["message"] and "`dialbridge serve` starts it" in error["message"]
    assert "DIALBRIDGE_GATEWAY_API_PORT" in error["message"]
    assert hangup.status_code == 503 and hangup.json()["error"]["code"] == "gateway_unavailable"
