"""Signed webhooks: with a secret configured, only requests signed by it, for exactly that payload, get through."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dialbridge.config import Settings
from dialbridge.web.app import create_app
from dialbridge.web.signatures import SignatureError, WebhookSignatures
from tests.conftest import FakeClock
from tests.helpers import make_room

SECRET = "account-signature-secret-0123456789"


@pytest.fixture
def signed_client(settings: Settings, clock: FakeClock) -> Iterator[TestClient]:
    signed = settings.model_copy(update={"signature_secret": SecretStr(SECRET)})
    with TestClient(create_app(signed, clock=clock)) as client:
        yield client


def vonage_token(payload: bytes, secret: str = SECRET, **overrides: object) -> str:
    """A token shaped like the ones Vonage sends (iat, jti, iss, api_key, application_id, payload_hash)."""
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "jti": "6f1b9a1e-2f1c-4c55-9f8e-0e9c1f7b3c21",
        "iss": "Vonage",
        "api_key": "abcd1234",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        "payload_hash": hashlib.sha256(payload).hexdigest(),
        **overrides,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def post_input(client: TestClient, body: bytes, token: str | None) -> int:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return client.post("/webhooks/input", content=body, headers=headers).status_code


def test_signed_post_is_accepted(signed_client: TestClient) -> None:
    room = make_room(signed_client, "standup")
    body = json.dumps({"dtmf": {"digits": room["pin"]}, "uuid": "c1", "from": "1"}).encode()
    response = signed_client.post(
        "/webhooks/input",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {vonage_token(body)}"},
    )
    assert response.status_code == 200
    assert response.json()[-1] == {"action": "conversation", "name": room["session_id"]}


def test_signed_get_hashes_the_query_string(signed_client: TestClient) -> None:
    query = urlencode({"uuid": "c1", "from": "447700900001", "to": "14155550100"})
    good = signed_client.get(
        "/webhooks/answer?" + query, headers={"authorization": f"Bearer {vonage_token(query.encode())}"}
    )
    assert good.status_code == 200
    altered = signed_client.get(
        "/webhooks/answer?" + query.replace("447700900001", "447700900002"),
        headers={"authorization": f"Bearer {vonage_token(query.encode())}"},
    )
    assert altered.status_code == 401


@pytest.mark.parametrize(
    "make_token",
    [
        lambda body: None,  # unsigned
        lambda body: "not-a-jwt",
        lambda body: vonage_token(body, secret="some-other-secret-of-thirty-two-bytes"),
        lambda body: vonage_token(b'{"dtmf": "0000"}'),  # signed for another payload
        lambda body: vonage_token(body, payload_hash=None),
        lambda body: vonage_token(body, iat=int(time.time()) + 3600),  # issued in the future
        lambda body: jwt.encode(
            {"iat": int(time.time()), "payload_hash": hashlib.sha256(body).hexdigest()}, None, algorithm="none"
        ),
    ],
    ids=["unsigned", "garbage", "wrong-secret", "other-payload", "no-hash", "future", "alg-none"],
)
def test_anything_else_is_refused_with_401_and_changes_nothing(signed_client: TestClient, make_token: object) -> None:
    room = make_room(signed_client, "standup")
    body = json.dumps({"dtmf": {"digits": room["pin"]}, "uuid": "c1", "from": "1"}).encode()
    token = make_token(body)  # type: ignore[operator]
    response = signed_client.post(
        "/webhooks/input",
        content=body,
        headers={"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    svc = signed_client.app.state.services  # type: ignore[attr-defined]
    assert svc.store.call("c1") is None
    assert svc.store.caller_failures("1", 0) == 0


def test_events_and_answer_need_signatures_too(signed_client: TestClient) -> None:
    assert signed_client.post("/webhooks/events", json={"uuid": "c", "status": "ringing"}).status_code == 401
    assert signed_client.get("/webhooks/answer", params={"uuid": "c"}).status_code == 401
    assert signed_client.get("/nexmo-answer", params={"uuid": "c"}).status_code == 401
    svc = signed_client.app.state.services  # type: ignore[attr-defined]
    assert svc.store.call("c") is None


def test_without_a_secret_webhooks_are_accepted_and_a_warning_is_logged(
    settings: Settings, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"), TestClient(create_app(settings, clock=clock)) as client:
        assert client.post("/webhooks/events", json={"uuid": "c", "status": "ringing"}).status_code == 204
    assert any("DIALBRIDGE_SIGNATURE_SECRET" in record.getMessage() for record in caplog.records)


def test_signer_and_verifier_agree() -> None:
    signatures = WebhookSignatures(SECRET)
    payload = b'{"uuid": "x"}'
    claims = signatures.verify("Bearer " + signatures.sign(payload), payload)
    assert claims["payload_hash"] == hashlib.sha256(payload).hexdigest()


def pyjwt_accepts(token: str, payload: bytes, now: float) -> bool:
    """The reference: PyJWT's own HS256 verification plus the payload hash comparison."""
    try:
        claims = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            leeway=300,
            options={"require": ["iat", "payload_hash"], "verify_iat": False},
        )
    except jwt.PyJWTError:
        return False
    if not isinstance(claims["iat"], int | float) or claims["iat"] > now + 300:
        return False
    return bool(claims["payload_hash"] == hashlib.sha256(payload).hexdigest())


def ours_accepts(verifier: WebhookSignatures, token: str, payload: bytes, now: float) -> bool:
    try:
        verifier.verify("Bearer " + token, payload, now=now)
    except SignatureError:
        return False
    return True


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 token is meant to fail
def test_the_verifier_agrees_with_pyjwt_on_good_and_bad_tokens() -> None:
    now = time.time()
    payload = b'{"uuid": "c1"}'
    good = vonage_token(payload)
    header, claims, signature = good.split(".")
    other_alg = jwt.encode({"iat": int(now), "payload_hash": hashlib.sha256(payload).hexdigest()}, SECRET, "HS512")
    candidates = {
        "good": good,
        "wrong-secret": vonage_token(payload, secret="x" * 40),
        "other-payload": vonage_token(b"{}"),
        "expired": vonage_token(payload, exp=int(now) - 3600),
        "future": vonage_token(payload, iat=int(now) + 3600),
        "no-iat": jwt.encode({"payload_hash": hashlib.sha256(payload).hexdigest()}, SECRET, "HS256"),
        "string-iat": vonage_token(payload, iat="yesterday"),
        "hs512": other_alg,
        "alg-none": jwt.encode({"iat": int(now), "payload_hash": hashlib.sha256(payload).hexdigest()}, None, "none"),
        "tampered-claims": f"{header}.{claims[:-2]}AA.{signature}",
        "tampered-signature": f"{header}.{claims}.{signature[:-2]}AA",
        "padded": f"{header}.{claims}.{signature}==",
        "two-parts": f"{header}.{claims}",
        "four-parts": f"{good}.x",
        "not-base64": f"{header}.{claims}.!!!",
        "not-ascii": f"{header}.{claims}.\u00e9{signature}",
        "empty": "",
    }
    # One verifier for all, the good token first: what it remembers of good tokens must not let a bad one pass.
    verifier = WebhookSignatures(SECRET)
    verdicts = {
        name: (ours_accepts(verifier, tok, payload, now), pyjwt_accepts(tok, payload, now))
        for name, tok in candidates.items()
    }
    assert all(ours == reference for ours, reference in verdicts.values()), verdicts
    assert verdicts["good"] == (True, True)
    assert sum(ours for ours, _ in verdicts.values()) == 1
