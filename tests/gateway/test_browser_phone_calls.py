"""Browser phone calls through the gateway of `dialbridge serve` (embedded backend), with an aiortc peer standing in for
/phone's page: a flood of offers is bounded and refused cleanly, and the gateway still serves a real call after it
(keys the PIN as RFC 4733 digits into the voice engine, joins the room's conference, hangs up); both kinds of
gateway call share DIALBRIDGE_GATEWAY_MAX_CALLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dialbridge.credentials import VoiceCredentials
from dialbridge.gateway.phone import MAX_NEGOTIATING
from tests.engine.stack import VoiceStack, voice_stack
from tests.gateway.fake_browser import FakeBrowser, needs_loopback_only, run, until
from tests.helpers import wait_until
from tests.served import phone_headers, room_config

pytestmark = [needs_loopback_only, pytest.mark.timeout(120)]
FLOOD = 40


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def gateway_request(
    stack: VoiceStack, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body or {}, headers) of a signed request to the gateway's control API."""
    credentials = VoiceCredentials.load_or_create(stack.voice_dir)
    request = urllib.request.Request(
        f"https://127.0.0.1:{stack.gateway_api_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {credentials.app_token()}"},
        method=method,
    )
    context = ssl.create_default_context(cafile=str(credentials.ca_bundle_path))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            raw, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read(), error.code, error.headers
    return status, json.loads(raw) if raw else {}, {name.lower(): value for name, value in headers.items()}


def gateway_health(stack: VoiceStack) -> dict[str, Any]:
    found: dict[str, Any] = stack.get("/healthz")["gateway"]
    return found


def engine_calls(stack: VoiceStack) -> int:
    return int(stack.get("/healthz")["voice_engine"]["calls"])


async def eventually(condition: Callable[[], bool], seconds: float) -> None:
    """Poll a blocking `condition` off the loop (the stand-in browser's peer lives on it), gently."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 - the state is in other processes
            await asyncio.sleep(0.2)


async def an_offer() -> str:
    """A real browser-shaped offer (audio + `dtmf` channel, candidates gathered); the browser itself goes away."""
    browser = FakeBrowser()
    offer = await browser.offer()
    await browser.close()
    return offer


def test_a_flood_of_offers_is_bounded_refused_cleanly_and_a_real_call_still_keys_the_pin(stack: VoiceStack) -> None:
    offer = run(an_offer())

    with ThreadPoolExecutor(max_workers=FLOOD) as pool:
        answers = list(
            pool.map(lambda _: gateway_request(stack, "POST", "/v1/browser-calls", {"sdp": offer}), range(FLOOD))
        )

    accepted = [body["call_id"] for status, body, _ in answers if status == 201]
    refused = [(status, body, headers) for status, body, headers in answers if status != 201]
    assert 1 <= len(accepted) <= MAX_NEGOTIATING, [status for status, _, _ in answers]
    assert len(refused) >= FLOOD - MAX_NEGOTIATING
    for status, body, headers in refused:
        assert status == 503 and body["code"] == 503, body
        assert "still connecting" in body["message"], body
        assert int(headers["retry-after"]) > 0
    health = gateway_health(stack)
    assert health["browser_phones"] == len(accepted) and health["browser_phones_negotiating"] == len(accepted)
    assert engine_calls(stack) == 0  # no browser connected: no SIP leg was placed

    for call_id in accepted:
        assert gateway_request(stack, "DELETE", f"/v1/browser-calls/{call_id}")[0] == 204
    assert gateway_request(stack, "DELETE", f"/v1/browser-calls/{accepted[0]}")[0] == 404
    wait_until(lambda: gateway_health(stack)["peers"] == 0, 10, "the flood's peers to close", every=0.1)
    assert gateway_health(stack)["calls"] == 0

    # A real call still goes through: offered through the app's /api/phone/calls, as the page does.
    room_id, pin = stack.new_room_keying_a_digit_twice("after-flood")
    config = room_config(stack.base, room_id)

    async def call() -> None:
        browser = FakeBrowser()
        headers = await asyncio.to_thread(phone_headers, stack.base)  # as the page sends them: its token
        answer = await asyncio.to_thread(stack.post, "/api/phone/calls", {"sdp": await browser.offer()}, headers)
        await browser.accept(answer["sdp"])
        await browser.wait_connected()
        await eventually(lambda: engine_calls(stack) == 1, 10)
        await asyncio.sleep(1.0)  # the PIN prompt starts; keyed digits barge in
        for digit in pin + "#":
            browser.channel.send(digit)
            await asyncio.sleep(0.15)
        await eventually(lambda: phone_in_conference(stack, config) is not None, 15)
        # Hung up from the room: the engine ends the SIP call, and the gateway closes the browser's peer for it.
        call_id = phone_in_conference(stack, config)
        await asyncio.to_thread(stack.room_api, config, "hang-up", {"call_id": call_id})
        await until(lambda: browser.peer.connectionState == "closed", 10)
        assert engine_calls(stack) == 0
        await browser.close()

    run(call(), timeout=60)
    wait_until(lambda: gateway_health(stack)["peers"] == 0, 10, "the call's peer to close", every=0.1)


def phone_in_conference(stack: VoiceStack, config: dict[str, Any]) -> str | None:
    """The call id of the room's phone participant in its conference, if there is one."""
    listed = stack.room_api(config, "participants")["participants"]
    found = [p["call_id"] for p in listed if p["kind"] == "phone" and p["state"] == "in_conference"]
    return found[0] if found else None


def test_browser_phones_and_room_dials_share_the_gateways_max_calls(tmp_path: Path) -> None:
    with voice_stack(tmp_path, DIALBRIDGE_GATEWAY_MAX_CALLS="2") as stack:
        offer = run(an_offer())
        first = gateway_request(stack, "POST", "/v1/browser-calls", {"sdp": offer})
        second = gateway_request(stack, "POST", "/v1/browser-calls", {"sdp": offer})
        assert (first[0], second[0]) == (201, 201)

        status, body, headers = gateway_request(stack, "POST", "/v1/browser-calls", {"sdp": offer})
        assert (status, body["code"]) == (429, 429) and "DIALBRIDGE_GATEWAY_MAX_CALLS" in body["message"], body
        assert int(headers["retry-after"]) > 0
        config = room_config(stack.base, "full")
        credentials = VoiceCredentials.load_or_create(stack.voice_dir)
        dial = {"sessionId": config["sessionId"], "token": config["token"], "sip": {"uri": "sip:dialin@127.0.0.1"}}
        status, body, _ = gateway_request(stack, "POST", f"/v2/project/{credentials.application_id}/dial", dial)
        assert status == 429, body  # a room bridge finds the gateway as full as the browser phones left it

        # Through the app, the page is told there is no line free, and when to try again.
        request = urllib.request.Request(
            f"{stack.base}/api/phone/calls", data=json.dumps({"sdp": offer}).encode(), headers=phone_headers(stack.base)
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 503 and int(refused.value.headers["retry-after"]) > 0
        assert "DIALBRIDGE_GATEWAY_MAX_CALLS" in json.loads(refused.value.read())["error"]["message"]

        for call_id in (first[1]["call_id"], second[1]["call_id"]):
            assert gateway_request(stack, "DELETE", f"/v1/browser-calls/{call_id}")[0] == 204
        status, body, _ = gateway_request(stack, "POST", "/v1/browser-calls", {"sdp": "v=0\r\n"})
        assert status == 400 and "no audio" in body["message"], body
        wait_until(lambda: gateway_health(stack)["peers"] == 0, 10, "the peers to close", every=0.1)
