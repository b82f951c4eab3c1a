"""NCCO `connect` through the real core with a fake clock: the engine calls a phone number through the SIP trunk
(or a SIP URI), bridges the two calls once the callee answers, and reports the placed call's events as Vonage
reports an outbound call's. The callee is a UAS as SIPp's scenarios answer (`Callee`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dialbridge.engine.calls import PhoneEndpoint, WebhookResult, parse_ncco
from dialbridge.engine.core import SendWebhook
from dialbridge.sip.auth import DigestCredentials, build_challenge, verify_authorization
from tests.engine.fake_engine import ANSWER_URL, EVENT_URL, Callee, Phone, World, ok, tone, tone_share
from tests.engine.test_voice_engine import assert_idle, connected, settings_with, talk, world_with

A_HZ, B_HZ, RINGBACK_HZ, NEXT_HZ = 440.0, 700.0, 425.0, 1000.0
TRUNK_HOST, TRUNK_PORT = "203.0.113.200", 5070
TRUNK = f"sip:{TRUNK_HOST}:{TRUNK_PORT};transport=udp"
CREDENTIALS = DigestCredentials("trunkuser", "trunk-secret")
CONNECT_EVENTS = "http://app.test/connect-events"
RINGBACK_URL = "http://app.test/ringback.wav"
NUMBER = "447700900001"


def connect(endpoint: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {
        "action": "connect",
        "from": "447700900000",
        "endpoint": [endpoint or {"type": "phone", "number": NUMBER}],
        "eventUrl": [CONNECT_EVENTS],
        **options,
    }


def trunk_world(ncco: list[dict[str, Any]], **settings: Any) -> World:
    base = {"sip_trunk_uri": TRUNK, "sip_trunk_username": "trunkuser", "sip_trunk_password": "trunk-secret"}
    world = world_with(ncco, settings=settings_with(**{**base, **settings}))
    world.audio.update({RINGBACK_URL: tone(RINGBACK_HZ, 1.0), "next": tone(NEXT_HZ, 2.0)})
    return world


@dataclass
class Connected:
    """A caller whose NCCO connects it to the callee at the trunk's address."""

    world: World
    callee: Callee
    caller: Phone
    caller_uuid: str

    @property
    def placed_uuid(self) -> str:
        return placed_uuid(self.world, self.caller_uuid)


def call_in(ncco: list[dict[str, Any]], seconds: float, **callee_options: Any) -> Connected:
    """A caller dials in, its NCCO runs (the connect in it calls the callee), and `seconds` pass."""
    world = trunk_world(ncco)
    callee = Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, **callee_options)
    caller = world.phone()
    caller_uuid = connected(world, caller)
    world.run(seconds)
    return Connected(world, callee, caller, caller_uuid)


def placed_uuid(world: World, caller_uuid: str) -> str:
    [uuid] = [e["uuid"] for e in world.events if e["uuid"] != caller_uuid and e["status"] == "started"]
    return uuid


def test_connect_to_a_phone_calls_it_through_the_trunk_with_digest_and_both_hear_each_other() -> None:
    world = trunk_world([connect()])
    challenge = build_challenge("trunk.test", "nonce-1", algorithm="MD5")
    callee = Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, challenge=challenge, voice=tone(B_HZ, 1.0))
    caller = world.phone(caller="+15550001111", voice=tone(A_HZ, 1.0))
    caller_uuid = connected(world, caller)
    world.run(1.0)

    first, second = callee.invites
    assert str(first.uri) == f"sip:{NUMBER}@{TRUNK_HOST}:{TRUNK_PORT};transport=udp"
    assert first.from_addr.uri.user == "447700900000"
    authorization = second.headers.get("Authorization")
    assert authorization is not None
    assert verify_authorization(authorization, method="INVITE", credentials=CREDENTIALS, realm="trunk.test")
    since = world.now - 0.5
    assert tone_share(caller.heard(since), B_HZ) > 0.5  # the caller hears the callee
    assert tone_share(callee.heard(since), A_HZ) > 0.5  # and the callee the caller

    uuid = placed_uuid(world, caller_uuid)
    assert world.statuses(uuid) == ["started", "ringing", "answered"]
    assert world.event_urls[uuid] == {CONNECT_EVENTS}
    answered = world.event(uuid, "answered")
    caller_call = world.engine.calls[caller_uuid]
    assert answered["direction"] == "outbound"
    assert (answered["from"], answered["to"]) == ("447700900000", NUMBER)
    assert answered["conversation_uuid"] == caller_call.conversation_uuid
    assert world.event(caller_uuid, "answered")["direction"] == "inbound"


def test_the_callee_hanging_up_ends_the_connect_and_the_caller_with_the_ncco() -> None:
    c = call_in([connect()], 2.0)

    c.callee.hang_up()
    c.world.run(0.2)

    assert c.world.statuses(c.placed_uuid)[-1] == "completed"
    assert c.world.event(c.placed_uuid, "completed")["duration"] == "2"
    assert "BYE" in [r.method for r in c.caller.requests]  # the NCCO ran out: the caller is hung up too
    assert c.world.statuses(c.caller_uuid)[-1] == "completed"
    assert_idle(c.world)


def test_the_caller_hanging_up_ends_the_callee() -> None:
    c = call_in([connect()], 1.0)

    c.caller.bye()
    c.world.run(0.2)

    assert [r.method for r in c.callee.requests if r.method == "BYE"] == ["BYE"]
    assert c.world.statuses(c.placed_uuid)[-1] == "completed"
    assert_idle(c.world)


def test_the_caller_hanging_up_while_the_callee_rings_cancels_it() -> None:
    c = call_in([connect()], 1.0, answer=None)
    assert c.world.statuses(c.placed_uuid) == ["started", "ringing"]

    c.caller.bye()
    c.world.run(0.2)

    assert "CANCEL" in [r.method for r in c.callee.requests]
    assert c.world.statuses(c.placed_uuid) == ["started", "ringing", "cancelled"]
    assert_idle(c.world)


def test_the_caller_hears_the_ringback_tone_until_the_callee_answers() -> None:
    world = trunk_world([connect(ringbackTone=RINGBACK_URL)])
    callee = Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, answer=None, voice=tone(B_HZ, 1.0))
    caller = world.phone()
    connected(world, caller)
    world.run(1.0)
    assert tone_share(caller.heard(world.now - 0.5), RINGBACK_HZ) > 0.5

    callee.answer_invite()
    world.run(1.0)

    heard = caller.heard(world.now - 0.5)
    assert tone_share(heard, B_HZ) > 0.5
    assert tone_share(heard, RINGBACK_HZ) < 0.05


def test_a_busy_callee_is_reported_busy_and_the_ncco_carries_on() -> None:
    c = call_in([connect(), talk("next")], 1.0, answer=486)

    assert c.world.statuses(c.placed_uuid) == ["started", "ringing", "busy"]
    assert c.world.event(c.placed_uuid, "busy")["direction"] == "outbound"
    assert tone_share(c.caller.heard(c.world.now - 0.5), NEXT_HZ) > 0.5


def test_no_answer_within_the_timeout_is_a_timeout_and_the_invite_is_cancelled() -> None:
    c = call_in([connect(timeout=5), talk("next")], 4.8, answer=None)
    assert c.world.statuses(c.placed_uuid) == ["started", "ringing"]

    c.world.run(0.5)

    assert c.world.statuses(c.placed_uuid) == ["started", "ringing", "timeout"]
    assert "CANCEL" in [r.method for r in c.callee.requests]
    c.world.run(0.5)
    assert tone_share(c.caller.heard(c.world.now - 0.4), NEXT_HZ) > 0.5


def test_the_limit_ends_the_connected_call() -> None:
    c = call_in([connect(limit=3), talk("next")], 2.8)
    assert "BYE" not in [r.method for r in c.callee.requests]

    c.world.run(0.5)

    assert "BYE" in [r.method for r in c.callee.requests]
    assert c.world.statuses(c.placed_uuid)[-1] == "completed"
    c.world.run(0.5)
    assert tone_share(c.caller.heard(c.world.now - 0.4), NEXT_HZ) > 0.5


def test_a_synchronous_connect_that_fails_asks_its_event_url_what_next() -> None:
    def webhook(request: SendWebhook) -> WebhookResult:
        return ok([talk("next")])

    world = trunk_world([connect(eventType="synchronous"), talk("not this")])
    world.webhook = webhook
    Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, answer=486)
    caller = world.phone()
    caller_uuid = connected(world, caller)
    world.run(1.0)

    [asked] = [w for w in world.webhooks if w.purpose == "connect"]
    assert asked.url == CONNECT_EVENTS
    assert asked.call_uuid == caller_uuid
    assert asked.payload["status"] == "busy"
    assert asked.payload["uuid"] == placed_uuid(world, caller_uuid)
    assert tone_share(caller.heard(world.now - 0.5), NEXT_HZ) > 0.5


def test_a_sip_endpoint_is_called_at_its_uri_with_its_headers_as_x_headers() -> None:
    uri = f"sip:alice@{TRUNK_HOST}:{TRUNK_PORT}"
    endpoint = {"type": "sip", "uri": uri, "headers": {"Room": "42", "X-Trace": "t1"}}
    c = call_in([connect(endpoint)], 0.5)

    [invite] = c.callee.invites
    assert str(invite.uri) == uri
    assert (invite.headers.get("X-Room"), invite.headers.get("X-Trace")) == ("42", "t1")
    assert invite.headers.get("Authorization") is None
    assert c.world.event(c.placed_uuid, "answered")["to"] == uri


def test_a_phone_endpoint_without_a_trunk_fails_and_the_ncco_carries_on() -> None:
    world = trunk_world([connect(), talk("next")], sip_trunk_uri=None)
    caller = world.phone()
    caller_uuid = connected(world, caller)
    world.run(0.5)

    uuid = placed_uuid(world, caller_uuid)
    assert world.statuses(uuid) == ["started", "failed"]
    assert tone_share(caller.heard(world.now - 0.4), NEXT_HZ) > 0.5
    assert world.event_urls[uuid] == {CONNECT_EVENTS}


def test_events_of_a_connect_without_an_event_url_go_to_the_application() -> None:
    c = call_in([{**connect(), "eventUrl": None}], 0.5)
    assert c.world.event_urls[c.placed_uuid] == {EVENT_URL}


# ---- POST /v1/calls: a call the application places ---------------------------------------------------------------


def test_a_created_call_runs_its_ncco_once_answered_and_ends_with_it() -> None:
    world = trunk_world([])
    callee = Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, voice=tone(B_HZ, 1.0))
    created = world.engine.create_call(
        PhoneEndpoint(NUMBER), "447700900000", parse_ncco([talk("next")]), world.now, event_url=CONNECT_EVENTS
    )
    world.pump()
    assert (created.status, created.direction, created.to) == ("started", "outbound", NUMBER)
    world.run(1.0)

    assert tone_share(callee.heard(world.now - 0.5), NEXT_HZ) > 0.5
    assert world.statuses(created.uuid) == ["started", "ringing", "answered"]
    assert world.event_urls[created.uuid] == {CONNECT_EVENTS}
    answered = world.event(created.uuid, "answered")
    assert (answered["direction"], answered["from"], answered["to"]) == ("outbound", "447700900000", NUMBER)
    world.run(2.0)  # the talk is over: so is the NCCO, and the call
    assert "BYE" in [r.method for r in callee.requests]
    assert world.statuses(created.uuid)[-1] == "completed"
    assert_idle(world)


def test_a_created_call_with_an_answer_url_asks_it_once_answered() -> None:
    world = trunk_world([talk("next")])
    callee = Callee(world, host=TRUNK_HOST, sip_port=TRUNK_PORT, answer=None)
    created = world.engine.create_call(PhoneEndpoint(NUMBER), "447700900000", ANSWER_URL, world.now)
    world.run(1.0)
    assert world.fetches == []  # not while it rings

    callee.answer_invite()
    world.run(1.0)

    [fetch] = world.fetches
    assert fetch.url == ANSWER_URL
    assert fetch.query == {
        "to": NUMBER,
        "from": "447700900000",
        "uuid": created.uuid,
        "conversation_uuid": created.conversation_uuid,
    }
    assert tone_share(callee.heard(world.now - 0.5), NEXT_HZ) > 0.5
    assert world.statuses(created.uuid) == ["started", "ringing", "answered"]  # answered once, by the callee


def test_a_created_call_that_cannot_be_placed_comes_back_failed() -> None:
    world = trunk_world([], sip_trunk_uri=None)
    created = world.engine.create_call(PhoneEndpoint(NUMBER), "447700900000", ANSWER_URL, world.now)
    world.pump()
    assert created.status == "failed"
    assert world.statuses(created.uuid) == ["started", "failed"]
    assert world.engine.snapshot(created.uuid) == created
    assert_idle(world)


def test_a_transfer_of_the_caller_hangs_up_the_call_its_connect_placed() -> None:
    c = call_in([connect()], 1.0)

    assert c.world.engine.transfer(c.caller_uuid, parse_ncco([talk("next")]), c.world.now)
    c.world.run(1.0)

    assert "BYE" in [r.method for r in c.callee.requests]
    assert c.world.statuses(c.placed_uuid)[-1] == "completed"
    assert tone_share(c.caller.heard(c.world.now - 0.5), NEXT_HZ) > 0.5
    assert c.caller_uuid in c.world.engine.calls  # the caller carries on with its new NCCO
