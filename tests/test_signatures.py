"""Signed webhooks: with a secret configured, only requests signed by it, for exactly that payload, get through."""

from __future__ import annotations

import hashlib
import json
import socket
import string
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dialbridge.config import Settings
from dialbridge.web.app import create_app
from dialbridge.webhook_signing import SignatureError, WebhookSignatures
from tests.conftest import FakeClock, on_both_databases
from tests.direct_path import BOTH_PATHS, webhook_client
from tests.helpers import make_room
from tests.served import DIALBRIDGE, free_port, serving, vonage_environment

SECRET = "account-signature-secret-0123456789"
NOW = FakeClock().now  # the app's clock in these tests: tokens are issued by it, not by time.time()


@pytest.fixture(params=BOTH_PATHS)
def signed_client(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[httpx.Client]:
    """Each test runs through ASGI and over a socket on the direct path production takes."""
    signed = settings.model_copy(update={"signature_secret": SecretStr(SECRET)})
    with webhook_client(request.param, create_app(signed, clock=clock), monkeypatch) as both_ways:
        yield both_ways


def vonage_token(payload: bytes, secret: str = SECRET, **overrides: object) -> str:
    """A token shaped like the ones Vonage sends (iat, jti, iss, api_key, application_id, payload_hash)."""
    claims: dict[str, object] = {
        "iat": int(NOW),
        "jti": str(uuid.uuid4()),
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
        lambda body: vonage_token(body, iat=int(NOW) + 3600),  # issued in the future
        lambda body: vonage_token(body, iat=int(NOW) - 301),  # issued more than five minutes ago
        lambda body: vonage_token(body, iat=0),
        lambda body: jwt.encode(
            {"iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}, None, algorithm="none"
        ),
        lambda body: vonage_token(body, payload_hash="\u00e9" * 64),  # non-ASCII: was a 500
        lambda body: vonage_token(body, jti=["not", "a", "string"]),
    ],
    ids=[
        "unsigned", "garbage", "wrong-secret", "other-payload", "no-hash", "future", "too-old", "iat-zero",
        "alg-none", "non-ascii-hash", "jti-not-a-string",
    ],
)  # fmt: skip
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
    assert svc.store.webhook_token_count() == 0  # only tokens that verify are recorded


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
    first, second = (signatures.verify("Bearer " + signatures.sign(payload, NOW), payload, NOW) for _ in range(2))
    assert first.claims["payload_hash"] == hashlib.sha256(payload).hexdigest()
    assert first.token_id != second.token_id  # same body, same second: two tokens, not a replay
    assert first.good_until == NOW + 300


def pyjwt_accepts(token: str, payload: bytes, now: float) -> bool:
    """The reference: PyJWT's own HS256 verification, the payload hash, and the five minutes the README promises
    either side of `iat` (PyJWT checks exp and nbf against `now`, but has no maximum age of its own)."""
    try:
        claims = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            leeway=300,
            options={"require": ["iat", "payload_hash"], "verify_iat": False, "verify_exp": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return False
    issued = claims["iat"]
    if isinstance(issued, bool) or not isinstance(issued, int | float) or not now - 300 <= issued <= now + 300:
        return False
    for name, late_enough in (("exp", lambda t: t > now - 300), ("nbf", lambda t: t <= now + 300)):
        if name in claims and (not isinstance(claims[name], int | float) or not late_enough(claims[name])):
            return False
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not 1 <= len(jti) <= 120):
        return False
    claimed = claims["payload_hash"]
    return isinstance(claimed, str) and claimed.lower() == hashlib.sha256(payload).hexdigest()


def ours_accepts(verifier: WebhookSignatures, token: str, payload: bytes, now: float) -> bool:
    try:
        verifier.verify("Bearer " + token, payload, now=now)
    except SignatureError:
        return False
    return True


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 token is meant to fail
def test_the_verifier_agrees_with_pyjwt_on_good_and_bad_tokens() -> None:
    now = NOW
    payload = b'{"uuid": "c1"}'
    # A good token whose signature holds a '-' or '_', so that it has a spelling in the standard base64 alphabet.
    good = next(t for n in range(100) if set((t := vonage_token(payload, jti=f"j{n}")).split(".")[2]) & set("-_"))
    header, claims, signature = good.split(".")
    other_alg = jwt.encode({"iat": int(now), "payload_hash": hashlib.sha256(payload).hexdigest()}, SECRET, "HS512")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    stray_bits = alphabet[alphabet.index(signature[-1]) ^ 1]  # the same 32 bytes, spelled another way
    candidates = {
        "good": good,
        "just-young-enough": vonage_token(payload, iat=int(now) - 299),
        "too-old": vonage_token(payload, iat=int(now) - 301),
        "iat-zero": vonage_token(payload, iat=0),
        "non-ascii-hash": vonage_token(payload, payload_hash="\u00e9" * 64),
        "long-jti": vonage_token(payload, jti="j" * 121),
        "standard-base64-signature": f"{header}.{claims}.{signature.replace('-', '+').replace('_', '/')}",
        "stray-bits-in-signature": f"{header}.{claims}.{signature[:-1]}{stray_bits}",
        "blank-in-signature": f"{header}.{claims}.{signature[:9]} {signature[9:]}",
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
    assert {name for name, (ours, _) in verdicts.items() if ours} == {"good", "just-young-enough"}


# ---- replays -------------------------------------------------------------------------------------------------------


@on_both_databases
def test_the_same_signed_request_twice_is_refused_the_second_time_and_changes_nothing(
    signed_client: TestClient,
) -> None:
    make_room(signed_client, "standup")
    body = json.dumps({"dtmf": {"digits": "000000"}, "uuid": "c1", "from": "15550001"}).encode()
    token = vonage_token(body)
    assert post_input(signed_client, body, token) == 200  # a wrong PIN: one failure counted
    svc = signed_client.app.state.services  # type: ignore[attr-defined]
    assert svc.store.caller_failures("15550001", 0) == 1
    replay = signed_client.post(
        "/webhooks/input",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]
    assert svc.store.caller_failures("15550001", 0) == 1  # the replay guessed nothing
    assert post_input(signed_client, body, vonage_token(body)) == 200  # the same request signed afresh is new


def test_a_token_without_jti_is_good_once_by_its_signature(signed_client: TestClient) -> None:
    body = json.dumps({"uuid": "c9", "status": "ringing"}).encode()
    token = jwt.encode({"iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}, SECRET, "HS256")
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    assert signed_client.post("/webhooks/events", content=body, headers=headers).status_code == 204
    assert signed_client.post("/webhooks/events", content=body, headers=headers).status_code == 401


@on_both_databases
def test_a_replay_to_another_instance_on_the_same_database_is_refused(settings: Settings, clock: FakeClock) -> None:
    signed = settings.model_copy(update={"signature_secret": SecretStr(SECRET)})
    body = json.dumps({"uuid": "c2", "status": "ringing"}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {vonage_token(body)}"}
    with TestClient(create_app(signed, clock=clock)) as one, TestClient(create_app(signed, clock=clock)) as other:
        assert one.post("/webhooks/events", content=body, headers=headers).status_code == 204
        assert other.post("/webhooks/events", content=body, headers=headers).status_code == 401


@on_both_databases
def test_accepted_tokens_are_forgotten_once_too_old_to_be_accepted_anyway(
    signed_client: TestClient, clock: FakeClock
) -> None:
    svc = signed_client.app.state.services  # type: ignore[attr-defined]
    counts = []
    for n in range(50):  # a token every 30 s for 25 minutes: each is kept ~5 min, swept at most once a minute
        body = json.dumps({"uuid": f"c{n}", "status": "ringing"}).encode()
        token = vonage_token(body, iat=int(clock.now))
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        assert signed_client.post("/webhooks/events", content=body, headers=headers).status_code == 204
        counts.append(svc.store.webhook_token_count())
        clock.advance(30)
    assert max(counts) <= 13 and counts[-1] <= 13  # (300 s lifetime + 60 s sweep) / 30 s, and never growing
    # A token kept past its lifetime would not pass anyway: too old by the clock.
    old = json.dumps({"uuid": "c0", "status": "ringing"}).encode()
    stale = {"content-type": "application/json", "authorization": f"Bearer {vonage_token(old, iat=int(NOW))}"}
    assert signed_client.post("/webhooks/events", content=old, headers=stale).status_code == 401


@on_both_databases
def test_parallel_copies_of_one_signed_request_to_two_workers_are_accepted_once(tmp_path: Path, db_url: str) -> None:
    # The production path (the HTTP protocol's direct webhook path) in two processes on one database.
    body = json.dumps({"uuid": "c-race", "status": "ringing"}).encode()
    token = vonage_token(body, iat=int(time.time()))
    request = (
        b"POST /webhooks/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    database = {"DIALBRIDGE_DATABASE_URL": db_url}
    with serving(tmp_path, "--workers", "2", DIALBRIDGE_SIGNATURE_SECRET=SECRET, **database) as served:
        connections = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(20)]
        for connection in connections:
            connection.sendall(request)
        statuses = []
        for connection in connections:
            statuses.append(int(connection.makefile("rb").readline().split()[1]))
            connection.close()
    assert sorted(statuses) == [204] + [401] * 19, statuses


# ---- configuration -------------------------------------------------------------------------------------------------


def test_a_set_but_empty_secret_is_a_configuration_error_that_names_the_fix(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, signature_secret="")
    [problem] = [p for p in settings.problems() if "SIGNATURE_SECRET" in p]
    assert "empty" in problem and "remove the line" in problem
    with pytest.raises(ValueError, match="empty"):
        WebhookSignatures("")
    env = {**vonage_environment(tmp_path, free_port()), "DIALBRIDGE_SIGNATURE_SECRET": ""}
    doctor = subprocess.run([DIALBRIDGE, "doctor"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1 and "DIALBRIDGE_SIGNATURE_SECRET is set but empty" in doctor.stdout
