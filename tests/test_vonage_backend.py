"""The Vonage backend against a local TLS stub of Vonage's REST API: what the SDKs send, and what users get back."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from dialbridge.config import Settings
from dialbridge.tokens import Role
from dialbridge.web.app import create_app
from tests.conftest import FakeClock, on_both_databases
from tests.helpers import bearer, page_config, run_async, visit
from tests.vonage_stub import VonageStub

APPLICATION_ID = "5f2c5d1e-7a4b-4c61-9f0e-2b1d3c4a5e6f"
LEGACY_API_KEY = "46000001"
LEGACY_API_SECRET = "legacy-secret-0123456789abcdef0123456789"
SIP_USER = "sip-user"
SIP_PASSWORD = "sip-password"
DIAL_IN = "+14155550100"
SDK_URL = "https://unpkg.com/@vonage/client-sdk-video@2/dist/js/opentok.js"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def stub(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VonageStub]:
    bundle = tmp_path / "stub-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    server = VonageStub(ca)
    server.start()
    yield server
    server.close()


def vonage_settings(db_url: str, stub: VonageStub, **credentials: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        backend="vonage",
        database_url=db_url,
        public_base_url="https://dialbridge.example.test",
        dial_in_number=DIAL_IN,
        vonage_api_host=stub.host,
        vonage_video_host=stub.host,
        vonage_opentok_host=stub.host,
        vonage_sip_username=SIP_USER,
        vonage_sip_password=SIP_PASSWORD,
        **credentials,
    )


@pytest.fixture
def app_settings(db_url: str, stub: VonageStub, private_key: rsa.RSAPrivateKey) -> Settings:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return vonage_settings(db_url, stub, vonage_application_id=APPLICATION_ID, vonage_private_key=pem)


@pytest.fixture
def vonage(app_settings: Settings, clock: FakeClock) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture
def legacy(db_url: str, stub: VonageStub, clock: FakeClock) -> Iterator[TestClient]:
    settings = vonage_settings(db_url, stub, vonage_api_key=LEGACY_API_KEY, vonage_api_secret=LEGACY_API_SECRET)
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client


def verified_app_jwt(token: str, private_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, private_key.public_key(), algorithms=["RS256"])
    return claims


# ---- the room page ---------------------------------------------------------------------------------------------
def test_room_page_loads_vonage_sdk_with_application_id_session_and_client_token(
    vonage: TestClient, stub: VonageStub, private_key: rsa.RSAPrivateKey
) -> None:
    response = vonage.get("/room/standup")

    assert response.status_code == 200
    assert f'<script src="{SDK_URL}"></script>' in response.text
    config = page_config(response.text)
    assert config["backend"] == "vonage"
    assert config["apiKey"] == APPLICATION_ID
    assert config["sessionId"] in stub.sessions
    claims = verified_app_jwt(config["token"], private_key)
    assert claims["application_id"] == APPLICATION_ID
    assert claims["session_id"] == config["sessionId"]
    assert claims["role"] == "publisher"
    participant_cid = jwt.decode(config["participantToken"], options={"verify_signature": False})["cid"]
    assert json.loads(claims["connection_data"]) == {"room": "standup", "participant": participant_cid}
    assert config["participantToken"] != config["token"]


def test_session_is_created_routed_with_application_jwt(
    vonage: TestClient, stub: VonageStub, private_key: rsa.RSAPrivateKey
) -> None:
    visit(vonage, "standup")

    [create] = stub.received("POST", "/session/create")
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert create.form()["p2p.preference"] == "disabled"  # routed: SIP dial-out needs the Media Router
    auth = create.headers["authorization"].removeprefix("Bearer ")
    assert verified_app_jwt(auth, private_key)["application_id"] == APPLICATION_ID


@on_both_databases
def test_twenty_concurrent_first_visits_create_one_session_and_one_pin(
    app_settings: Settings, clock: FakeClock, stub: VonageStub
) -> None:
    app = create_app(app_settings, clock=clock)

    async def visit_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dialbridge.test") as client:
            return await asyncio.gather(*(client.get("/room/launch") for _ in range(20)))

    responses = run_async(visit_all())

    assert [r.status_code for r in responses] == [200] * 20
    configs = [page_config(r.text) for r in responses]
    assert len(stub.received("POST", "/session/create")) == 1
    assert len({c["sessionId"] for c in configs}) == 1
    assert len({c["pin"] for c in configs}) == 1


def test_session_creation_failure_is_a_502_naming_it_and_leaves_no_room(vonage: TestClient, stub: VonageStub) -> None:
    stub.fail("POST", "session", 403, "Invalid credentials")

    response = vonage.get("/room/standup")

    assert response.status_code == 502
    assert "creating a video session at Vonage failed" in response.json()["error"]["message"]
    assert vonage.get("/api/rooms/standup").status_code == 404


def test_session_creation_after_a_dial_out_is_still_sent_as_a_form(vonage: TestClient, stub: VonageStub) -> None:
    # The SDK's client keeps a JSON Content-Type from earlier requests; session creation must not inherit it.
    config = visit(vonage, "standup")
    assert vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).status_code == 201

    visit(vonage, "retro")

    creates = stub.received("POST", "/session/create")
    assert [c.headers["content-type"] for c in creates] == ["application/x-www-form-urlencoded"] * 2


# ---- dial-out and hang-up ----------------------------------------------------------------------------------------
def test_conference_dial_out_sends_the_tutorials_sip_call(
    vonage: TestClient, stub: VonageStub, private_key: rsa.RSAPrivateKey
) -> None:
    config = visit(vonage, "standup")
    session_id = config["sessionId"]

    response = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    assert response.status_code == 201, response.text
    placed = response.json()
    [dial] = stub.received("POST", "/v2/")
    assert dial.path == f"/v2/project/{APPLICATION_ID}/dial"
    auth = dial.headers["authorization"].removeprefix("Bearer ")
    assert verified_app_jwt(auth, private_key)["application_id"] == APPLICATION_ID
    body = dial.json()
    assert body["sessionId"] == session_id
    assert body["sip"] == {
        "uri": "sip:14155550100@sip.nexmo.com;transport=tls",
        "headers": {"X-OpenTok-SessionId": session_id, "X-dialbridge-dial-out": placed["call_id"]},
        "auth": {"username": SIP_USER, "password": SIP_PASSWORD},
        "secure": True,
    }
    sip_token = verified_app_jwt(body["token"], private_key)
    assert sip_token["session_id"] == session_id
    sip_connection = json.loads(sip_token["connection_data"])
    assert (sip_connection["sip"], sip_connection["role"]) == (True, "client")  # the tutorial's phone-bridge mark
    assert placed["kind"] == "conference"
    assert placed["target"] == DIAL_IN
    assert placed["state"] == "live"
    assert (session_id, placed["connection_id"]) in stub.connections
    assert placed["stream_id"]


def test_phone_dial_out_calls_that_number_from_the_dial_in_number(
    vonage: TestClient, stub: VonageStub, private_key: rsa.RSAPrivateKey
) -> None:
    config = visit(vonage, "standup")

    response = vonage.post("/api/rooms/standup/dial-out", json={"number": "+447700900123"}, headers=bearer(config))

    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "phone"
    assert response.json()["target"] == "+447700900123"
    sip = stub.received("POST", "/v2/")[0].json()["sip"]
    assert sip["uri"] == "sip:447700900123@sip.nexmo.com;transport=tls"
    assert sip["from"] == "14155550100@sip.nexmo.com"
    assert "X-OpenTok-SessionId" not in sip["headers"]  # not the phone bridge: no conference for it to join
    # The SIP connection's data reaches every browser of the session and names its stream: masked.
    token = verified_app_jwt(stub.received("POST", "/v2/")[0].json()["token"], private_key)
    assert json.loads(token["connection_data"])["name"] == "+44 ••• ••• 0123"
    assert "447700900123" not in token["connection_data"]


def test_a_sip_uri_dial_out_calls_that_address_without_the_accounts_credentials(
    vonage: TestClient, stub: VonageStub
) -> None:
    config = visit(vonage, "standup")
    uri = "sip:alice@pbx.example.com;transport=tcp"
    response = vonage.post("/api/rooms/standup/dial-out", json={"sip_uri": uri}, headers=bearer(config))
    assert response.status_code == 201, response.text
    assert (response.json()["kind"], response.json()["target"]) == ("phone", uri)

    def dialled() -> list[dict[str, Any]]:
        return [r.json()["sip"] for r in stub.received("POST", "/v2/") if r.path.endswith("/dial")]

    assert dialled()[0]["uri"] == uri and "auth" not in dialled()[0]  # Vonage's SIP password is for Vonage only
    secure = vonage.post("/api/rooms/standup/dial-out", json={"sip_uri": "sips:bob@pbx"}, headers=bearer(config))
    assert secure.status_code == 201 and [sip["secure"] for sip in dialled()] == [False, True]


def test_second_conference_dial_out_while_one_is_live_is_409(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    first = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    second = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    assert second.status_code == 409
    assert second.json()["error"]["code"] == "dial_out_in_progress"
    assert first.json()["call_id"] in second.json()["error"]["message"]
    assert len(stub.received("POST", "/v2/")) == 1


def test_hang_up_force_disconnects_the_sip_connection_and_frees_the_room(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()

    response = vonage.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=bearer(config))

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "ended"
    [delete] = stub.received("DELETE")
    assert delete.path == (
        f"/v2/project/{APPLICATION_ID}/session/{config['sessionId']}/connection/{placed['connection_id']}"
    )
    assert "authorization" in delete.headers
    again = vonage.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=bearer(config))
    assert again.status_code == 409
    assert vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).status_code == 201


@pytest.mark.parametrize("backend", ["vonage", "legacy"])
def test_hang_up_after_the_phone_side_left_ends_the_call(
    backend: str, request: pytest.FixtureRequest, stub: VonageStub
) -> None:
    client: TestClient = request.getfixturevalue(backend)
    config = visit(client, "standup")
    placed = client.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()
    stub.connections.clear()  # Vonage no longer has the connection: it answers 404

    response = client.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=bearer(config))

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "ended"
    assert len(stub.received("DELETE")) == 1
    assert client.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).status_code == 201


def test_a_subscribers_token_may_neither_dial_out_nor_hang_up(
    vonage: TestClient, stub: VonageStub, clock: FakeClock
) -> None:
    config = visit(vonage, "standup")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()
    tokens = vonage.app.state.services.tokens  # type: ignore[attr-defined]
    room = vonage.app.state.services.store.room("standup")  # type: ignore[attr-defined]
    viewer = tokens.issue(session_id=room.session_id, room_id="standup", now=clock(), role=Role.SUBSCRIBER)
    headers = {"Authorization": f"Bearer {viewer}"}
    seen = len(stub.received())
    dialled = vonage.post("/api/rooms/standup/dial-out", json={"number": "+447700900123"}, headers=headers)
    assert dialled.status_code == 403 and dialled.json()["error"]["code"] == "role_not_allowed"
    hung_up = vonage.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=headers)
    assert hung_up.status_code == 403
    assert len(stub.received()) == seen  # nothing reached Vonage
    moderator = tokens.issue(session_id=room.session_id, room_id="standup", now=clock(), role=Role.MODERATOR)
    ended = vonage.post(
        "/api/rooms/standup/hang-up",
        json={"call_id": placed["call_id"]},
        headers={"Authorization": f"Bearer {moderator}"},
    )
    assert ended.status_code == 200


def test_hang_up_of_an_unknown_call_is_404(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")

    response = vonage.post("/api/rooms/standup/hang-up", json={"call_id": "do_nope"}, headers=bearer(config))

    assert response.status_code == 404
    assert stub.received("DELETE") == []


def test_dial_out_failure_at_vonage_is_a_502_and_leaves_nothing_live(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    stub.fail("POST", "dial", 500, "Internal error")

    response = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "platform_error"
    assert "placing the SIP call at Vonage failed" in response.json()["error"]["message"]
    store = vonage.app.state.services.dial_outs.store  # type: ignore[attr-defined]
    assert [d.state for d in store.for_room("standup")] == ["failed"]
    stub.recover()  # the failed attempt does not block the next one
    assert vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).status_code == 201


def test_hang_up_failure_at_vonage_is_a_502_naming_it(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()
    stub.fail("DELETE", "connection", 403, "Forbidden")

    response = vonage.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=bearer(config))

    assert response.status_code == 502
    assert "disconnecting the SIP connection at Vonage failed" in response.json()["error"]["message"]


@pytest.mark.parametrize("case", ["missing", "not bearer", "forged", "other room", "expired"])
def test_dial_out_needs_a_participant_token_of_that_room(
    case: str, vonage: TestClient, stub: VonageStub, clock: FakeClock, app_settings: Settings
) -> None:
    config = visit(vonage, "standup")
    other = visit(vonage, "retro")
    headers = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {config['participantToken']}"},
        "forged": {
            "Authorization": "Bearer "
            + jwt.encode({"sid": config["sessionId"]}, "a-guessed-secret-of-enough-length-to-sign", algorithm="HS256")
        },
        "other room": bearer(other),
        "expired": bearer(config),
    }[case]
    if case == "expired":
        clock.advance(app_settings.token_ttl_s + 1)

    dial = vonage.post("/api/rooms/standup/dial-out", json={}, headers=headers)
    hang = vonage.post("/api/rooms/standup/hang-up", json={"call_id": "do_x"}, headers=headers)

    assert (dial.status_code, hang.status_code) == (401, 401)
    assert dial.json()["error"]["code"] == "invalid_token"
    assert dial.headers["www-authenticate"] == "Bearer"
    assert stub.received("POST", "/v2/") == []


def test_dial_out_to_an_unknown_room_is_404(vonage: TestClient) -> None:
    config = visit(vonage, "standup")

    response = vonage.post("/api/rooms/nowhere/dial-out", json={}, headers=bearer(config))

    assert response.status_code == 404


@pytest.mark.parametrize(
    "body", [{"number": "0044 7700 900123"}, {"number": "447700900123"}, {"room": "x"}, {"call_id": "x"}, [1]]
)
def test_dial_out_refuses_anything_but_empty_or_an_e164_number(body: Any, vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")

    response = vonage.post("/api/rooms/standup/dial-out", json=body, headers=bearer(config))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"
    assert stub.received("POST", "/v2/") == []


@pytest.mark.parametrize("path", ["dial-out", "hang-up"])
def test_dial_out_and_hang_up_are_post_only(path: str, vonage: TestClient) -> None:
    config = visit(vonage, "standup")

    response = vonage.get(f"/api/rooms/standup/{path}", headers=bearer(config))

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("missing", "body", "setting"),
    [
        ({"dial_in_number": None}, {}, "DIALBRIDGE_DIAL_IN_NUMBER"),
        ({"vonage_sip_username": None, "vonage_sip_password": None}, {"number": "+14155550123"}, "SIP_USERNAME"),
    ],
)
def test_a_dial_out_the_server_is_not_set_up_for_is_a_503_naming_the_setting(
    app_settings: Settings, clock: FakeClock, stub: VonageStub, missing: dict[str, Any], body: Any, setting: str
) -> None:
    """Not a 409: nothing about the room conflicts, and nothing the caller does fixes it; the operator must."""
    settings = app_settings.model_copy(update=missing)
    with TestClient(create_app(settings, clock=clock)) as client:
        config = visit(client, "standup")
        response = client.post("/api/rooms/standup/dial-out", json=body, headers=bearer(config))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dial_out_unavailable"
    assert setting in response.json()["error"]["message"]
    assert stub.received("POST", "/v2/") == []


# ---- the legacy API key + secret (opentok SDK) -----------------------------------------------------------------
def test_legacy_api_key_creates_sessions_dials_and_hangs_up_through_opentok(
    legacy: TestClient, stub: VonageStub
) -> None:
    config = visit(legacy, "standup")

    [create] = stub.received("POST", "/session/create")
    assert jwt.decode(create.headers["x-opentok-auth"], LEGACY_API_SECRET, algorithms=["HS256"])["iss"] == (
        LEGACY_API_KEY
    )
    assert create.form()["p2p.preference"] == "disabled"
    assert config["apiKey"] == LEGACY_API_KEY
    assert config["sessionId"] in stub.sessions
    page_token = jwt.decode(config["token"], LEGACY_API_SECRET, algorithms=["HS256"])
    assert page_token["session_id"] == config["sessionId"]
    assert page_token["role"] == "publisher"
    participant_cid = jwt.decode(config["participantToken"], options={"verify_signature": False})["cid"]
    assert json.loads(page_token["connection_data"]) == {"room": "standup", "participant": participant_cid}

    placed = legacy.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    assert placed.status_code == 201, placed.text
    [dial] = stub.received("POST", "/v2/")
    assert dial.path == f"/v2/project/{LEGACY_API_KEY}/dial"
    assert dial.json()["sip"] == {
        "uri": "sip:14155550100@sip.nexmo.com;transport=tls",
        "headers": {"X-OpenTok-SessionId": config["sessionId"], "X-dialbridge-dial-out": placed.json()["call_id"]},
        "auth": {"username": SIP_USER, "password": SIP_PASSWORD},
        "secure": True,
    }

    hung = legacy.post("/api/rooms/standup/hang-up", json={"call_id": placed.json()["call_id"]}, headers=bearer(config))

    assert hung.status_code == 200, hung.text
    [delete] = stub.received("DELETE")
    assert delete.path == (
        f"/v2/project/{LEGACY_API_KEY}/session/{config['sessionId']}/connection/{placed.json()['connection_id']}"
    )


def test_legacy_session_creation_failure_is_a_502(legacy: TestClient, stub: VonageStub) -> None:
    stub.fail("POST", "session", 500)

    response = legacy.get("/room/standup")

    assert response.status_code == 502
    assert "creating a video session at Vonage failed" in response.json()["error"]["message"]


# ---- the embedded backend ------------------------------------------------------------------------------------------
def test_embedded_dial_out_without_a_gateway_running_says_how_to_start_it(client: TestClient) -> None:
    """The embedded backend dials through its gateway; none runs beside this test app. The dial-out is refused with
    502 naming the fix, and its record ends failed (nothing stays "dialling")."""
    config = visit(client, "standup")

    response = client.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))

    assert response.status_code == 502
    assert "`dialbridge gateway`" in response.json()["error"]["message"]
    store = client.app.state.services.dial_outs.store  # type: ignore[attr-defined]
    assert [d.state for d in store.for_room("standup")] == ["failed"]


@pytest.mark.parametrize("number", ["4155550123", "", "+1 415 555 0123"])
def test_a_number_not_in_e164_form_is_refused_in_the_caller_s_words(number: str, client: TestClient) -> None:
    config = visit(client, "standup")

    response = client.post("/api/rooms/standup/dial-out", json={"number": number}, headers=bearer(config))

    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message.startswith("number: ") and "E.164 form" in message and "e.g. +14155550100" in message, message
    assert "pattern" not in message


def test_the_room_page_without_a_dial_in_number_says_how_to_join_by_phone(settings: Settings) -> None:
    """No dial-in number on the embedded backend: the invite panel offers the SIP address, the PIN and the browser
    phone, not "Join by phone: no dial-in number configured and enter PIN …"."""
    with TestClient(create_app(settings.model_copy(update={"dial_in_number": None}))) as client:
        page = client.get("/room/standup").text
        pin = client.get("/api/rooms/standup").json()["pin"]
    panel = page[page.index('<section id="invite"') : page.index("</section>", page.index('<section id="invite"'))]
    text = " ".join(re.sub(r"<[^>]+>", " ", panel).split())
    assert f"SIP phone sip:dialin@127.0.0.1:5060 PIN {pin} then # Copy invitation" in text, text
    assert "Call in from a browser instead (no camera needed; it asks for the PIN)" in text, text
    assert "no dial-in number configured" not in text


def test_embedded_phone_dial_out_without_a_trunk_names_the_settings(client: TestClient) -> None:
    config = visit(client, "standup")

    response = client.post("/api/rooms/standup/dial-out", json={"number": "+14155550100"}, headers=bearer(config))

    assert response.status_code == 503
    assert "DIALBRIDGE_SIP_TRUNK_URI" in response.json()["error"]["message"]
    store = client.app.state.services.dial_outs.store  # type: ignore[attr-defined]
    assert store.for_room("standup") == []


def test_the_bridge_call_ending_frees_the_room_to_dial_again(vonage: TestClient, stub: VonageStub) -> None:
    """Vonage dials the conference number; the answer webhook sees the dial-out's headers and links the phone call;
    when that call completes (the event webhook), the room may pull the conference in again."""
    config = visit(vonage, "standup")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()
    [dial] = stub.received("POST", "/v2/")
    headers = json.loads(dial.body)["sip"]["headers"]
    bridge = {"uuid": "bridge-1", "from": "sip-bridge", "to": "14155550100"}
    bridge.update({f"SipHeader_{name}": value for name, value in headers.items()})
    ncco = vonage.get("/webhooks/answer", params=bridge).json()
    assert ncco == [{"action": "conversation", "name": config["sessionId"]}]
    assert vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).status_code == 409

    assert vonage.post("/webhooks/events", json={"uuid": "bridge-1", "status": "completed"}).status_code == 204

    again = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))
    assert again.status_code == 201, again.text
    assert again.json()["call_id"] != placed["call_id"]


def test_a_dial_out_header_on_another_rooms_call_links_nothing(vonage: TestClient, stub: VonageStub) -> None:
    standup = visit(vonage, "standup")
    other = visit(vonage, "other")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(standup)).json()
    forged = {
        "uuid": "intruder",
        "SipHeader_X-OpenTok-SessionId": other["sessionId"],
        "SipHeader_X-dialbridge-dial-out": placed["call_id"],
    }
    vonage.get("/webhooks/answer", params=forged)
    vonage.post("/webhooks/events", json={"uuid": "intruder", "status": "completed"})
    # The standup room's dial-out is still live: the other room's call could not end it.
    assert vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(standup)).status_code == 409


def test_a_bridge_call_whose_dial_out_closed_before_it_answered_is_ended_not_bridged(
    vonage: TestClient, stub: VonageStub
) -> None:
    """The room hangs up (or its gateway dies) while the phone side is still connecting: the call that arrives
    afterwards has nobody on the room's side, so its answer is an NCCO that ends it, and no record says it is in the
    conference."""
    config = visit(vonage, "standup")
    placed = vonage.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config)).json()
    [dial] = stub.received("POST", "/v2/")
    hung_up = vonage.post("/api/rooms/standup/hang-up", json={"call_id": placed["call_id"]}, headers=bearer(config))
    assert hung_up.status_code == 200, hung_up.text

    bridge = {"uuid": "late-bridge", "from": "sip-bridge", "to": "14155550100"}
    bridge.update({f"SipHeader_{name}": value for name, value in json.loads(dial.body)["sip"]["headers"].items()})
    answer = vonage.get("/webhooks/answer", params=bridge)

    assert answer.status_code == 200 and answer.json() == []
    store = vonage.app.state.services.store  # type: ignore[attr-defined]
    assert store.call("late-bridge") is None
    [ended] = vonage.app.state.services.dial_outs.store.for_room("standup")  # type: ignore[attr-defined]
    assert (ended.state, ended.call_uuid) == ("ended", None)


def test_phone_dial_out_is_held_to_the_configured_prefixes(
    app_settings: Settings, clock: FakeClock, stub: VonageStub
) -> None:
    """Anyone with a room's link may dial out at the account's cost: the operator limits where to."""
    settings = app_settings.model_copy(update={"dial_out_prefixes": "+1, +33"})
    with TestClient(create_app(settings, clock=clock)) as client:
        config = visit(client, "standup")
        refused = client.post("/api/rooms/standup/dial-out", json={"number": "+447700900123"}, headers=bearer(config))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "dial_out_not_allowed"
        assert "DIALBRIDGE_DIAL_OUT_PREFIXES" in refused.json()["error"]["message"]
        assert stub.received("POST", "/v2/") == []  # nothing was dialled

        allowed = client.post("/api/rooms/standup/dial-out", json={"number": "+14155550123"}, headers=bearer(config))
        assert allowed.status_code == 201, allowed.text
        conference = client.post("/api/rooms/standup/dial-out", json={}, headers=bearer(config))
        assert conference.status_code == 201  # the room's own conference number is not a phone dial-out
    assert len(stub.received("POST", f"/v2/project/{APPLICATION_ID}/dial")) == 2  # (besides, the room's signals)


def test_a_room_may_place_only_so_many_dial_outs_an_hour(
    app_settings: Settings, clock: FakeClock, stub: VonageStub
) -> None:
    """A leaked room link must not become an unbounded phone bill: past the hourly limit the room gets a 429 with
    Retry-After, Vonage is not asked, and other rooms are unaffected."""
    settings = app_settings.model_copy(update={"dial_outs_per_room_per_hour": 2})
    with TestClient(create_app(settings, clock=clock)) as client:
        config = visit(client, "standup")
        for n in range(2):
            placed = client.post(
                "/api/rooms/standup/dial-out", json={"number": f"+1415555010{n}"}, headers=bearer(config)
            )
            assert placed.status_code == 201, placed.text
            clock.advance(600)
        refused = client.post("/api/rooms/standup/dial-out", json={"number": "+14155550109"}, headers=bearer(config))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "dial_out_limit_reached"
        assert "DIALBRIDGE_DIAL_OUTS_PER_ROOM_PER_HOUR" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == str(3600 - 1200)  # when the first of the two leaves the hour
        assert len(stub.received("POST", f"/v2/project/{APPLICATION_ID}/dial")) == 2  # the refused one never did
        assert [d.target for d in client.app.state.services.dial_outs.store.for_room("standup")] == [
            "+14155550100",
            "+14155550101",
        ]  # and left no record behind

        other = visit(client, "retro")
        assert client.post("/api/rooms/retro/dial-out", json={}, headers=bearer(other)).status_code == 201

        clock.advance(3600 - 1200)
        again = client.post("/api/rooms/standup/dial-out", json={"number": "+14155550109"}, headers=bearer(config))
        assert again.status_code == 201, again.text


def test_dial_out_prefixes_are_checked_and_unrestricted_dialling_is_warned_of(app_settings: Settings) -> None:
    assert "rooms may dial any phone number" in " ".join(app_settings.warnings())
    restricted = app_settings.model_copy(update={"dial_out_prefixes": "+44"})
    assert not any("DIALBRIDGE_DIAL_OUT_PREFIXES" in w for w in restricted.warnings())
    malformed = app_settings.model_copy(update={"dial_out_prefixes": "+44, 1, +33x"})
    problem = " ".join(malformed.problems())
    assert "'1'" in problem and "'+33x'" in problem and "DIALBRIDGE_DIAL_OUT_PREFIXES" in problem
