"""The engine's call-control REST API: Vonage's shapes, statuses and errors over a fake `CallControl`, the
official `vonage` SDK end to end over TLS, fuzzing over the routes, and the credentials it is secured with."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import requests
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import AuthenticationError, HttpRequestError, NotFoundError
from vonage_jwt.jwt import JwtClient
from vonage_voice.models.ncco import Talk
from vonage_voice.models.requests import AudioStreamOptions, CreateCallRequest, ListCallsFilter, TtsStreamOptions

from dialbridge.credentials import CredentialsError, TokenError, VoiceCredentials
from dialbridge.engine.control import CALL_ACTIONS, CallRecord, NewCall, create_control_app

NOW = 1_800_000_000.0
CONVERSATION = "CON-5c4f5d0e-0000-4000-8000-00000000c0de"
PROBLEM_KEYS = {"type", "title", "detail", "instance"}


# ---- a fake engine ------------------------------------------------------------------------------------------------


@dataclass
class FakeControl:
    """Calls by uuid (live unless they have an end time) and every verb the API carried out, in order."""

    calls: dict[str, CallRecord] = field(default_factory=dict)
    verbs: list[tuple[Any, ...]] = field(default_factory=list)
    listed_with: list[str | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: CallRecord) -> CallRecord:
        self.calls[record.uuid] = record
        return record

    def _live(self, uuid: str, *verb: Any) -> bool:
        call = self.calls.get(uuid)
        if call is None or call.end_time is not None:
            return False
        with self._lock:
            self.verbs.append(verb)
        return True

    def create_call(self, call: NewCall) -> CallRecord:
        if call.to.get("type") not in ("phone", "sip"):
            raise ValueError('\'to.type\' must be "phone" or "sip"')
        with self._lock:
            self.verbs.append(("create_call", call))
        to = call.to.get("number") or call.to.get("uri")
        return self.add(
            CallRecord(
                uuid=f"NEW-{sum(1 for verb in self.verbs if verb[0] == 'create_call') - 1}",
                conversation_uuid="CON-new",
                from_number=call.from_number,
                to_number=str(to),
                status="started",
                direction="outbound",
                start_time=NOW,
                end_time=None,
                duration=None,
            )
        )

    def list_calls(self, conversation_uuid: str | None = None) -> list[CallRecord]:
        self.listed_with.append(conversation_uuid)
        return [c for c in self.calls.values() if conversation_uuid in (None, c.conversation_uuid)]

    def get_call(self, uuid: str) -> CallRecord | None:
        return self.calls.get(uuid)

    def hangup(self, uuid: str) -> bool:
        return self._live(uuid, "hangup", uuid)

    def set_muted(self, uuid: str, muted: bool) -> bool:
        return self._live(uuid, "set_muted", uuid, muted)

    def set_earmuffed(self, uuid: str, earmuffed: bool) -> bool:
        return self._live(uuid, "set_earmuffed", uuid, earmuffed)

    def transfer(self, uuid: str, ncco: list[dict[str, Any]]) -> bool:
        for index, action in enumerate(ncco):
            if action.get("action") not in ("talk", "stream", "input", "conversation", "notify"):
                raise ValueError(f"action {index}: not supported by the embedded voice engine")
        return self._live(uuid, "transfer", uuid, ncco)

    def start_talk(self, uuid: str, text: str, *, language: str, loop: int, level: float) -> bool:
        if language == "xx-XX":
            raise ValueError("language xx-XX has no voice")
        return self._live(uuid, "start_talk", uuid, text, language, loop, level)

    def stop_talk(self, uuid: str) -> bool:
        return self._live(uuid, "stop_talk", uuid)

    def start_stream(self, uuid: str, url: str, *, loop: int, level: float) -> bool:
        return self._live(uuid, "start_stream", uuid, url, loop, level)

    def stop_stream(self, uuid: str) -> bool:
        return self._live(uuid, "stop_stream", uuid)

    def send_dtmf(self, uuid: str, digits: str) -> bool:
        if not set(digits) <= set("0123456789*#pABCD"):
            raise ValueError("digits outside 0-9*#pABCD")
        return self._live(uuid, "send_dtmf", uuid, digits)


def record(
    uuid: str,
    *,
    start: float | None = NOW,
    end: float | None = None,
    status: str = "answered",
    conversation: str = CONVERSATION,
    from_number: str = "+447700900001",
) -> CallRecord:
    duration = None if end is None or start is None else round(end - start)
    return CallRecord(
        uuid=uuid,
        conversation_uuid=conversation,
        from_number=from_number,
        to_number="+14155550100",
        status=status,
        direction="inbound",
        start_time=start,
        end_time=end,
        duration=duration,
    )


# ---- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> VoiceCredentials:
    return VoiceCredentials.load_or_create(tmp_path_factory.mktemp("voice"))


@pytest.fixture(scope="module")
def other_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def fake() -> FakeControl:
    control = FakeControl()
    control.add(record("LIVE-1"))
    control.add(record("ENDED-1", start=NOW - 120, end=NOW - 60, status="completed"))
    return control


class Api:
    """A TestClient over the app whose requests are signed like the SDK's, at the app's (fixed) time."""

    def __init__(self, client: TestClient, credentials: VoiceCredentials) -> None:
        self.client = client
        self.credentials = credentials
        self.now = NOW

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials.app_token(self.now)}"}

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        response: httpx.Response = self.client.get(path, headers=self.headers(), params=params)
        return response

    def put(self, path: str, body: Any = None) -> httpx.Response:
        response: httpx.Response = self.client.put(path, headers=self.headers(), json=body)
        return response

    def delete(self, path: str) -> httpx.Response:
        response: httpx.Response = self.client.delete(path, headers=self.headers())
        return response


@pytest.fixture
def api(fake: FakeControl, credentials: VoiceCredentials) -> Iterator[Api]:
    app = create_control_app(
        fake,
        credentials,
        clock=lambda: NOW,
        health=lambda: {"calls": len(fake.calls)},
        metrics=lambda: b"voice_calls 2\n",
    )
    with TestClient(app) as client:
        yield Api(client, credentials)


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["type"] == f"https://developer.vonage.com/api-errors#{kind}"
    assert all(isinstance(body[key], str) and body[key] for key in PROBLEM_KEYS)
    return body


# ---- POST /v1/calls ------------------------------------------------------------------------------------------------

PHONE_TO = {"type": "phone", "number": "14155550100"}
FROM = {"type": "phone", "number": "447700900000"}


def test_create_call_answers_201_with_vonages_fields(api: Api, fake: FakeControl) -> None:
    ncco = [{"action": "talk", "text": "Hello"}]
    response = api.client.post(
        "/v1/calls",
        headers=api.headers(),
        json={"to": [PHONE_TO], "from": FROM, "ncco": ncco, "event_url": ["https://app.example/ev"]},
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "uuid": "NEW-0",
        "status": "started",
        "direction": "outbound",
        "conversation_uuid": "CON-new",
    }
    assert fake.verbs == [
        ("create_call", NewCall(PHONE_TO, "447700900000", ncco, None, "https://app.example/ev", 60, 7200))
    ]


@pytest.mark.parametrize(
    ("change", "bad"),
    [
        ({"to": PHONE_TO}, "to"),
        ({"to": [PHONE_TO, PHONE_TO]}, "to"),
        ({"to": [{"type": "websocket", "uri": "wss://x"}]}, "to"),
        ({"from": {"type": "sip", "uri": "sip:a@b"}}, "from"),
        ({"from": {"type": "phone", "number": "call me"}}, "from.number"),
        ({"ncco": None}, "ncco"),
        ({"answer_url": ["https://app.example/answer"]}, "ncco"),
        ({"ncco": "talk"}, "ncco"),
        ({"ncco": None, "answer_url": "https://app.example/answer"}, "answer_url"),
        ({"event_url": ["ftp://x"]}, "event_url"),
        ({"ringing_timer": 0}, "ringing_timer"),
        ({"length_timer": 7201}, "length_timer"),
    ],
)
def test_bad_create_calls_are_400(api: Api, fake: FakeControl, change: dict[str, Any], bad: str) -> None:
    body = {"to": [PHONE_TO], "from": FROM, "ncco": [{"action": "talk", "text": "Hello"}], **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = api.client.post("/v1/calls", headers=api.headers(), json=body)
    problem = assert_problem(response, 400, "invalid-params")
    assert problem["invalid_parameters"][0]["name"].startswith(bad)
    assert fake.verbs == []


def test_create_call_refuses_what_the_engine_cannot_do(api: Api, fake: FakeControl) -> None:
    body = {"to": [PHONE_TO], "random_from_number": True, "ncco": [{"action": "talk", "text": "Hello"}]}
    problem = assert_problem(api.client.post("/v1/calls", headers=api.headers(), json=body), 400, "unsupported")
    assert "random_from_number" in problem["detail"]
    assert fake.verbs == []


# ---- GET /v1/calls/{uuid} ------------------------------------------------------------------------------------------


def test_get_call_has_vonages_shape(api: Api) -> None:
    response = api.get("/v1/calls/ENDED-1")
    assert response.status_code == 200
    assert response.json() == {
        "uuid": "ENDED-1",
        "conversation_uuid": CONVERSATION,
        "to": {"type": "phone", "number": "14155550100"},
        "from": {"type": "phone", "number": "447700900001"},
        "status": "completed",
        "direction": "inbound",
        "rate": "0.00000000",
        "price": "0.00000000",
        "duration": "60",
        "start_time": "2027-01-15T07:58:00.000Z",
        "end_time": "2027-01-15T07:59:00.000Z",
        "_links": {"self": {"href": "/v1/calls/ENDED-1"}},
    }


def test_a_live_call_omits_what_is_not_known_yet(api: Api, fake: FakeControl) -> None:
    fake.add(record("RINGING-1", start=None, status="ringing", from_number="sip:alice@example.test"))
    body = api.get("/v1/calls/RINGING-1").json()
    assert body["from"] == {"type": "sip", "uri": "sip:alice@example.test"}
    assert body["status"] == "ringing"
    assert not {"duration", "start_time", "end_time", "rate", "price"} & body.keys()


def test_get_unknown_call_is_404(api: Api) -> None:
    body = assert_problem(api.get("/v1/calls/NOPE"), 404, "not-found")
    assert "NOPE" in body["detail"]


def test_a_path_that_would_forge_log_lines_is_logged_escaped(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Starlette percent-decodes the path: %0d%0a would end the log line and start one the client wrote."""
    with caplog.at_level(logging.DEBUG, logger="dialbridge.engine.control"):
        assert_problem(api.get("/v1/no%0d%0aERROR%20forged%1b%5b2J"), 404, "not-found")
    logged = [record.getMessage() for record in caplog.records if record.name == "dialbridge.engine.control"]
    assert logged and all("\r" not in line and "\n" not in line and "\x1b" not in line for line in logged)
    assert any("ERROR forged\\x1b[2J" in line for line in logged), logged


# ---- GET /v1/calls ------------------------------------------------------------------------------------------------


def add_calls(fake: FakeControl, count: int) -> list[str]:
    uuids = [f"CALL-{i:02d}" for i in range(count)]
    for i, uuid in enumerate(reversed(uuids)):  # inserted newest first: the API must sort
        fake.add(record(uuid, start=NOW + count - 1 - i, conversation=f"CON-{uuid}"))
    return uuids


def test_list_calls_pages_ten_in_start_order_by_default(api: Api, fake: FakeControl) -> None:
    fake.calls.clear()
    uuids = add_calls(fake, 12)
    body = api.get("/v1/calls").json()
    assert (body["count"], body["page_size"], body["record_index"]) == (12, 10, 0)
    assert [call["uuid"] for call in body["_embedded"]["calls"]] == uuids[:10]
    assert body["_embedded"]["calls"][0] == api.get(f"/v1/calls/{uuids[0]}").json()
    links = body["_links"]
    assert links["self"]["href"] == "/v1/calls?page_size=10&record_index=0&order=asc"
    assert links["next"]["href"] == "/v1/calls?page_size=10&record_index=10&order=asc"
    assert links["last"]["href"] == "/v1/calls?page_size=10&record_index=10&order=asc"
    assert "prev" not in links


def test_list_calls_record_index_is_an_offset(api: Api, fake: FakeControl) -> None:
    fake.calls.clear()
    uuids = add_calls(fake, 12)
    body = api.get("/v1/calls", params={"page_size": 5, "record_index": 10}).json()
    assert [call["uuid"] for call in body["_embedded"]["calls"]] == uuids[10:]
    assert (body["count"], body["page_size"], body["record_index"]) == (12, 5, 10)
    assert body["_links"]["prev"]["href"] == "/v1/calls?page_size=5&record_index=5&order=asc"
    assert "next" not in body["_links"]
    assert body["_links"]["last"]["href"] == "/v1/calls?page_size=5&record_index=10&order=asc"
    last_full_page = api.get("/v1/calls", params={"page_size": 6, "record_index": 6}).json()
    assert len(last_full_page["_embedded"]["calls"]) == 6
    assert "next" not in last_full_page["_links"]  # the SDK's only sign that there is no more
    newest = api.get("/v1/calls", params={"page_size": 3, "order": "desc"}).json()
    assert [call["uuid"] for call in newest["_embedded"]["calls"]] == uuids[::-1][:3]
    beyond = api.get("/v1/calls", params={"record_index": 50}).json()
    assert (beyond["count"], beyond["_embedded"]["calls"]) == (12, [])


def test_list_calls_filters(api: Api, fake: FakeControl) -> None:
    fake.add(record("OTHER-1", conversation="CON-other", start=NOW + 3600))
    by_status = api.get("/v1/calls", params={"status": "completed"}).json()
    assert [c["uuid"] for c in by_status["_embedded"]["calls"]] == ["ENDED-1"]
    assert by_status["_links"]["self"]["href"].endswith("&status=completed")

    by_conversation = api.get("/v1/calls", params={"conversation_uuid": "CON-other"}).json()
    assert [c["uuid"] for c in by_conversation["_embedded"]["calls"]] == ["OTHER-1"]
    assert fake.listed_with[-1] == "CON-other"  # the engine is asked for the conversation's calls only

    after = api.get("/v1/calls", params={"date_start": "2027-01-15T08:30:00Z"}).json()
    assert [c["uuid"] for c in after["_embedded"]["calls"]] == ["OTHER-1"]
    before = api.get("/v1/calls", params={"date_end": "2027-01-15T07:59:00+00:00"}).json()
    assert [c["uuid"] for c in before["_embedded"]["calls"]] == ["ENDED-1"]


@pytest.mark.parametrize(
    ("query", "bad"),
    [
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "101"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"record_index": "-1"}, "record_index"),
        ({"order": "sideways"}, "order"),
        ({"status": "talking"}, "status"),
        ({"date_start": "yesterday"}, "date_start"),
        ({"conversation_uuid": ""}, "conversation_uuid"),
    ],
)
def test_list_calls_refuses_bad_queries(api: Api, query: dict[str, str], bad: str) -> None:
    body = assert_problem(api.get("/v1/calls", params=query), 400, "invalid-params")
    assert [p["name"] for p in body["invalid_parameters"]] == [bad]


# ---- PUT /v1/calls/{uuid} -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "verb"),
    [
        ("hangup", ("hangup", "LIVE-1")),
        ("mute", ("set_muted", "LIVE-1", True)),
        ("unmute", ("set_muted", "LIVE-1", False)),
        ("earmuff", ("set_earmuffed", "LIVE-1", True)),
        ("unearmuff", ("set_earmuffed", "LIVE-1", False)),
    ],
)
def test_call_actions_answer_204(api: Api, fake: FakeControl, action: str, verb: tuple[Any, ...]) -> None:
    response = api.put("/v1/calls/LIVE-1", {"action": action})
    assert (response.status_code, response.content) == (204, b"")
    assert fake.verbs == [verb]


def test_transfer_hands_the_ncco_to_the_engine(api: Api, fake: FakeControl) -> None:
    ncco = [{"action": "talk", "text": "Moving you"}, {"action": "conversation", "name": "room-1"}]
    response = api.put("/v1/calls/LIVE-1", {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})
    assert response.status_code == 204
    assert fake.verbs == [("transfer", "LIVE-1", ncco)]


@pytest.mark.parametrize(
    ("destination", "kind", "detail"),
    [
        ({"type": "ncco", "ncco": [{"action": "record"}]}, "invalid-params", "not supported by the embedded voice"),
        ({"type": "ncco", "url": ["https://app.example/ncco"]}, "unsupported", "not supported by the embedded engine"),
        ({"type": "ncco", "ncco": []}, "invalid-params", "non-empty array"),
        ({"type": "ncco", "ncco": ["talk"]}, "invalid-params", "non-empty array"),
        ({"type": "url", "ncco": []}, "invalid-params", "destination"),
        (None, "invalid-params", "destination"),
    ],
)
def test_bad_transfers_are_400(api: Api, fake: FakeControl, destination: Any, kind: str, detail: str) -> None:
    body = assert_problem(api.put("/v1/calls/LIVE-1", {"action": "transfer", "destination": destination}), 400, kind)
    assert detail in body["detail"]
    assert fake.verbs == []


def test_unknown_action_is_400(api: Api, fake: FakeControl) -> None:
    body = assert_problem(api.put("/v1/calls/LIVE-1", {"action": "explode"}), 400, "invalid-params")
    assert body["invalid_parameters"][0]["name"] == "action"
    assert fake.verbs == []


@pytest.mark.parametrize("uuid", ["ENDED-1", "NOPE"])
def test_actions_on_calls_that_are_not_live_are_404(api: Api, fake: FakeControl, uuid: str) -> None:
    for action in CALL_ACTIONS:
        body = {"action": action, "destination": {"type": "ncco", "ncco": [{"action": "talk", "text": "x"}]}}
        problem = assert_problem(api.put(f"/v1/calls/{uuid}", body), 404, "not-found")
        assert ("no longer in progress (completed)" if uuid == "ENDED-1" else "There is no call") in problem["detail"]
    for path in ("talk", "stream"):
        assert_problem(api.delete(f"/v1/calls/{uuid}/{path}"), 404, "not-found")
    assert_problem(api.put(f"/v1/calls/{uuid}/dtmf", {"digits": "1"}), 404, "not-found")
    assert fake.verbs == []


# ---- talk, stream, dtmf -------------------------------------------------------------------------------------------


def test_talk_defaults_are_vonages(api: Api, fake: FakeControl) -> None:
    response = api.put("/v1/calls/LIVE-1/talk", {"text": "Hello"})
    assert (response.status_code, response.json()) == (200, {"message": "Talk started", "uuid": "LIVE-1"})
    assert fake.verbs == [("start_talk", "LIVE-1", "Hello", "en-US", 1, 0.0)]


def test_talk_options(api: Api, fake: FakeControl) -> None:
    body = {"text": "Hola", "language": "es-ES", "loop": 0, "level": "-0.4", "voice_name": "Conchita", "premium": True}
    assert api.put("/v1/calls/LIVE-1/talk", body).status_code == 200
    assert fake.verbs == [("start_talk", "LIVE-1", "Hola", "es-ES", 0, -0.4)]
    response = api.delete("/v1/calls/LIVE-1/talk")
    assert (response.status_code, response.json()) == (200, {"message": "Talk stopped", "uuid": "LIVE-1"})
    assert fake.verbs[-1] == ("stop_talk", "LIVE-1")


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ({}, "text"),
        ({"text": "  "}, "text"),
        ({"text": 5}, "text"),
        ({"text": "x" * 1501}, "text"),
        ({"text": "hi", "language": "english please"}, "language"),
        ({"text": "hi", "language": "xx-XX"}, "text"),  # the engine's own refusal
        ({"text": "hi", "loop": -1}, "loop"),
        ({"text": "hi", "loop": 1.5}, "loop"),
        ({"text": "hi", "loop": True}, "loop"),
        ({"text": "hi", "level": 1.5}, "level"),
        ({"text": "hi", "level": "nan"}, "level"),
        ({"text": "hi", "level": "loud"}, "level"),
        ({"text": "hi", "style": "2"}, "style"),
        ({"text": "hi", "premium": "yes"}, "premium"),
    ],
)
def test_bad_talks_are_400(api: Api, fake: FakeControl, body: dict[str, Any], bad: str) -> None:
    problem = assert_problem(api.put("/v1/calls/LIVE-1/talk", body), 400, "invalid-params")
    assert problem["invalid_parameters"][0]["name"] == bad
    assert fake.verbs == []


def test_stream_into_a_call(api: Api, fake: FakeControl) -> None:
    body = {"stream_url": ["https://app.example/hold.mp3"], "loop": 3, "level": 0.5}
    response = api.put("/v1/calls/LIVE-1/stream", body)
    assert (response.status_code, response.json()) == (200, {"message": "Stream started", "uuid": "LIVE-1"})
    response = api.delete("/v1/calls/LIVE-1/stream")
    assert (response.status_code, response.json()) == (200, {"message": "Stream stopped", "uuid": "LIVE-1"})
    assert fake.verbs == [("start_stream", "LIVE-1", "https://app.example/hold.mp3", 3, 0.5), ("stop_stream", "LIVE-1")]


@pytest.mark.parametrize(
    "stream_url", [None, [], ["ftp://app.example/a.mp3"], ["https://a.example/1", "https://a.example/2"], [7]]
)
def test_bad_streams_are_400(api: Api, fake: FakeControl, stream_url: Any) -> None:
    problem = assert_problem(api.put("/v1/calls/LIVE-1/stream", {"stream_url": stream_url}), 400, "invalid-params")
    assert problem["invalid_parameters"][0]["name"] == "stream_url"
    assert fake.verbs == []


def test_dtmf(api: Api, fake: FakeControl) -> None:
    response = api.put("/v1/calls/LIVE-1/dtmf", {"digits": "12p#*AD"})
    assert (response.status_code, response.json()) == (200, {"message": "DTMF sent", "uuid": "LIVE-1"})
    assert fake.verbs == [("send_dtmf", "LIVE-1", "12p#*AD")]


@pytest.mark.parametrize("digits", ["", "12E", "1 2", 12, None, "1" * 257])
def test_bad_dtmf_is_400(api: Api, fake: FakeControl, digits: Any) -> None:
    problem = assert_problem(api.put("/v1/calls/LIVE-1/dtmf", {"digits": digits}), 400, "invalid-params")
    assert problem["invalid_parameters"][0]["name"] == "digits"
    assert fake.verbs == []


# ---- bodies, routes, verbs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'"hangup"', b"null", b"\xff\xfe"])
def test_bodies_that_are_not_json_objects_are_400(api: Api, content: bytes) -> None:
    response = api.client.put("/v1/calls/LIVE-1", headers=api.headers(), content=content)
    assert_problem(response, 400, "invalid-json")


def test_large_bodies_are_413(api: Api, fake: FakeControl) -> None:
    text = "x" * (300 * 1024)
    assert_problem(api.put("/v1/calls/LIVE-1/talk", {"text": text}), 413, "payload-too-large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"text": "'
        for _ in range(300):
            yield b"x" * 1024
        yield b'"}'

    response = api.client.put("/v1/calls/LIVE-1/talk", headers=api.headers(), content=chunks())
    assert_problem(response, 413, "payload-too-large")
    assert fake.verbs == []


def test_unknown_routes_and_verbs(api: Api) -> None:
    assert_problem(api.get("/v1/calls/LIVE-1/nothing"), 404, "not-found")
    assert_problem(api.get("/v1/calls/"), 404, "not-found")
    assert_problem(api.get("/"), 404, "not-found")
    wrong_verb = api.client.post("/v1/calls/LIVE-1", headers=api.headers(), json={"action": "hangup"})
    assert_problem(wrong_verb, 405, "wrong-verb")
    assert "PUT" in wrong_verb.headers["allow"]


# ---- authentication -----------------------------------------------------------------------------------------------


def signed(claims: dict[str, Any], key_pem: str) -> str:
    return jwt.encode(claims, key_pem, algorithm="RS256", headers={"typ": "JWT"})


def test_requests_without_a_valid_token_are_401(
    api: Api, fake: FakeControl, credentials: VoiceCredentials, other_key_pem: str
) -> None:
    app_id, mine = credentials.application_id, credentials.private_key_pem
    valid = {"application_id": app_id, "iat": int(NOW), "jti": "j", "exp": int(NOW) + 900}
    forged_hs256 = jwt.encode(valid, "a shared secret the engine never had", algorithm="HS256")
    refused = {
        "no header": None,
        "basic auth": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
        "garbage": "Bearer not.a.jwt",
        "another key": "Bearer " + signed(valid, other_key_pem),
        "another application": "Bearer " + signed({**valid, "application_id": "someone-else"}, mine),
        "no application": "Bearer " + signed({k: v for k, v in valid.items() if k != "application_id"}, mine),
        "no iat": "Bearer " + signed({k: v for k, v in valid.items() if k != "iat"}, mine),
        "issued in the future": "Bearer " + signed({**valid, "iat": int(NOW) + 120, "exp": int(NOW) + 900}, mine),
        "expired": "Bearer " + signed({**valid, "iat": int(NOW) - 1000, "exp": int(NOW) - 100}, mine),
        "a week long": "Bearer " + signed({**valid, "exp": int(NOW) + 7 * 86400}, mine),
        "HS256": "Bearer " + forged_hs256,
        "huge": "Bearer " + "a" * 10_000,
    }
    for name, header in refused.items():
        headers = {} if header is None else {"Authorization": header}
        for method, path in (("GET", "/v1/calls"), ("GET", "/v1/calls/LIVE-1"), ("PUT", "/v1/calls/LIVE-1")):
            response = api.client.request(method, path, headers=headers, json={"action": "hangup"})
            kind = "jwt-expired" if name == "expired" else "unauthorized"
            assert_problem(response, 401, kind)
            assert response.headers["www-authenticate"].startswith("Bearer"), name
    assert fake.verbs == []
    assert fake.listed_with == []


def test_tokens_within_the_leeway_are_accepted(api: Api, credentials: VoiceCredentials) -> None:
    base = {"application_id": credentials.application_id, "jti": "j"}
    slightly_ahead = signed({**base, "iat": int(NOW) + 20}, credentials.private_key_pem)  # no exp: 15 min
    just_expired = signed({**base, "iat": int(NOW) - 920, "exp": int(NOW) - 20}, credentials.private_key_pem)
    for token in (slightly_ahead, just_expired):
        assert api.client.get("/v1/calls", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    api.now = NOW - 15 * 60 - 31  # the SDK's 15 minutes are over
    assert_problem(api.get("/v1/calls"), 401, "jwt-expired")


def test_health_and_metrics_need_no_token(api: Api, fake: FakeControl, credentials: VoiceCredentials) -> None:
    health = api.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "calls": 2})
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.content == b"voice_calls 2\n"
    assert metrics.headers["content-type"].startswith("text/plain; version=")

    def failing() -> dict[str, Any]:
        raise RuntimeError("engine stalled")

    for health_check, status in ((lambda: {"status": "draining"}, 503), (failing, 503)):
        with TestClient(create_control_app(fake, credentials, health=health_check)) as client:
            assert client.get("/healthz").status_code == status


# ---- fuzzing ------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ncco_actions = st.lists(st.dictionaries(st.sampled_from(["action", "text"]), json_values), max_size=3)
destinations = st.fixed_dictionaries(
    {"type": st.sampled_from(["ncco", "url"]) | json_values},
    optional={"ncco": ncco_actions | json_values, "url": json_values},
)
shaped_bodies = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(CALL_ACTIONS) | json_values,
        "destination": destinations | json_values,
        "text": st.text(max_size=20) | json_values,
        "language": st.sampled_from(["en-GB", "xx-XX", "", "e"]) | json_values,
        "loop": st.integers(-3, 3) | json_values,
        "level": st.sampled_from(["0.5", "-1", "2", "inf", "nan", "1e400"]) | st.floats() | json_values,
        "stream_url": st.lists(st.sampled_from(["https://a.example/x.mp3", "ftp://x"]), max_size=2) | json_values,
        "digits": st.text(alphabet="0123456789#*pABCDEx ", max_size=8) | json_values,
    },
)
segments = st.sampled_from(["LIVE-1", "ENDED-1", "NOPE", ""]) | st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N"], include_characters="-_.~!$&'()*+,;=:@"), max_size=12
)
real_paths = st.builds(
    "/v1/calls/{}{}".format,
    st.sampled_from(["LIVE-1", "ENDED-1", "NOPE"]),
    st.sampled_from(["", "/talk", "/stream", "/dtmf"]),
)
any_paths = st.builds(
    "/v1/calls/{}{}".format, segments, st.sampled_from(["", "/talk", "/stream", "/dtmf", "/other", "/"])
)
paths = real_paths | st.just("/v1/calls") | any_paths
queries = st.dictionaries(
    st.sampled_from(["page_size", "record_index", "order", "status", "conversation_uuid", "date_start", "x"]),
    st.sampled_from(["0", "1", "100", "101", "-1", "asc", "DESC", "completed", "2027-01-15T08:00:00Z"])
    | st.text(max_size=10),
    max_size=4,
)
valid_bodies = st.sampled_from(
    [{"action": "mute"}, {"action": "hangup"}, {"text": "Hello"}, {"stream_url": ["https://a.example/x.mp3"]}]
)
contents = (valid_bodies | shaped_bodies | shaped_bodies | json_values).map(json.dumps).map(str.encode) | st.binary(
    max_size=24
)

methods = st.sampled_from(["PUT", "PUT", "PUT", "GET", "DELETE", "POST", "PATCH"])  # PUTs carry the bodies
valid_requests = st.sampled_from(
    [
        ("PUT", "/v1/calls/LIVE-1", {}, b'{"action": "mute"}'),
        ("PUT", "/v1/calls/LIVE-1/talk", {}, b'{"text": "Hello"}'),
        ("GET", "/v1/calls", {"page_size": "1"}, b""),
    ]
)


def test_no_request_makes_the_api_fail(api: Api) -> None:
    headers = api.headers()  # valid for the fixed clock throughout
    seen: set[int] = set()

    @settings(
        max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(request=st.tuples(methods, paths, queries, contents) | valid_requests)
    def request_anything(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, query, content = request
        response = api.client.request(method, path, params=query, content=content, headers=headers)
        seen.add(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json().keys() >= PROBLEM_KEYS
        elif method == "PUT" and path.count("/") == 3:
            assert response.status_code == 204

    request_anything()
    assert seen >= {200, 204, 400, 404, 405}  # the examples reached the verbs, not only the refusals


def mostly(valid: st.SearchStrategy[Any], *near_misses: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that is usually valid, else nearly valid or anything at all, so a body gets past its other checks."""
    return st.one_of(valid, valid, valid, json_values, *near_misses)


bad_numbers = st.booleans() | st.floats() | st.sampled_from(["nan", "inf", "2", "-1.5", ""])
verb_bodies: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/calls/LIVE-1": st.fixed_dictionaries(
        {"action": mostly(st.sampled_from(CALL_ACTIONS), st.sampled_from(["Mute", "HANGUP", "transfer "]))},
        optional={"destination": mostly(st.fixed_dictionaries({"type": st.just("ncco"), "ncco": ncco_actions}))},
    ),
    "/v1/calls/LIVE-1/talk": st.fixed_dictionaries(
        {"text": mostly(st.text(min_size=1, max_size=20), st.sampled_from(["", " ", "x" * 1501]))},
        optional={
            "language": mostly(
                st.sampled_from(["en-GB", "de-DE", "cmn-CN"]), st.sampled_from(["en_GB", "-", "x" * 40])
            ),
            "loop": mostly(st.integers(0, 5), st.integers(-3, -1), bad_numbers),
            "level": mostly(st.floats(-1, 1) | st.sampled_from(["0.4", "-1", "1"]), bad_numbers),
            "voice_name": mostly(st.text(max_size=8), st.integers()),
            "style": mostly(st.integers(0, 3), st.booleans(), st.text(max_size=2)),
            "premium": mostly(st.booleans(), st.integers(0, 1), st.text(max_size=4)),
        },
    ),
    "/v1/calls/LIVE-1/stream": st.fixed_dictionaries(
        {"stream_url": mostly(st.just(["https://app.example/hold.mp3"]), st.just("https://app.example/a.mp3"))},
        optional={
            "loop": mostly(st.integers(0, 5), st.integers(-3, -1), bad_numbers),
            "level": mostly(st.floats(-1, 1), bad_numbers),
        },
    ),
    "/v1/calls/LIVE-1/dtmf": st.fixed_dictionaries(
        {"digits": mostly(st.text(alphabet="0123456789*#pABCD", min_size=1), st.text(alphabet="0123456789E x"))}
    ),
}
WELL_TYPED = {
    "set_muted": (str, bool),
    "set_earmuffed": (str, bool),
    "hangup": (str,),
    "transfer": (str, list),
    "start_talk": (str, str, str, int, float),
    "start_stream": (str, str, int, float),
    "send_dtmf": (str, str),
}


def test_the_engine_only_ever_gets_well_formed_arguments(api: Api, fake: FakeControl) -> None:
    headers = api.headers()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(data=st.data(), path=st.sampled_from(sorted(verb_bodies)))
    def put_anything(data: st.DataObject, path: str) -> None:
        body = data.draw(verb_bodies[path])
        fake.verbs.clear()
        response = api.client.put(path, headers=headers, content=json.dumps(body).encode())
        assert response.status_code in (200, 204, 400), response.text
        if response.status_code == 400:
            assert fake.verbs == []
            return
        [(verb, *arguments)] = fake.verbs
        assert tuple(type(argument) for argument in arguments) == WELL_TYPED[verb]
        if verb in ("start_talk", "start_stream"):
            loop, level = arguments[-2:]
            assert loop >= 0 and -1 <= level <= 1

    put_anything()


# ---- the official SDK, end to end over TLS -------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    fake: FakeControl


@pytest.fixture(scope="module")
def served(credentials: VoiceCredentials) -> Iterator[Served]:
    fake = FakeControl()
    app = create_control_app(fake, credentials)  # the real clock: the SDK signs with it
    config = uvicorn.Config(
        app,
        ssl_certfile=str(credentials.cert_path),
        ssl_keyfile=str(credentials.key_path),
        log_level="warning",
        lifespan="off",
        loop="asyncio",
        http="h11",
        ws="none",
    )
    server = uvicorn.Server(config)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the call-control server did not start"
        time.sleep(0.01)
    yield Served(listener.getsockname()[1], fake)
    server.should_exit = server.force_exit = True  # the SDK's pooled TLS connections would hold it open
    thread.join(5)
    assert not thread.is_alive()
    listener.close()


@pytest.fixture
def engine(served: Served, credentials: VoiceCredentials, monkeypatch: pytest.MonkeyPatch) -> Served:
    served.fake.calls.clear()
    served.fake.verbs.clear()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(credentials.ca_bundle_path))  # how requests (the SDK) trusts it
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    return served


@pytest.fixture
def voice(engine: Served, credentials: VoiceCredentials) -> Any:
    return sdk_voice(engine, credentials.application_id, credentials.private_key_pem)


def sdk_voice(engine: Served, application_id: str, private_key: str) -> Any:
    options = HttpClientOptions(api_host=f"127.0.0.1:{engine.port}", timeout=5, max_retries=0)
    return Vonage(Auth(application_id=application_id, private_key=private_key), options).voice


def test_the_sdk_lists_and_reads_calls(voice: Any, engine: Served) -> None:
    engine.fake.add(record("LIVE-1", start=NOW))
    engine.fake.add(record("ENDED-1", start=NOW - 120, end=NOW - 60, status="completed"))
    engine.fake.add(record("ELSEWHERE", conversation="CON-else", start=NOW + 60))

    calls, next_index = voice.list_calls(ListCallsFilter(conversation_uuid=CONVERSATION))
    assert [c.uuid for c in calls] == ["ENDED-1", "LIVE-1"]
    assert next_index is None
    assert engine.fake.listed_with[-1] == CONVERSATION
    first_page, next_index = voice.list_calls(ListCallsFilter(page_size=1))
    assert ([c.uuid for c in first_page], next_index) == (["ENDED-1"], 1)  # the SDK's next index: record_index + 1

    ended = voice.get_call("ENDED-1")
    assert (ended.uuid, ended.conversation_uuid) == ("ENDED-1", CONVERSATION)
    assert (ended.status, ended.direction) == ("completed", "inbound")
    assert (ended.from_.number, ended.to.number, ended.duration) == ("447700900001", "14155550100", "60")
    assert (ended.start_time, ended.link) == ("2027-01-15T07:58:00.000Z", "/v1/calls/ENDED-1")
    with pytest.raises(NotFoundError):
        voice.get_call("NOPE")


def test_the_sdk_controls_calls(voice: Any, engine: Served) -> None:
    engine.fake.add(record("LIVE-1", start=NOW))
    assert voice.mute("LIVE-1") is None
    voice.unmute("LIVE-1")
    voice.earmuff("LIVE-1")
    voice.unearmuff("LIVE-1")
    voice.transfer_call_ncco("LIVE-1", [Talk(text="Moving you", loop=2)])
    talk = voice.play_tts_into_call("LIVE-1", TtsStreamOptions(text="Hello", language="en-GB", loop=2, level=0.5))
    assert (talk.message, talk.uuid) == ("Talk started", "LIVE-1")
    assert voice.stop_tts("LIVE-1").message == "Talk stopped"
    stream = voice.play_audio_into_call(
        "LIVE-1", AudioStreamOptions(stream_url=["https://app.example/hold.mp3"], loop=0, level=-0.5)
    )
    assert (stream.message, stream.uuid) == ("Stream started", "LIVE-1")
    assert voice.stop_audio_stream("LIVE-1").message == "Stream stopped"
    assert voice.play_dtmf_into_call("LIVE-1", "1p2#").message == "DTMF sent"
    voice.hangup("LIVE-1")

    assert engine.fake.verbs == [
        ("set_muted", "LIVE-1", True),
        ("set_muted", "LIVE-1", False),
        ("set_earmuffed", "LIVE-1", True),
        ("set_earmuffed", "LIVE-1", False),
        ("transfer", "LIVE-1", [{"action": "talk", "text": "Moving you", "loop": 2}]),
        ("start_talk", "LIVE-1", "Hello", "en-GB", 2, 0.5),
        ("stop_talk", "LIVE-1"),
        ("start_stream", "LIVE-1", "https://app.example/hold.mp3", 0, -0.5),
        ("stop_stream", "LIVE-1"),
        ("send_dtmf", "LIVE-1", "1p2#"),
        ("hangup", "LIVE-1"),
    ]


def test_the_sdk_creates_calls(voice: Any, engine: Served) -> None:
    created = voice.create_call(
        CreateCallRequest(
            to=[{"type": "phone", "number": "14155550100"}],
            from_={"number": "447700900000"},
            ncco=[Talk(text="Hello")],
            event_url=["https://app.example/ev"],
            ringing_timer=30,
        )
    )
    assert (created.uuid, created.status, created.direction) == ("NEW-0", "started", "outbound")
    assert created.conversation_uuid == "CON-new"
    by_url = voice.create_call(
        CreateCallRequest(
            to=[{"type": "sip", "uri": "sip:alice@pbx.example"}],
            from_={"number": "447700900000"},
            answer_url=["https://app.example/answer"],
        )
    )
    assert by_url.uuid == "NEW-1"
    assert [verb[1] for verb in engine.fake.verbs] == [
        NewCall(
            {"type": "phone", "number": "14155550100"},
            "447700900000",
            [{"action": "talk", "text": "Hello"}],
            None,
            "https://app.example/ev",
            30,
            7200,
        ),
        NewCall(
            {"type": "sip", "uri": "sip:alice@pbx.example"},
            "447700900000",
            None,
            "https://app.example/answer",
            None,
            60,
            7200,
        ),
    ]


def test_the_sdk_sees_refusals_as_its_errors(voice: Any, engine: Served) -> None:
    engine.fake.add(record("LIVE-1", start=NOW))
    engine.fake.add(record("ENDED-1", start=NOW - 120, end=NOW - 60, status="completed"))
    with pytest.raises(NotFoundError):  # a caller who just left: the app can tell and ignore it
        voice.hangup("ENDED-1")
    with pytest.raises(HttpRequestError) as refused:
        voice.transfer_call_answer_url("LIVE-1", "https://app.example/answer")
    assert refused.value.response.status_code == 400
    assert "not supported by the embedded engine" in refused.value.response.json()["detail"]
    assert engine.fake.verbs == []


def test_the_sdk_does_not_trust_the_engine_without_its_bundle(
    voice: Any, engine: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(requests.exceptions.SSLError):
        voice.list_calls()


def test_the_sdk_signed_with_another_key_is_refused(
    engine: Served, credentials: VoiceCredentials, other_key_pem: str
) -> None:
    engine.fake.add(record("LIVE-1", start=NOW))
    impostor = sdk_voice(engine, credentials.application_id, other_key_pem)
    with pytest.raises(AuthenticationError) as refused:
        impostor.hangup("LIVE-1")
    assert refused.value.response.status_code == 401
    assert refused.value.response.json()["type"] == "https://developer.vonage.com/api-errors#unauthorized"
    with pytest.raises(AuthenticationError):
        impostor.list_calls()
    assert engine.fake.verbs == []


def test_the_certificate_passes_strict_verification_by_name_and_address(
    engine: Served, credentials: VoiceCredentials
) -> None:
    context = ssl.create_default_context(cafile=str(credentials.ca_bundle_path))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: the certificate must stay valid there
    for host in ("127.0.0.1", "localhost"):
        response = httpx.get(f"https://{host}:{engine.port}/healthz", verify=context, trust_env=False)
        assert response.json()["status"] == "ok"


# ---- credentials --------------------------------------------------------------------------------------------------


def test_credentials_are_made_once_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "voice"
    made = VoiceCredentials.load_or_create(folder)
    again = VoiceCredentials.load_or_create(folder)
    assert again == made
    assert (again.application_id, again.private_key_pem) == (made.application_id, made.private_key_pem)
    for secret in (folder / "credentials.json", made.private_key_path, made.key_path):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert made.private_key_path.read_text() == made.private_key_pem
    assert made.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # the text form the SDK accepts
    assert made.ca_bundle_path == made.cert_path
    assert sorted(p.name for p in folder.iterdir()) == ["application.key", "credentials.json", "tls.crt", "tls.key"]

    made.cert_path.unlink()  # derived files come back from the bundle, unchanged
    made.key_path.write_text("edited")
    restored = VoiceCredentials.load_or_create(folder)
    assert restored.cert_path.read_bytes() and restored.key_path.read_text() != "edited"
    assert restored.application_id == made.application_id


def test_the_certificate_names_the_loopback(credentials: VoiceCredentials) -> None:
    certificate = x509.load_pem_x509_certificate(credentials.cert_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    ssl.create_default_context().load_cert_chain(credentials.cert_path, credentials.key_path)  # a matching pair


def test_a_damaged_bundle_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    VoiceCredentials.load_or_create(tmp_path)
    bundle = tmp_path / "credentials.json"
    data = json.loads(bundle.read_text())
    bundle.write_text(json.dumps({**data, "private_key": "-----BEGIN PRIVATE KEY-----\nbroken"}))
    with pytest.raises(CredentialsError):
        VoiceCredentials.load_or_create(tmp_path)
    bundle.write_text('{"version": 99}')
    with pytest.raises(CredentialsError):
        VoiceCredentials.load_or_create(tmp_path)


def test_app_token_is_what_the_sdk_signs(credentials: VoiceCredentials) -> None:
    ours = credentials.app_token(NOW)
    sdks = JwtClient(credentials.application_id, credentials.private_key_pem).generate_application_jwt().decode()
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(sdks) == {"alg": "RS256", "typ": "JWT"}
    our_claims = jwt.decode(ours, options={"verify_signature": False})
    sdk_claims = jwt.decode(sdks, options={"verify_signature": False})
    assert our_claims.keys() == sdk_claims.keys() == {"application_id", "iat", "jti", "exp"}
    assert our_claims["exp"] - our_claims["iat"] == sdk_claims["exp"] - sdk_claims["iat"] == 900
    assert credentials.verify(ours, NOW)["application_id"] == credentials.application_id
    assert credentials.verify(sdks, time.time())["jti"] == sdk_claims["jti"]
    with pytest.raises(TokenError):
        credentials.verify(ours, NOW + 3600)
    with pytest.raises(TokenError):
        credentials.verify(ours[:-4] + ("AAAA" if not ours.endswith("AAAA") else "BBBB"), NOW)


def test_threads_starting_together_share_one_identity(tmp_path: Path) -> None:
    starting = threading.Barrier(6)
    made: list[VoiceCredentials] = []

    def start() -> None:
        starting.wait()
        made.append(VoiceCredentials.load_or_create(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 6
    assert len({(c.application_id, c.private_key_pem, c.cert_path.read_bytes()) for c in made}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["application.key", "credentials.json", "tls.crt", "tls.key"]


STARTER = """
import json, sys, time
from pathlib import Path
from dialbridge.credentials import VoiceCredentials
folder, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
made = VoiceCredentials.load_or_create(folder)
print(json.dumps([made.application_id, made.private_key_pem]), flush=True)
"""


def test_processes_starting_together_share_one_identity(tmp_path: Path) -> None:
    folder, go = tmp_path / "voice", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(folder), str(go)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    try:
        for starter in starters:
            assert starter.stdout is not None
            assert starter.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [starter.communicate(timeout=30)[0] for starter in starters]
    finally:
        for starter in starters:
            starter.kill()
    assert all(starter.returncode == 0 for starter in starters)
    identities = {tuple(json.loads(output)) for output in outputs}
    assert len(identities) == 1
    kept = VoiceCredentials.load_or_create(folder)
    assert identities == {(kept.application_id, kept.private_key_pem)}
