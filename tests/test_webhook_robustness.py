"""Whatever arrives at the webhooks, the answer is a decision or a JSON refusal — never a 500."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(client_both_ways: httpx.Client) -> httpx.Client:
    return client_both_ways


FIELDS = ["uuid", "conversation_uuid", "from", "to", "dtmf", "status", "duration", "timestamp", "SipHeader_X-a"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 2 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 7, 10**30, 3.5, float("1e308")])
    if choice == 3:
        return "".join(rng.choice("0123456789*#aZ é\x00\u202e") for _ in range(rng.randrange(0, 30)))
    if choice == 4:
        return "x" * rng.choice([0, 255, 256, 257, 5000])
    if choice == 5:
        return rng.choice(["completed", "answered", "1234#", "", "\ud7ff"])
    if choice == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    return {rng.choice([*FIELDS, "digits", "timed_out"]): junk(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def test_random_payloads_never_crash_a_webhook(client: TestClient) -> None:
    rng = random.Random(29112026)
    statuses: dict[int, int] = {}
    for _ in range(400):
        body: Any = {name: junk(rng) for name in rng.sample(FIELDS, rng.randrange(0, len(FIELDS)))}
        if rng.random() < 0.1:
            body = junk(rng)
        path = rng.choice(["/webhooks/answer", "/webhooks/input", "/webhooks/events"])
        response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 204, 400, 422), (path, body, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message"}
    assert statuses.get(422, 0) > 0 and (statuses.get(200, 0) + statuses.get(204, 0)) > 0


def test_raw_garbage_bodies_are_refused_cleanly(client: TestClient) -> None:
    for body in (b"\xff\xfe\x00", b"{" * 5000, b'{"uuid": "x", "dtmf": {"digits": "1"}}' * 3, b"nul\x00l", b"1e999999"):
        response = client.post("/webhooks/input", content=body, headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), (body, response.text)
        assert response.json()["error"]["code"] in ("invalid_json", "invalid_payload")
