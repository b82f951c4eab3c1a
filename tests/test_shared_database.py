"""Several `dialbridge serve` instances on one database act as one service: rooms, PINs, caller lockouts and the
replay record are the database's, not an instance's."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from dialbridge.webhook_signing import WebhookSignatures
from tests.conftest import on_both_databases
from tests.served import Served, room_config, serving_embedded

SECRET = "a signature secret both instances share"
SIGNER = WebhookSignatures(SECRET)
CALLER_MAX_FAILURES = 3  # small, so that a lockout is reached in a few calls


@pytest.fixture
def instances(tmp_path: Path, db_url: str) -> Iterator[tuple[Served, Served]]:
    """Two instances (embedded backend), each with its own ports and folder, on the same database."""
    env = {
        "DIALBRIDGE_DATABASE_URL": db_url,
        "DIALBRIDGE_SIGNATURE_SECRET": SECRET,
        "DIALBRIDGE_CALLER_MAX_FAILURES": str(CALLER_MAX_FAILURES),
        "DIALBRIDGE_DIAL_IN_NUMBER": "+14155550100",
    }
    with ExitStack() as stack:
        served = []
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            served.append(stack.enter_context(serving_embedded(folder, **env)))
        yield served[0], served[1]


def post(served: Served, path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    """A signed webhook as Vonage sends it (`token`: send that one instead of signing afresh)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        served.base + path,
        data=data,
        headers={"content-type": "application/json", "authorization": f"Bearer {token or SIGNER.sign(data)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            content = response.read()
            return response.status, json.loads(content) if content else None
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def call(uuid: str, caller: str, **fields: Any) -> dict[str, Any]:
    return {"uuid": uuid, "conversation_uuid": "CON-" + uuid, "from": caller, "to": "14155550100", **fields}


def joined(ncco: list[dict[str, Any]]) -> str | None:
    return next((action["name"] for action in ncco if action["action"] == "conversation"), None)


@on_both_databases
def test_two_instances_share_rooms_pins_lockouts_and_the_replay_record(instances: tuple[Served, Served]) -> None:
    a, b = instances
    # A room made through one instance is the same room, with the same session and PIN, on the other.
    on_a = room_config(a.base, "standup")
    on_b = room_config(b.base, "standup")
    assert (on_b["sessionId"], on_b["pin"]) == (on_a["sessionId"], on_a["pin"])
    pin = on_a["pin"]
    wrong = "000000" if pin != "000000" else "111111"

    # A PIN keyed on a call answered by one instance is checked by the other.
    assert post(a, "/webhooks/answer", call("c1", "447700900001"))[0] == 200
    status, ncco = post(b, "/webhooks/input", call("c1", "447700900001", dtmf={"digits": pin}))
    assert status == 200 and joined(ncco) == on_a["sessionId"]

    # Wrong guesses from one number count on whichever instance they arrive: locked out through A and B together,
    # the number is refused by both, even with the right PIN.
    caller = "447700900666"
    for n in range(CALLER_MAX_FAILURES):
        served = (a, b)[n % 2]
        status, ncco = post(served, "/webhooks/input", call(f"guess-{n}", caller, dtmf={"digits": wrong}))
        assert status == 200 and joined(ncco) is None
    for served in (a, b):
        status, ncco = post(served, "/webhooks/answer", call(f"after-{served.port}", caller))
        assert status == 200 and [action["action"] for action in ncco] == ["talk"], ncco  # goodbye, no PIN prompt
        status, ncco = post(served, "/webhooks/input", call(f"after-{served.port}", caller, dtmf={"digits": pin}))
        assert status == 200 and joined(ncco) is None

    # A signed webhook accepted by one instance is a replay to the other.
    event = call("c1", "447700900001", status="completed")
    token = SIGNER.sign(json.dumps(event).encode())
    assert post(a, "/webhooks/events", event, token)[0] == 204
    status, refusal = post(b, "/webhooks/events", event, token)
    assert status == 401 and "replay" in refusal["error"]["message"]


@on_both_databases
def test_parallel_wrong_guesses_from_one_number_over_two_instances_stay_within_the_quota(
    instances: tuple[Served, Served],
) -> None:
    """Each instance counts in its own process and transaction: only counting inside the write, under the
    database's lock, keeps the two from each inviting the caller to try again on the same count."""
    from concurrent.futures import ThreadPoolExecutor

    def wrong_guess(n: int) -> list[dict[str, Any]]:
        status, ncco = post(instances[n % 2], "/webhooks/input", call(f"parallel-{n}", "447700900777", dtmf="000000"))
        assert status == 200
        return list(ncco)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(wrong_guess, range(30)))
    asked_again = [ncco for ncco in answers if any(action["action"] == "input" for action in ncco)]
    assert len(asked_again) <= CALLER_MAX_FAILURES - 1, f"{len(asked_again)} of 30 were asked again"
