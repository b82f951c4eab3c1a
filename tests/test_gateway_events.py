"""The gateway's SIP call states and the session-monitoring callbacks that carry them (pure parts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import PayloadError
from dialbridge.config import Settings
from dialbridge.dialout import BadSipUri, SipCallUpdate, check_sip_uri, sip_call_update
from dialbridge.gateway.events import CallState, call_state, callback, event_name
from dialbridge.roster import Roster
from dialbridge.sip import CallAnswered, CallEnded, CallFailed, CallProgress
from dialbridge.store.dial_outs import DialOut
from dialbridge.web.app import create_app
from dialbridge.webhook_signing import WebhookSignatures
from tests.aio import run_in_thread
from tests.conftest import FakeClock
from tests.helpers import make_room


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (CallProgress("l", 180, "Ringing", None), CallState("ringing", 180, "Ringing")),
        (CallProgress("l", 183, "Session Progress", b"v=0"), CallState("ringing", 183, "Session Progress")),
        (CallAnswered("l", b"v=0"), CallState("answered", 200, "OK")),
        (CallFailed("l", 486, "Busy Here"), CallState("busy", 486, "Busy Here")),
        (CallFailed("l", 600, "Busy Everywhere"), CallState("busy", 600, "Busy Everywhere")),
        (CallFailed("l", 408, "No Answer", no_answer=True), CallState("no_answer", 408, "No Answer")),
        (CallFailed("l", 408, "Request Timeout"), CallState("failed", 408, "Request Timeout")),  # nothing answered
        (CallFailed("l", 404, "Not Found"), CallState("failed", 404, "Not Found")),
        (CallFailed("l", 503, "Service Unavailable"), CallState("failed", 503, "Service Unavailable")),
        (CallEnded("l", "bye"), CallState("completed", 0, "bye")),
        (CallEnded("l", "cancelled"), CallState("completed", 0, "cancelled")),
        (CallEnded("l", "transport_error"), CallState("failed", 0, "transport_error")),  # its TCP connection lost
    ],
)
def test_sip_events_map_to_dial_out_states(event: object, state: CallState) -> None:
    assert call_state(event) == state


def test_only_final_states_destroy_the_call() -> None:
    assert event_name(CallState("ringing", 180, "Ringing")) == "sipCallUpdated"
    assert event_name(CallState("answered", 200, "OK")) == "sipCallUpdated"
    for final in ("busy", "no_answer", "failed", "completed"):
        assert event_name(CallState(final, 0, "")) == "sipCallDestroyed"
    assert call_state(object()) is None


def test_a_callback_round_trips_to_the_dial_out_it_names() -> None:
    body = callback(
        event="sipCallUpdated",
        project_id="app",
        session_id="emb_s",
        call_id="c1",
        connection_id="conn",
        stream_id="st",
        headers={"X-dialbridge-dial-out": "do_1"},
        state=CallState("ringing", 180, "Ringing"),
        now=12.5,
    )
    assert body["timestamp"] == 12500 and body["call"]["sipStatus"] == 180
    assert sip_call_update(body) == SipCallUpdate("do_1", "emb_s", "ringing")
    # Header names are case-insensitive; a call no dial-out placed, and sipCallCreated, change nothing.
    body["call"]["headers"] = {"x-DIALBRIDGE-dial-out": "do_1"}
    assert sip_call_update(body) == SipCallUpdate("do_1", "emb_s", "ringing")
    assert sip_call_update({**body, "call": {**body["call"], "headers": {}}}) is None
    assert sip_call_update({**body, "event": "sipCallCreated"}) is None
    with pytest.raises(PayloadError, match=r"call\.state"):
        sip_call_update({**body, "call": {**body["call"], "state": "on fire"}})
    with pytest.raises(PayloadError, match="sessionId"):
        sip_call_update({"event": "sipCallUpdated"})


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sips:alice@example.com", "no TLS"),
        ("sip:alice@example.com;transport=tls", "no TLS"),
        ("tel:+14155550100", "sip: URI"),
        ("alice@example.com", "not a SIP URI"),
        ("sip:alice@example.com;transport=sctp", "transport=sctp"),
    ],
)
def test_sip_uris_the_gateway_cannot_call_are_refused_saying_why(uri: str, message: str) -> None:
    with pytest.raises(BadSipUri, match=message):
        check_sip_uri(uri, tls=False)


def test_tls_is_for_backends_that_have_it() -> None:
    assert check_sip_uri("sips:alice@example.com").scheme == "sips"


def test_sip_uris_over_udp_and_tcp_are_accepted() -> None:
    assert check_sip_uri("sip:alice@127.0.0.1:5070").host == "127.0.0.1"
    assert check_sip_uri("sip:bob@pbx.example.com;transport=TCP").transport == "tcp"


# --- the app's route for them: signed, and only for a dial-out of the session named ---------------------------------

SECRET = "sip-call-events-test-signature-secret"


@pytest.fixture
def signed_client(settings: Settings, clock: FakeClock) -> Iterator[TestClient]:
    signed = settings.model_copy(update={"signature_secret": SecretStr(SECRET)})
    with TestClient(create_app(signed, clock=clock)) as test_client:
        yield test_client


def _placed(client: TestClient, room_id: str, dial_out_id: str, clock: FakeClock) -> str:
    """A room with a placed phone dial-out; its session id."""
    session_id = str(make_room(client, room_id)["session_id"])
    store = client.app.state.services.dial_outs.store  # type: ignore[attr-defined]
    store.start(dial_out_id=dial_out_id, room_id=room_id, kind="phone", target="+15550100", now=clock())
    store.mark_live(dial_out_id, platform_call_id="c1", connection_id="conn", stream_id="st", progress="ringing")
    return session_id


def _post(client: TestClient, body: dict[str, Any], *, signed: bool = True) -> int:
    clock: FakeClock = client.app.state.services.clock  # type: ignore[attr-defined]
    payload = orjson.dumps(body)
    headers = {"content-type": "application/json"}
    if signed:
        headers["authorization"] = f"Bearer {WebhookSignatures(SECRET).sign(payload, clock())}"
    return client.post("/webhooks/video/sip-calls", content=payload, headers=headers).status_code


def _body(session_id: str, dial_out_id: str, state: str) -> dict[str, Any]:
    return callback(
        event=event_name(CallState(state, 0, "")),
        project_id="app",
        session_id=session_id,
        call_id="c1",
        connection_id="conn",
        stream_id="st",
        headers={"X-dialbridge-dial-out": dial_out_id},
        state=CallState(state, 0, ""),
        now=time.time(),
    )


def test_signed_callbacks_move_the_dial_out_and_a_final_one_closes_it(
    signed_client: TestClient, clock: FakeClock
) -> None:
    session_id = _placed(signed_client, "standup", "do_1", clock)
    store = signed_client.app.state.services.dial_outs.store  # type: ignore[attr-defined]
    assert _post(signed_client, _body(session_id, "do_1", "answered"), signed=False) == 401
    assert store.get("do_1").progress == "ringing"
    assert _post(signed_client, _body(session_id, "do_1", "answered")) == 204
    assert (store.get("do_1").state, store.get("do_1").progress) == ("live", "answered")
    assert _post(signed_client, _body("emb_another", "do_1", "busy")) == 204  # another session's: ignored
    assert store.get("do_1").progress == "answered"
    assert _post(signed_client, _body(session_id, "do_1", "completed")) == 204
    closed = store.get("do_1")
    assert (closed.state, closed.progress) == ("ended", "completed") and closed.ended_at is not None
    assert _post(signed_client, _body(session_id, "do_1", "answered")) == 204  # too late: nothing reopens
    assert store.get("do_1").progress == "completed"
    bad = {**_body(session_id, "do_1", "answered"), "call": "nope"}
    assert _post(signed_client, bad) == 422


def test_a_call_that_never_connected_closes_as_failed(signed_client: TestClient, clock: FakeClock) -> None:
    session_id = _placed(signed_client, "standup", "do_2", clock)
    assert _post(signed_client, _body(session_id, "do_2", "no_answer")) == 204
    closed = signed_client.app.state.services.dial_outs.store.get("do_2")  # type: ignore[attr-defined]
    assert (closed.state, closed.progress) == ("failed", "no_answer")


class _Signals:
    name = "recording"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        self.sent.append(orjson.loads(data)["participant"]["state"])


def _dial_out(state: str, progress: str | None) -> DialOut:
    ended = None if state in ("dialling", "live") else 2.0
    return DialOut("do_9", "standup", "phone", "+15550100", state, "c", "conn", "st", None, 1.0, ended, progress)


def test_the_room_is_never_told_a_dial_out_went_back_to_ringing() -> None:
    """The dial request's answer (ringing, read before the gateway's report was written) may be signalled after
    the report (answered): the stale one is not sent; an end always is, and nothing after it."""

    async def main() -> list[str]:
        platform = _Signals()
        roster = Roster(None, platform, None, None, None, time.time)  # type: ignore[arg-type]
        room = Room("standup", "emb_s", "123456")
        for state, progress in [("live", "answered"), ("live", "ringing"), ("ended", "completed"), ("live", "ringing")]:
            roster.dial_out_changed(room, _dial_out(state, progress))
        await roster.drain()
        return platform.sent

    assert run_in_thread(main) == ["answered", "completed"]


class _SlowFirstSignals:
    """A platform whose first signal takes longer to land than the ones after it (a slower request)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.calls = 0

    async def signal(self, session_id: str, signal_type: str, data: str) -> None:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.05)
        self.sent.append(orjson.loads(data)["participant"]["state"])


def test_a_calls_signals_reach_the_room_in_the_order_they_were_sent() -> None:
    """Found on the Vonage backend under load: each signal was its own request, so an earlier state could land
    after "ended" and the room's list showed a hung-up call live again."""

    async def main() -> list[str]:
        platform = _SlowFirstSignals()
        roster = Roster(None, platform, None, None, None, time.time)  # type: ignore[arg-type]
        room = Room("standup", "emb_s", "123456")
        roster.dial_out_changed(room, _dial_out("live", "ringing"))
        roster.dial_out_changed(room, _dial_out("ended", "completed"))
        await roster.drain()
        return platform.sent

    assert run_in_thread(main) == ["ringing", "completed"]
