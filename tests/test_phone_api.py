"""The browser phone's API (issue 16 §1.9): every call costs a WebRTC peer in the gateway, so only a page `/phone`
served may place or end calls (its short-lived token), and one address may place only so many a minute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dialbridge.config import Settings
from dialbridge.web.app import create_app
from dialbridge.web.services import PHONE_CALLS_PER_SOURCE_PER_MINUTE
from tests.conftest import FakeClock
from tests.engine.stack import free_port
from tests.helpers import bearer, phone_call_headers, visit

OFFER = {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"}


@pytest.fixture
def client(settings: Settings, clock: FakeClock, tmp_path: Path) -> Iterator[TestClient]:
    # No gateway listens on its port: a call that gets past the checks is refused 503 by the missing gateway.
    alone = settings.model_copy(update={"voice_dir": str(tmp_path / "voice"), "gateway_api_port": free_port()})
    with TestClient(create_app(alone, clock=clock)) as test_client:
        yield test_client


def test_a_call_without_the_phone_pages_token_is_refused_and_costs_no_peer(client: TestClient) -> None:
    room_token = bearer(visit(client, "standup"))  # a room's participant token opens no phone
    for headers in ({}, {"authorization": "Bearer not-a-token"}, room_token):
        for path, body in (("/api/phone/calls", OFFER), ("/api/phone/hangup", {"call_id": "abc-123"})):
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.json()["error"]["code"] == "invalid_token"
            assert "phone page" in response.json()["error"]["message"]
    with_token = client.post("/api/phone/calls", json=OFFER, headers=phone_call_headers(client.get("/phone").text))
    assert with_token.json()["error"]["code"] == "gateway_unavailable"  # past the check: on to the gateway


def test_a_page_kept_open_too_long_is_told_to_reload(client: TestClient, clock: FakeClock) -> None:
    headers = phone_call_headers(client.get("/phone").text)
    clock.advance(3601)
    response = client.post("/api/phone/calls", json=OFFER, headers=headers)
    assert response.status_code == 401 and "reload" in response.json()["error"]["message"]


def test_one_address_places_only_so_many_calls_a_minute(client: TestClient, clock: FakeClock) -> None:
    headers = phone_call_headers(client.get("/phone").text)
    for _ in range(PHONE_CALLS_PER_SOURCE_PER_MINUTE):
        assert client.post("/api/phone/calls", json=OFFER, headers=headers).status_code == 503  # the gateway's
    refused = client.post("/api/phone/calls", json=OFFER, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_calls"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert client.post("/api/phone/hangup", json={"call_id": "abc-123"}, headers=headers).status_code == 503
    clock.advance(61)
    assert client.post("/api/phone/calls", json=OFFER, headers=headers).status_code == 503  # a minute on: again
