"""The participants API and controls on the embedded backend, in-process: browsers from the signalling hub, phones
from the webhooks' call records, the room's signalling sockets hearing every change as a `sessionSignal`.

Call control here is a recording stand-in for the voice engine's API (tests/engine/test_roster_live.py drives the
real engine with SIPp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from dialbridge.config import Settings
from dialbridge.tokens import Role
from dialbridge.web.app import create_app
from tests.conftest import FakeClock
from tests.helpers import RecordingControl, bearer, join_by_pin, visit

pytestmark = pytest.mark.timeout(30)  # a signal that never comes fails here, not after the suite default

CALLER = "+447700900123"
MASKED = "+44 ••• ••• 0123"
CALLER_FROM = CALLER.removeprefix("+")  # as the webhooks send it


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> Iterator[tuple[TestClient, RecordingControl]]:
    with TestClient(create_app(settings, clock=clock)) as client:
        control = RecordingControl()
        client.app.state.services.roster.voice = control  # type: ignore[attr-defined]
        yield client, control


def open_room_socket(client: TestClient, config: dict[str, Any]) -> Any:
    return client.websocket_connect(
        f"/rt/signalling?sessionId={config['sessionId']}",
        subprotocols=["dialbridge.signalling.v1", f"bearer.{config['participantToken']}"],
    )


def next_participant_signal(socket: WebSocketTestSession) -> dict[str, Any]:
    """The next `participants` signal the socket hears (other messages skipped; the socket's own timeout bounds it)."""
    for _ in range(20):
        message = socket.receive_json()
        if message["type"] == "sessionSignal" and message["signalType"] == "participants":
            assert message["from"] is None
            found: dict[str, Any] = json.loads(message["data"])["participant"]
            return found
    raise AssertionError("no participants signal among the next 20 messages")


def test_a_browser_hears_a_caller_arrive_get_muted_and_leave(app: tuple[TestClient, RecordingControl]) -> None:
    client, control = app
    config = visit(client, "standup")
    with open_room_socket(client, config) as browser:
        assert browser.receive_json()["type"] == "connected"
        listed = client.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
        assert [p["kind"] for p in listed] == ["browser"]

        ncco = join_by_pin(client, config, "call-1", CALLER_FROM)
        # A browser is in the room: the caller is not told they are the first.
        assert not any(action.get("text") == "You are the first participant." for action in ncco)
        arrived = next_participant_signal(browser)
        assert arrived["call_id"] == "call-1" and arrived["state"] == "in_conference" and arrived["number"] == MASKED

        listed = client.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
        assert [p["kind"] for p in listed] == ["browser", "phone"]
        assert listed[1]["number"] == MASKED and "447700900123" not in json.dumps(listed)

        muted = client.post(
            "/api/rooms/standup/mute", json={"call_id": "call-1", "muted": True}, headers=bearer(config)
        )
        assert muted.status_code == 200 and muted.json()["muted"] is True
        assert control.requests == [("mute", "call-1", None)]
        assert next_participant_signal(browser)["muted"] is True

        assert client.post("/webhooks/events", json={"uuid": "call-1", "status": "completed"}).status_code == 204
        left = next_participant_signal(browser)
        assert left["call_id"] == "call-1" and left["state"] == "ended"
    assert client.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"] == []


def test_status_codes_and_a_foreign_rooms_call_is_404_with_nothing_sent(
    app: tuple[TestClient, RecordingControl], clock: FakeClock
) -> None:
    client, control = app
    mine, other = visit(client, "standup"), visit(client, "other")
    join_by_pin(client, mine, "call-mine", CALLER_FROM)
    join_by_pin(client, other, "call-other", CALLER_FROM)
    services = client.app.state.services  # type: ignore[attr-defined]
    room = services.store.room("standup")
    viewer = services.tokens.issue(session_id=room.session_id, room_id="standup", now=clock(), role=Role.SUBSCRIBER)
    as_viewer = {"Authorization": f"Bearer {viewer}"}

    assert client.get("/api/rooms/standup/participants").status_code == 401
    assert client.get("/api/rooms/standup/participants", headers=as_viewer).status_code == 200
    assert client.post("/api/rooms/standup/mute", json={"call_id": "call-mine", "muted": True}).status_code == 401
    for path, body in (("mute", {"call_id": "call-mine", "muted": True}), ("hang-up", {"call_id": "call-mine"})):
        refused = client.post(f"/api/rooms/standup/{path}", json=body, headers=as_viewer)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_not_allowed"
    for path, body in (("mute", {"call_id": "call-other", "muted": True}), ("hang-up", {"call_id": "call-other"})):
        response = client.post(f"/api/rooms/standup/{path}", json=body, headers=bearer(mine))
        assert response.status_code == 404 and response.json()["error"]["code"] == "call_not_found"
    assert control.requests == []  # nothing reached the voice engine
    bad = client.post("/api/rooms/standup/mute", json={"call_id": "call-mine"}, headers=bearer(mine))
    assert bad.status_code == 422  # `muted` is required

    hung_up = client.post("/api/rooms/standup/hang-up", json={"call_id": "call-mine"}, headers=bearer(mine))
    assert hung_up.status_code == 200 and hung_up.json()["state"] == "ended"
    assert control.requests == [("hangup", "call-mine", None)]
    control.gone.add("call-mine")  # the engine has ended it; the completed event has not arrived yet
    again = client.post("/api/rooms/standup/hang-up", json={"call_id": "call-mine"}, headers=bearer(mine))
    assert again.status_code == 409 and again.json()["error"]["code"] == "call_not_live"
    client.post("/webhooks/events", json={"uuid": "call-mine", "status": "completed"})
    after = client.post("/api/rooms/standup/mute", json={"call_id": "call-mine", "muted": False}, headers=bearer(mine))
    assert after.status_code == 409


def test_star_one_counts_browsers_and_phones(app: tuple[TestClient, RecordingControl]) -> None:
    client, control = app
    config = visit(client, "standup")
    with open_room_socket(client, config) as browser:
        assert browser.receive_json()["type"] == "connected"
        join_by_pin(client, config, "call-1", CALLER_FROM)
        for digit in "*1":
            client.post("/webhooks/keypad", json={"uuid": "call-1", "dtmf": {"digits": digit, "timed_out": False}})
        assert control.requests == [("talk", "call-1", "There are 2 participants in the room.")]


def test_the_engines_speaking_report_reaches_the_list_and_the_rooms_browsers(
    app: tuple[TestClient, RecordingControl],
) -> None:
    client, _ = app
    config = visit(client, "standup")
    join_by_pin(client, config, "call-1", CALLER_FROM)
    join_by_pin(client, config, "call-2", "14155550123")
    listed = client.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
    assert [p["speaking"] for p in listed] == [False, False]  # the embedded engine reports it: known, quiet
    conversation = config["sessionId"]  # the call flow names the conversation after the room's session
    with open_room_socket(client, config) as browser:
        assert browser.receive_json()["type"] == "connected"
        report = {"conversation": conversation, "speaking": ["call-1"], "timestamp": "2026-12-07T21:00:00.000Z"}
        assert client.post("/webhooks/speaking", json=report).status_code == 204
        started = next_participant_signal(browser)
        assert (started["call_id"], started["speaking"]) == ("call-1", True)
        listed = client.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
        assert {p["id"]: p["speaking"] for p in listed if p["kind"] == "phone"} == {"call-1": True, "call-2": False}

        # The next report names who speaks now: call-1 stopped, call-2 started; one signal each.
        report = {"conversation": conversation, "speaking": ["call-2"]}
        assert client.post("/webhooks/speaking", json=report).status_code == 204
        changed = {s["call_id"]: s["speaking"] for s in (next_participant_signal(browser) for _ in range(2))}
        assert changed == {"call-1": False, "call-2": True}

    for bad in ({"conversation": conversation}, {"conversation": conversation, "speaking": "call-1"},
                {"speaking": []}, {"conversation": conversation, "speaking": [1]}):  # fmt: skip
        refused = client.post("/webhooks/speaking", json=bad)
        assert refused.status_code == 422 and refused.json()["error"]["code"], bad
