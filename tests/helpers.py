"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from dialbridge.platforms.base import CallGone

T = TypeVar("T")


def phone_call_headers(html: str) -> dict[str, str]:
    """What the phone page's script sends with a call (`callToken` of the page's config), from the page's HTML."""
    token = page_config(html, "phone-config")["callToken"]
    return {"content-type": "application/json", "authorization": f"Bearer {token}"}


def page_config(html: str, script_id: str = "room-config") -> dict[str, Any]:
    """The JSON config a page carries for its script: the room page's (session, tokens, PIN) or, with
    `script_id="phone-config"`, the phone page's (its call token)."""
    found = re.search(rf'<script id="{re.escape(script_id)}" type="application/json">(.*?)</script>', html, re.S)
    assert found, f"the page carries its JSON config ({script_id})"
    config: dict[str, Any] = json.loads(found.group(1).replace("<\\/", "</"))
    return config


def visit(client: TestClient, room_id: str) -> dict[str, Any]:
    """Open the room's page (creating the room on first visit); its JSON config."""
    response = client.get(f"/room/{room_id}")
    assert response.status_code == 200, response.text
    return page_config(response.text)


def bearer(config: dict[str, Any]) -> dict[str, str]:
    """The Authorization header of the participant token a room page carries."""
    return {"Authorization": f"Bearer {config['participantToken']}"}


def make_room(client: TestClient, room_id: str) -> dict[str, Any]:
    response = client.post("/api/rooms", json={"room_id": room_id})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def answer(client: TestClient, uuid: str, caller: str = "447700900001", **extra: str) -> list[dict[str, Any]]:
    params = {"uuid": uuid, "conversation_uuid": "CON-" + uuid, "from": caller, "to": "14155550100", **extra}
    response = client.get("/webhooks/answer", params=params)
    assert response.status_code == 200, response.text
    ncco: list[dict[str, Any]] = response.json()
    return ncco


def enter(client: TestClient, uuid: str, digits: str, caller: str = "447700900001") -> list[dict[str, Any]]:
    body = {
        "dtmf": {"digits": digits, "timed_out": False},
        "uuid": uuid,
        "conversation_uuid": "CON-" + uuid,
        "from": caller,
        "to": "14155550100",
    }
    response = client.post("/webhooks/input", json=body)
    assert response.status_code == 200, response.text
    ncco: list[dict[str, Any]] = response.json()
    return ncco


def join_by_pin(
    client: TestClient, config: dict[str, Any], uuid: str, caller: str = "447700900001"
) -> list[dict[str, Any]]:
    """A call answered and keying the room's PIN (from its page `config`): the NCCO that joins it."""
    answer(client, uuid, caller)
    return enter(client, uuid, config["pin"], caller)


def actions(ncco: list[dict[str, Any]]) -> list[str]:
    return [action["action"] for action in ncco]


def conversation_name(ncco: list[dict[str, Any]]) -> str | None:
    names = [action["name"] for action in ncco if action["action"] == "conversation"]
    return names[0] if names else None


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in its own thread (Playwright's sync API keeps a loop
    running in the main thread once the browser tests have started)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    """Poll `condition` every `every` seconds until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class RecordingControl:
    """Stands in for a call-control API (`callcontrol.CallControl`): records each request; a call in `gone` has
    ended (`CallGone`)."""

    name = "recording"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.gone: set[str] = set()

    async def mute(self, call_uuid: str, muted: bool) -> None:
        self._record("mute" if muted else "unmute", call_uuid, None)

    async def hang_up(self, call_uuid: str) -> None:
        self._record("hangup", call_uuid, None)

    async def talk(self, call_uuid: str, text: str) -> None:
        self._record("talk", call_uuid, text)

    def _record(self, action: str, call_uuid: str, detail: Any) -> None:
        if call_uuid in self.gone:
            raise CallGone(action, "no such live call")
        self.requests.append((action, call_uuid, detail))
