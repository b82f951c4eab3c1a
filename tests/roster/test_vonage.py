"""Phone participants on the Vonage backend, against the local TLS stub of Vonage's REST API: the participants API,
signals to the room's session after the event webhooks, mute and hang-up through the Voice API, keypad commands."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dialbridge.tokens import Role
from tests.conftest import FakeClock
from tests.helpers import bearer, join_by_pin, visit, wait_until
from tests.test_vonage_backend import APPLICATION_ID
from tests.vonage_stub import VonageStub

CALLER = "14155550123"  # as Vonage sends it, without the +
MASKED = "+1 ••• ••• 0123"


def signals(stub: VonageStub, session_id: str) -> list[dict[str, Any]]:
    found = stub.received("POST", f"/v2/project/{APPLICATION_ID}/session/{session_id}/signal")
    return [json.loads(request.body) for request in found]


def participant_signals(stub: VonageStub, session_id: str, call_id: str) -> list[dict[str, Any]]:
    sent = [json.loads(s["data"])["participant"] for s in signals(stub, session_id) if s["type"] == "participants"]
    return [p for p in sent if p["call_id"] == call_id]


def calls_put(stub: VonageStub, uuid: str) -> list[Any]:
    return [json.loads(r.body) for r in stub.received("PUT", f"/v1/calls/{uuid}") if r.path == f"/v1/calls/{uuid}"]


def test_a_caller_joining_leaving_is_signalled_to_the_rooms_session_masked(
    vonage: TestClient, stub: VonageStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = visit(vonage, "standup")
    session = config["sessionId"]

    ncco = join_by_pin(vonage, config, "call-a", CALLER)

    # The room was empty: the caller hears so; keypad digits go to the keypad webhook while in the conversation.
    assert {"action": "talk", "text": "You are the first participant.", "bargeIn": False, "language": "en-US"} in ncco
    keypad = next(action for action in ncco if action["action"] == "input")
    assert keypad["mode"] == "asynchronous" and keypad["eventUrl"][0].endswith("/webhooks/keypad")
    wait_until(lambda: bool(participant_signals(stub, session, "call-a")), 5, "a signal of the caller joining")
    [joined] = participant_signals(stub, session, "call-a")
    assert joined["state"] == "in_conference" and joined["number"] == MASKED and joined["kind"] == "phone"

    listed = vonage.get("/api/rooms/standup/participants", headers=bearer(config))
    assert listed.status_code == 200
    [phone] = listed.json()["participants"]  # Vonage: the page knows its browsers from session events
    assert phone["call_id"] == "call-a" and phone["number"] == MASKED and phone["muted"] is False
    assert phone["speaking"] is None

    assert vonage.post("/webhooks/events", json={"uuid": "call-a", "status": "completed"}).status_code == 204
    wait_until(lambda: len(participant_signals(stub, session, "call-a")) == 2, 5, "a signal of the caller leaving")
    assert participant_signals(stub, session, "call-a")[-1]["state"] == "ended"
    assert vonage.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"] == []

    for request in stub.received("POST", "/v2/"):
        assert "4155550123" not in request.body.decode()  # never in a signal
    server_log = [r.getMessage() for r in caplog.records if r.name.startswith("dialbridge")]
    assert not any("4155550123" in line for line in server_log)  # nor in the server's log


def test_a_second_caller_does_not_hear_first_participant(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    join_by_pin(vonage, config, "call-a", CALLER)
    ncco = join_by_pin(vonage, config, "call-b", "447700900123")
    assert not any(action.get("text") == "You are the first participant." for action in ncco)


def test_mute_and_hang_up_reach_the_voice_api_and_show_in_the_list(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    session = config["sessionId"]
    join_by_pin(vonage, config, "call-a", CALLER)

    muted = vonage.post("/api/rooms/standup/mute", json={"call_id": "call-a", "muted": True}, headers=bearer(config))
    assert muted.status_code == 200, muted.text
    assert muted.json()["muted"] is True
    assert calls_put(stub, "call-a") == [{"action": "mute"}]
    [phone] = vonage.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
    assert phone["muted"] is True
    wait_until(lambda: any(p["muted"] for p in participant_signals(stub, session, "call-a")), 5, "a signal of the mute")
    unmuted = vonage.post("/api/rooms/standup/mute", json={"call_id": "call-a", "muted": False}, headers=bearer(config))
    assert unmuted.json()["muted"] is False and calls_put(stub, "call-a")[-1] == {"action": "unmute"}

    ended = vonage.post("/api/rooms/standup/hang-up", json={"call_id": "call-a"}, headers=bearer(config))
    assert ended.status_code == 200, ended.text
    assert calls_put(stub, "call-a")[-1] == {"action": "hangup"}
    wait_until(
        lambda: participant_signals(stub, session, "call-a")[-1]["state"] == "ended", 5, "a signal of the hang-up"
    )
    vonage.post("/webhooks/events", json={"uuid": "call-a", "status": "completed"})
    again = vonage.post("/api/rooms/standup/hang-up", json={"call_id": "call-a"}, headers=bearer(config))
    assert again.status_code == 409 and again.json()["error"]["code"] == "call_not_live"


def test_controls_status_codes_and_a_foreign_rooms_call_is_404_with_nothing_sent(
    vonage: TestClient, stub: VonageStub, clock: FakeClock
) -> None:
    standup = visit(vonage, "standup")
    other = visit(vonage, "other")
    join_by_pin(vonage, other, "call-other", CALLER)
    join_by_pin(vonage, standup, "call-mine", CALLER)
    services = vonage.app.state.services  # type: ignore[attr-defined]
    room = services.store.room("standup")
    viewer = services.tokens.issue(session_id=room.session_id, room_id="standup", now=clock(), role=Role.SUBSCRIBER)
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    mute_body = {"call_id": "call-mine", "muted": True}

    assert vonage.post("/api/rooms/standup/mute", json=mute_body).status_code == 401
    assert vonage.get("/api/rooms/standup/participants").status_code == 401
    assert vonage.post("/api/rooms/standup/mute", json=mute_body, headers=as_viewer).status_code == 403
    assert (
        vonage.post("/api/rooms/standup/hang-up", json={"call_id": "call-mine"}, headers=as_viewer).status_code == 403
    )
    assert vonage.get("/api/rooms/standup/participants", headers=as_viewer).status_code == 200  # any role may look
    # another room's token for this room: refused
    assert vonage.post("/api/rooms/standup/mute", json=mute_body, headers=bearer(other)).status_code == 401
    assert vonage.get("/api/rooms/nowhere/participants", headers=bearer(standup)).status_code in (401, 404)
    for path, body in (
        ("mute", {"call_id": "call-other", "muted": True}),
        ("hang-up", {"call_id": "call-other"}),
        ("mute", {"call_id": "no-such-call", "muted": True}),
        ("hang-up", {"call_id": "no-such-call"}),
    ):
        response = vonage.post(f"/api/rooms/standup/{path}", json=body, headers=bearer(standup))
        assert response.status_code == 404, (path, body, response.text)
        assert response.json()["error"]["code"] == "call_not_found"
        assert "participants" in response.json()["error"]["message"]  # names where call ids come from
    assert stub.received("PUT") == []  # nothing reached the Voice API
    assert vonage.post("/api/rooms/standup/mute", json=mute_body, headers=bearer(standup)).status_code == 200
    assert len(stub.received("PUT")) == 1


def test_keypad_star_six_mutes_with_a_spoken_confirmation_and_star_one_counts(
    vonage: TestClient, stub: VonageStub
) -> None:
    config = visit(vonage, "standup")
    join_by_pin(vonage, config, "call-a", CALLER)
    join_by_pin(vonage, config, "call-b", "447700900123")

    def key(digit: str) -> None:
        body = {"uuid": "call-a", "dtmf": {"digits": digit, "timed_out": False}, "from": CALLER}
        assert vonage.post("/webhooks/keypad", json=body).status_code == 204

    key("6")  # not a command
    key("1")
    assert stub.received("PUT") == []
    key("*")
    key("6")
    assert calls_put(stub, "call-a") == [{"action": "mute"}]
    [talk] = [json.loads(r.body) for r in stub.received("PUT", "/v1/calls/call-a/talk")]
    assert talk["text"] == "You are muted."
    [me, _other] = vonage.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
    assert me["call_id"] == "call-a" and me["muted"] is True
    key("*")
    key("6")
    assert calls_put(stub, "call-a")[-1] == {"action": "unmute"}
    key("*")
    key("1")
    talks = [json.loads(r.body)["text"] for r in stub.received("PUT", "/v1/calls/call-a/talk")]
    assert talks[-1] == "There are 2 participants in the room."


def test_a_phone_dial_out_is_signalled_when_placed_and_when_ended(vonage: TestClient, stub: VonageStub) -> None:
    config = visit(vonage, "standup")
    session = config["sessionId"]
    placed = vonage.post("/api/rooms/standup/dial-out", json={"number": "+447700900123"}, headers=bearer(config))
    assert placed.status_code == 201, placed.text
    dial_out_id = placed.json()["call_id"]
    wait_until(lambda: bool(participant_signals(stub, session, dial_out_id)), 5, "a signal of the dial-out")
    [placed_signal] = participant_signals(stub, session, dial_out_id)
    assert placed_signal["number"] == "+44 ••• ••• 0123" and placed_signal["dial_out"] is True
    assert placed_signal["state"] == "answered"  # the dial-out is live (Vonage placed the SIP call)
    [listed] = vonage.get("/api/rooms/standup/participants", headers=bearer(config)).json()["participants"]
    assert listed["call_id"] == dial_out_id and listed["number"] == "+44 ••• ••• 0123"

    assert vonage.post("/api/rooms/standup/hang-up", json={"call_id": dial_out_id}, headers=bearer(config)).is_success
    wait_until(lambda: len(participant_signals(stub, session, dial_out_id)) == 2, 5, "a signal of its end")
    assert participant_signals(stub, session, dial_out_id)[-1]["state"] == "ended"
    assert stub.received("PUT") == []  # a dial-out ends by force-disconnect, as before


def test_the_legacy_opentok_account_signals_but_has_no_voice_api(legacy: TestClient, stub: VonageStub) -> None:
    config = visit(legacy, "standup")
    ncco = join_by_pin(legacy, config, "call-a", CALLER)
    assert not any(action["action"] == "input" for action in ncco)  # no keypad commands: nothing to act through
    project = config["apiKey"]

    def signalled() -> list[Any]:
        return stub.received("POST", f"/v2/project/{project}/session/{config['sessionId']}/signal")

    wait_until(lambda: bool(signalled()), 5, "the legacy SDK's signal")
    data = json.loads(json.loads(signalled()[0].body)["data"])
    assert data["participant"]["number"] == MASKED
    refused = legacy.post("/api/rooms/standup/mute", json={"call_id": "call-a", "muted": True}, headers=bearer(config))
    assert refused.status_code == 501 and "APPLICATION_ID" in refused.json()["error"]["message"]
    assert stub.received("PUT") == []
