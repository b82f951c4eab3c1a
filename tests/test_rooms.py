"""Rooms over HTTP: the page, the JSON API, and exactly-once creation under concurrent first visits."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from fastapi.testclient import TestClient

from dialbridge.config import Settings
from dialbridge.platforms.base import BrowserConfig, PlatformError, SipCall, SipDial
from dialbridge.platforms.embedded import EmbeddedVideo
from dialbridge.rooms import LEASE_S
from dialbridge.store import tables as t
from dialbridge.store.dial_outs import CONFERENCE
from dialbridge.web.app import create_app
from tests.conftest import FakeClock, on_both_databases
from tests.helpers import bearer, make_room, run_async, visit


class CountingVideo:
    """The real embedded platform, slowed down and counted, to make concurrent first visits overlap."""

    name = "embedded"
    supports_sip = False

    def __init__(self, fail: bool = False) -> None:
        self.inner = EmbeddedVideo(hub=None)  # type: ignore[arg-type]
        self.sessions_created = 0
        self.fail = fail

    async def create_session(self) -> str:
        self.sessions_created += 1
        await asyncio.sleep(0.05)
        if self.fail:
            raise PlatformError("creating a video session at the platform", "503 Service Unavailable")
        return await self.inner.create_session()

    def browser_config(self, *, session_id: str, room_id: str, participant_token: str, now: float) -> BrowserConfig:
        return self.inner.browser_config(
            session_id=session_id, room_id=room_id, participant_token=participant_token, now=now
        )

    async def dial_sip(self, session_id: str, room_id: str, dial: SipDial, now: float) -> SipCall:
        return await self.inner.dial_sip(session_id, room_id, dial, now)

    async def disconnect(self, session_id: str, connection_id: str) -> None:
        return None


def test_room_page_shows_the_dial_in_number_and_pin(client: TestClient) -> None:
    response = client.get("/room/standup")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    room = client.get("/api/rooms/standup").json()
    assert re.fullmatch(r"[0-9]{6}", room["pin"])
    assert f'<strong id="pin">{room["pin"]}</strong>' in response.text
    assert '<strong id="dial-in-number">+14155550100</strong>' in response.text
    assert room["session_id"] in response.text  # in the page's config for OT.initSession


def test_later_visits_reuse_the_session_and_pin(client: TestClient) -> None:
    client.get("/room/standup")
    first = client.get("/api/rooms/standup").json()
    client.get("/room/standup")
    assert client.get("/api/rooms/standup").json() == first


@pytest.mark.parametrize("room_id", ["a" * 65, "has space", "semi;colon", "dots.dots", "ünïcode", "x%2Fy"])
def test_bad_room_ids_are_refused_with_400(client: TestClient, room_id: str) -> None:
    response = client.get(f"/room/{room_id}")
    assert response.status_code in (400, 404)  # a slash makes it another path altogether
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_room_id"
    assert client.get(f"/api/rooms/{room_id}").status_code in (400, 404)


def test_longest_valid_room_id_is_accepted(client: TestClient) -> None:
    assert client.get("/room/" + "A_-9" * 16).status_code == 200


def test_api_room_lifecycle(client: TestClient) -> None:
    missing = client.get("/api/rooms/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "room_not_found"
    created = client.post("/api/rooms", json={})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"room_id", "session_id", "pin", "dial_in_number"}
    assert client.get(f"/api/rooms/{body['room_id']}").json() == body
    named = make_room(client, "weekly")
    assert named["room_id"] == "weekly" and named["dial_in_number"] == "+14155550100"
    again = client.post("/api/rooms", json={"room_id": "weekly"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "room_exists"
    assert client.post("/api/rooms").status_code == 201  # no body at all: a random id


@pytest.mark.parametrize("body", [{"room_id": "bad id"}, {"room_id": ""}, {"room": "x"}, {"room_id": 5}])
def test_api_refuses_bad_room_bodies(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/api/rooms", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"


def test_every_room_has_its_own_pin(client: TestClient) -> None:
    pins = [make_room(client, f"r{n}")["pin"] for n in range(200)]
    assert len(set(pins)) == 200


@on_both_databases
def test_twenty_concurrent_first_visits_create_one_session_and_one_pin(settings: Settings, clock: FakeClock) -> None:
    video = CountingVideo()
    # Two app instances on one database file: the second has its own in-process locks, so only the database
    # lease keeps them from both creating the room.
    apps = [create_app(settings, clock=clock, platform=video), create_app(settings, clock=clock, platform=video)]

    async def visit_all() -> list[httpx.Response]:
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") for app in apps]
        try:
            return await asyncio.gather(*(clients[n % 2].get("/room/fresh") for n in range(20)))
        finally:
            for c in clients:
                await c.aclose()

    responses = run_async(visit_all())
    assert [r.status_code for r in responses] == [200] * 20
    assert video.sessions_created == 1
    store = apps[0].state.services.store
    with store.engine.connect() as conn:
        rows = conn.execute(t.rooms.select()).all()
    assert len(rows) == 1
    pins = {re.search(r'id="pin">([0-9]+)<', r.text).group(1) for r in responses}  # type: ignore[union-attr]
    assert pins == {rows[0].pin}


def test_failed_session_creation_answers_502_and_leaves_nothing(settings: Settings, clock: FakeClock) -> None:
    failing = CountingVideo(fail=True)
    with TestClient(create_app(settings, clock=clock, platform=failing)) as client:
        response = client.get("/room/doomed")
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "platform_error" and "creating a video session" in error["message"]
        assert client.get("/api/rooms/doomed").status_code == 404
        assert client.post("/api/rooms", json={"room_id": "doomed"}).status_code == 502
    working = CountingVideo()
    with TestClient(create_app(settings, clock=clock, platform=working)) as client:
        assert client.get("/room/doomed").status_code == 200
        assert working.sessions_created == 1


@on_both_databases
def test_a_creator_that_died_is_taken_over_after_its_lease(settings: Settings, clock: FakeClock) -> None:
    video = CountingVideo()
    app = create_app(settings, clock=clock, platform=video)
    store = app.state.services.store
    # A previous process claimed the room and died before creating its session.
    assert run_async(store.claim_room("orphan", "123456", clock(), clock() + LEASE_S))
    clock.advance(LEASE_S + 1)
    with TestClient(app) as client:
        assert client.get("/room/orphan").status_code == 200
        room = client.get("/api/rooms/orphan").json()
    assert room["pin"] == "123456" and video.sessions_created == 1


class SteppingClock:
    """Time that moves on by `step` seconds each time it is read: a wait of a minute passes at once."""

    def __init__(self, start: float, step: float) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_room_another_server_is_still_creating_answers_503_with_retry_after(settings: Settings) -> None:
    """Nothing failed (not the 502 of a platform error): the room is not ready yet, and a retry will find it."""
    clock = SteppingClock(1_800_000_000.0, step=1.0)
    video = CountingVideo()
    app = create_app(settings, clock=clock, platform=video)
    store = app.state.services.store
    # Another server claimed the room and is still at it: its lease runs well past this request's patience.
    assert run_async(store.claim_room("busy", "123456", clock(), clock() + 100 * LEASE_S))
    with TestClient(app) as client:
        for response in (client.get("/room/busy"), client.post("/api/rooms", json={"room_id": "busy"})):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "room_being_created"
            assert "still being created by another server; try again in 30 s" in error["message"]
            assert response.headers["retry-after"] == "30"
    assert video.sessions_created == 0


def test_the_room_phone_bridge_is_named_to_its_members_only(client: TestClient, clock: FakeClock) -> None:
    """`GET /api/rooms/{id}/phone-bridge`: the open conference dial-out's id, so that a page which did not dial it can
    hang it up; null when there is none; a token of another room or none learns nothing."""
    config = visit(client, "bridged")
    other = visit(client, "elsewhere")
    assert config["sipAddress"] == "sip:dialin@127.0.0.1:5060"  # the invite panel's
    path = "/api/rooms/bridged/phone-bridge"
    assert client.get(path, headers=bearer(config)).json() == {"bridge": None}
    services = client.app.state.services  # type: ignore[attr-defined]
    services.dial_outs.store.start(dial_out_id="do_x", room_id="bridged", kind=CONFERENCE, target="t", now=clock())
    assert client.get(path, headers=bearer(config)).json() == {"bridge": {"call_id": "do_x", "state": "dialling"}}
    refused = client.get(path, headers=bearer(other))
    assert refused.status_code == 401 and "do_x" not in refused.text, refused.text
    assert client.get(path).status_code == 401
    assert client.get("/api/rooms/nowhere/phone-bridge", headers=bearer(config)).status_code == 404
