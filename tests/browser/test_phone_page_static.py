"""The /phone page's JavaScript in Chromium, calling a real `BrowserPhonePeer` behind a tiny server of this test's own.

The server renders the page's template and static files, answers the offer with the gateway's `BrowserPhonePeer` and
ticks it every 20 ms like the gateway does, so the page is proven against the real peer without a SIP leg behind it.
Run inside a network namespace holding only `lo` (scripts/run-tests does).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ifaddr
import jinja2
import numpy as np
import orjson
import pytest
import uvicorn
import uvloop
from playwright.sync_api import Browser, BrowserContext, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import dialbridge.web
from dialbridge.gateway.phone import BrowserPhonePeer
from dialbridge.gateway.webrtc import FRAME_SAMPLES, SAMPLE_RATE


def _only_loopback() -> bool:
    return all(
        (ip.ip == "127.0.0.1") if isinstance(ip.ip, str) else ip.ip[0] == "::1"
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
    )


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not _only_loopback(),
        reason="WebRTC would use this host's interfaces: run inside `unshare -n` with only lo up (scripts/run-tests)",
    ),
]

WAIT_MS = 20_000
WEB = Path(dialbridge.web.__file__).parent
TONE_HZ = 1000.0

# Listens to the remote stream for a second through the page's own AudioContext (made in the Call click, so running).
REMOTE_PEAK = """async () => {
  const phone = window.dialbridgePhone;
  const context = phone.audioContext;
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  analyser.smoothingTimeConstant = 0;
  context.createMediaStreamSource(phone.remoteStream).connect(analyser);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  let peak = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
  const sorted = Array.from(bins).sort((a, b) => a - b);
  return { hz: peak * context.sampleRate / analyser.fftSize, db: bins[peak], medianDb: sorted[sorted.length >> 1],
           binHz: context.sampleRate / analyser.fftSize };
}"""


@dataclass
class PhoneServer:
    """What the page's calls did on the server side; lists are appended on the server's thread."""

    base_url: str = ""
    legs: dict[str, BrowserPhonePeer] = field(default_factory=dict)
    digits: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    heard: list[np.ndarray] = field(default_factory=list)  # what each tick's take_mix() gave the gateway
    refuse_offers: bool = False


def phone_app(server: PhoneServer) -> Starlette:
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(WEB / "templates"), autoescape=True)

    async def page(request: Request) -> Response:
        config = {
            "offerUrl": "/phone/offer",
            "hangupUrl": "/phone/hangup",
            "sipAddress": "sip:dialin@127.0.0.1:5060",
            "dialInNumber": "+14155550100",
        }
        html = templates.get_template("phone.html").render(config_json=orjson.dumps(config).decode())
        return HTMLResponse(html)

    async def offer(request: Request) -> Response:
        if server.refuse_offers:
            return JSONResponse({"error": {"message": "no free lines"}}, status_code=503)
        body = await request.json()
        call_id = uuid.uuid4().hex
        leg = BrowserPhonePeer(on_digit=server.digits.append, on_closed=lambda: server.closed.append(call_id))
        answer = await leg.answer(body["sdp"])
        server.legs[call_id] = leg
        return JSONResponse({"call_id": call_id, "sdp": answer})

    async def hangup(request: Request) -> Response:
        server.hangups.append((await request.json())["call_id"])
        return JSONResponse({})

    return Starlette(
        routes=[
            Route("/phone", page),
            Route("/phone/offer", offer, methods=["POST"]),
            Route("/phone/hangup", hangup, methods=["POST"]),
            Mount("/static", StaticFiles(directory=WEB / "static")),
        ]
    )


async def gateway_clock(server: PhoneServer) -> None:
    """The gateway's 20 ms tick for every peer: a continuous 1000 Hz tone out, whatever the browser says in."""
    start = time.monotonic()
    number = 0
    while True:
        frame = (
            8000 * np.sin(2 * math.pi * TONE_HZ * (np.arange(FRAME_SAMPLES) + number * FRAME_SAMPLES) / SAMPLE_RATE)
        ).astype(np.int16)
        for leg in list(server.legs.values()):
            if not leg.closed:
                leg.hear(frame)
                said = leg.take_mix()
                if said is not None:
                    server.heard.append(said)
        number += 1
        await asyncio.sleep(max(0.0, start + number * 0.020 - time.monotonic()))


@pytest.fixture
def phone_server() -> Iterator[PhoneServer]:
    server_state = PhoneServer()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    server_state.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(phone_app(server_state), log_level="warning", lifespan="off"))

    async def serve() -> None:
        clock = asyncio.get_running_loop().create_task(gateway_clock(server_state))
        try:
            await server.serve(sockets=[listener])
        finally:
            clock.cancel()
            for leg in server_state.legs.values():
                await leg.leave()

    def run_on_uvloop() -> None:  # the gateway's loop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve())

    thread = threading.Thread(target=run_on_uvloop, name="phone-server", daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        thread.join(0.05)
    assert server.started, "the phone test server did not start"
    try:
        yield server_state
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.fixture
def page_errors() -> list[str]:
    return []


def open_phone(context: BrowserContext, server: PhoneServer, page_errors: list[str]) -> Page:
    page = context.new_page()
    page.on("console", lambda message: print(f"[phone] {message.type}: {message.text}"))
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(f"{server.base_url}/phone")
    return page


def wait_until(condition: Callable[[], bool], seconds: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def state(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(
        "() => ({ text: document.getElementById('call-state').textContent,"
        " data: document.getElementById('call-state').dataset.state,"
        " error: document.getElementById('call-error').textContent, js: window.dialbridgePhone.state })"
    )
    return found


def test_a_call_from_the_page_connects_sends_digits_hears_the_engine_and_hangs_up(
    context: BrowserContext, phone_server: PhoneServer, page_errors: list[str]
) -> None:
    page = open_phone(context, phone_server, page_errors)
    assert state(page) == {"text": "idle", "data": "idle", "error": "", "js": "idle"}
    assert page.text_content("#dial-in-number") == "+14155550100"
    assert page.text_content("#sip-address") == "sip:dialin@127.0.0.1:5060"
    assert page.is_disabled("#hangup")

    page.click("#call")
    page.wait_for_function("() => window.dialbridgePhone.state === 'in call'", timeout=WAIT_MS)
    assert state(page) == {"text": "in call", "data": "in call", "error": "", "js": "in call"}
    assert page.is_disabled("#call") and page.is_enabled("#hangup")
    assert len(phone_server.legs) == 1

    page.click("#key-1")
    page.click("#key-2")
    page.click("#key-hash")
    wait_until(lambda: len(phone_server.digits) >= 3)
    page.keyboard.press("7")  # the physical keyboard dials too
    wait_until(lambda: len(phone_server.digits) >= 4)
    time.sleep(0.2)
    assert phone_server.digits == ["1", "2", "#", "7"]
    assert page.text_content("#keyed") == "12#7"

    page.wait_for_function("() => window.dialbridgePhone.remoteStream !== null", timeout=WAIT_MS)
    heard = page.evaluate(REMOTE_PEAK)
    assert abs(heard["hz"] - TONE_HZ) <= 2 * heard["binHz"], heard
    assert heard["db"] > -50 and heard["db"] - heard["medianDb"] > 30, heard

    # Chromium's fake microphone beeps: some of it reached the gateway's tick through the peer.
    assert max(float(np.abs(frame.astype(np.int32)).max()) for frame in phone_server.heard) > 1000

    page.click("#hangup")
    page.wait_for_function("() => window.dialbridgePhone.state === 'ended'", timeout=WAIT_MS)
    call_id = next(iter(phone_server.legs))
    wait_until(lambda: phone_server.closed == [call_id] and phone_server.hangups == [call_id])
    assert state(page) == {"text": "ended", "data": "ended", "error": "", "js": "ended"}
    assert phone_server.legs[call_id].end_reason == "the browser hung up"
    assert page.is_enabled("#call") and page.is_disabled("#hangup")
    assert page_errors == []


def test_a_refused_offer_ends_the_call_and_says_what_failed(
    context: BrowserContext, phone_server: PhoneServer, page_errors: list[str]
) -> None:
    phone_server.refuse_offers = True
    page = open_phone(context, phone_server, page_errors)
    page.click("#call")
    page.wait_for_function("() => window.dialbridgePhone.state === 'ended'", timeout=WAIT_MS)
    found = state(page)
    assert found["data"] == "ended"
    assert found["error"] == "Server refused the call (HTTP 503): no free lines"
    assert page.is_enabled("#call")
    assert page_errors == []


def test_a_blocked_microphone_is_named(chromium: Browser, phone_server: PhoneServer) -> None:
    blocked = chromium.new_context()
    try:
        page = blocked.new_page()
        page.add_init_script(
            "navigator.mediaDevices.getUserMedia = () =>"
            " Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"
        )
        page.goto(f"{phone_server.base_url}/phone")
        page.click("#call")
        page.wait_for_function("() => window.dialbridgePhone.state === 'ended'", timeout=WAIT_MS)
        assert state(page)["error"].startswith("Microphone blocked")
        assert phone_server.legs == {}
    finally:
        blocked.close()
