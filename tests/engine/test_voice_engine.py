"""`VoiceEngine`, the sans-I/O core of the embedded voice engine, driven whole with a fake clock.

Phones write their SIP as SIPp sends it and send real RTP (G.711 frames, RFC 4733 events, in-band tones); the app
is a script answering the engine's requests with `WebhookResult`s and the audio of talks as tones. What is asserted
is what a caller hears and what the application is told: the SIP responses, the audio in the engine's RTP (decoded,
measured by frequency), the webhook requests and their fields — and that nothing stays behind once calls end.
Everything runs through `tests/engine/fake_engine.py`: no sockets, no threads, no sleeping.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import random
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialbridge.engine.calls import StreamSource, TalkSource, WebhookResult
from dialbridge.engine.calls.runner import DEFAULT_APOLOGY
from dialbridge.engine.core import SPEAKING_REPORT_S, EngineSettings, FetchAnswer, SendWebhook
from dialbridge.log_text import escaped_for_log
from dialbridge.rtp.events import parse_telephone_event
from dialbridge.rtp.packet import RtpPacket, build_rtp
from dialbridge.sip.message import SipResponse, parse_message
from tests.engine.fake_engine import (
    ANSWER_URL,
    ENGINE_HOST,
    EVENT_URL,
    IDLE,
    INPUT_URL,
    NOW,
    SPEAKING_URL,
    Address,
    Phone,
    World,
    failed,
    kept,
    ok,
    rms,
    tone,
    tone_share,
)

PROMPT_HZ = 500.0
PROMPT = tone(PROMPT_HZ, 3.0)
GOODBYE_HZ = 900.0
OVERLAY_HZ = 1200.0
A_HZ, B_HZ, C_HZ = 440.0, 700.0, 1000.0
SILENT = 60.0  # RMS below which a caller hears nothing (the voices are ~7000 RMS)


def settings_with(**changes: Any) -> EngineSettings:
    base: dict[str, Any] = {
        "contact_host": ENGINE_HOST,
        "contact_port": 5060,
        "answer_url": ANSWER_URL,
        "event_url": EVENT_URL,
    }
    return EngineSettings(**{**base, **changes})


def talk(text: str, *, barge_in: bool = False, loop: int = 1) -> dict[str, Any]:
    return {"action": "talk", "text": text, "bargeIn": barge_in, "loop": loop}


def dtmf_input(*, max_digits: int = 4, time_out: int = 5, submit_on_hash: bool = True) -> dict[str, Any]:
    return {
        "action": "input",
        "type": ["dtmf"],
        "dtmf": {"maxDigits": max_digits, "timeOut": time_out, "submitOnHash": submit_on_hash},
        "eventUrl": [INPUT_URL],
    }


def conversation(name: str, **options: Any) -> dict[str, Any]:
    return {"action": "conversation", "name": name, **options}


def world_with(answers: dict[str, list[dict[str, Any]]] | list[dict[str, Any]], **kwargs: Any) -> World:
    """A world whose app answers every call with one NCCO, or each caller (by `from`) with its own."""

    def answer(request: FetchAnswer) -> WebhookResult:
        if isinstance(answers, list):
            return ok(answers)
        return ok(answers[request.query["from"]])

    world = World(answer=answer, **kwargs)
    world.audio.update(
        {
            "prompt": PROMPT,
            "goodbye": tone(GOODBYE_HZ, 0.6),
            "overlay": tone(OVERLAY_HZ, 2.0),
            "transferred": tone(GOODBYE_HZ, 2.0),
            DEFAULT_APOLOGY: tone(GOODBYE_HZ, 0.8),
        }
    )
    return world


def connected(world: World, phone: Phone) -> str:
    """INVITE, then ticks until the call is answered and media flows both ways; the call's uuid."""
    phone.invite()
    world.until(lambda: phone.sending and 200 in phone.statuses(), 2.0)
    world.run(0.1)
    return world.uuid_of(phone)


def sdp_lines(body: bytes | None) -> list[str]:
    assert body is not None
    return body.decode().splitlines()


def loud_part(samples: np.ndarray, threshold: int = 300) -> np.ndarray:
    """From the first to the last sample above `threshold`: a short tone, without the silence around it."""
    above = np.flatnonzero(np.abs(samples) > threshold)
    return samples[above[0] : above[-1] + 1] if len(above) else samples[:0]


def assert_idle(world: World) -> None:
    world.advance(70.0)  # every SIP timer (64*T1 = 32 s, timer H, J, K) has run out
    assert world.idle() == IDLE


# ---- a dial-in ---------------------------------------------------------------------------------------------------


def test_an_invite_rings_reports_started_and_ringing_and_asks_the_answer_webhook() -> None:
    world = World()  # the answer is held: the call stays ringing
    phone = world.phone(
        caller="+15550001111",
        x_headers={"X-Room-Pin": "4321", "X-Caller-Name": "Ada", "X-Nexmo-Trace": "internal"},
    )
    phone.invite()

    assert phone.statuses() == [100, 180]
    assert phone.last(180).to_addr.tag
    [fetch] = world.fetches
    uuid = fetch.call_uuid
    assert world.statuses(uuid) == ["started", "ringing"]
    assert fetch.url == ANSWER_URL
    call = world.engine.calls[uuid]
    assert fetch.query == {
        "to": "dialin",
        "from": "+15550001111",
        "uuid": uuid,
        "conversation_uuid": call.conversation_uuid,
        "SipHeader_X-Room-Pin": "4321",
        "SipHeader_X-Caller-Name": "Ada",
    }
    assert call.conversation_uuid.startswith("CON-")
    world.run(1.0)
    assert 200 not in phone.statuses()  # ringing until the application answers
    assert world.engine.snapshot(uuid) is not None
    assert world.engine.snapshot(uuid).status == "ringing"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not answered yet"):  # a 400 from the API, not audio lost unheard
        world.engine.play_into_call(uuid, TalkSource("too early"))


@pytest.mark.parametrize(
    ("codecs", "ptime", "payload_type", "rtpmap"),
    [(("PCMA",), 30, 8, "a=rtpmap:8 PCMA/8000"), (("PCMU",), 20, 0, "a=rtpmap:0 PCMU/8000")],
)
def test_the_answer_carries_an_sdp_answer_for_the_offered_codec_and_ptime(
    codecs: tuple[str, ...], ptime: int, payload_type: int, rtpmap: str
) -> None:
    world = world_with([talk("prompt", barge_in=True), dtmf_input()])
    phone = world.phone(codec=codecs[0], ptime=ptime)
    uuid = connected(world, phone)

    answer = phone.last(200)
    assert answer.content_type == "application/sdp"
    lines = sdp_lines(answer.body)
    media = next(line for line in lines if line.startswith("m=audio"))
    assert media == f"m=audio {phone.media_port} RTP/AVP {payload_type} 101"
    assert phone.media_port in world.ports.open_ports
    assert f"c=IN IP4 {ENGINE_HOST}" in lines
    assert rtpmap in lines
    assert "a=rtpmap:101 telephone-event/8000" in lines
    assert f"a=ptime:{ptime}" in lines
    assert "a=sendrecv" in lines
    assert world.statuses(uuid) == ["started", "ringing", "answered"]
    world.run(0.5)
    packets = phone.packets(since=world.now - 0.3)
    assert packets
    assert {p.payload_type for p in packets} == {payload_type}
    assert {len(p.payload) for p in packets} == {ptime * 8}
    stamps = [p.timestamp for p in packets]
    assert all((b - a) % 2**32 == ptime * 8 for a, b in itertools.pairwise(stamps))


def test_the_prompt_reaches_the_caller_right_after_its_audio_is_ready() -> None:
    world = world_with([talk("prompt", barge_in=True), dtmf_input()])
    world.hold_audio = True
    phone = world.phone()
    connected(world, phone)
    world.run(0.3)
    [prepare] = world.held_audio
    assert isinstance(prepare.source, TalkSource)
    assert prepare.source.text == "prompt"
    assert rms(phone.heard(since=world.now - 0.3)) < SILENT  # silence while the speech is being made

    ready_at = world.now
    world.engine.audio_ready(prepare.call_uuid, prepare.playback_id, PROMPT, world.now)
    world.run(0.5)
    first = next(item.at for item in phone.rx if item.at > ready_at and rms(_payload_audio(item.packet)) > 1000)
    assert first - ready_at <= 0.041  # the next tick or the one after
    heard = phone.heard(since=first)
    assert tone_share(heard, PROMPT_HZ) > 0.9


def _payload_audio(packet: RtpPacket) -> np.ndarray:
    from dialbridge.media import g711

    return g711.decode("PCMA" if packet.payload_type == 8 else "PCMU", packet.payload)


def test_rfc4733_digits_barge_in_and_reach_the_input_webhook_and_its_ncco_joins_the_conversation() -> None:
    inputs: list[SendWebhook] = []

    def app_input(request: SendWebhook) -> WebhookResult:
        inputs.append(request)
        return ok([conversation("room-1")])

    world = world_with([talk("prompt", barge_in=True), talk("more prompt"), dtmf_input()], webhook=app_input)
    phone = world.phone(codec="PCMA")
    uuid = connected(world, phone)
    world.run(0.5)
    assert tone_share(phone.heard(since=world.now - 0.4), PROMPT_HZ) > 0.9

    phone.key_rfc4733("1")
    world.run(0.3)
    barged_at = world.now
    phone.key_rfc4733("2")
    world.run(0.3)
    assert [p.source.text for p in world.prepares if isinstance(p.source, TalkSource)] == ["prompt"]
    assert rms(phone.heard(since=barged_at)) < SILENT  # stopped, and the next talk was skipped
    assert not inputs  # the input waits for more digits (maxDigits 4) or the #
    phone.key_rfc4733("#")
    world.run(0.3)

    [request] = inputs
    assert request.url == INPUT_URL
    assert request.method == "POST"
    assert request.purpose == "input"
    assert request.payload["dtmf"] == {"digits": "12", "timed_out": False}
    assert request.payload["uuid"] == uuid
    assert world.engine.mixer.conference_of(uuid) == "room-1"
    assert world.engine.snapshot(uuid).conversation == "room-1"  # type: ignore[union-attr]


def test_callers_in_one_conversation_hear_each_other_not_themselves_and_another_conversation_hears_neither() -> None:
    world = world_with(
        {
            "+1555000000a": [conversation("room-1")],
            "+1555000000b": [conversation("room-1")],
            "+1555000000c": [conversation("room-2")],
        }
    )
    a = world.phone(caller="+1555000000a", voice=tone(A_HZ, 1.0), codec="PCMA", ptime=30)
    b = world.phone(caller="+1555000000b", voice=tone(B_HZ, 1.0))
    c = world.phone(caller="+1555000000c", voice=tone(C_HZ, 1.0))
    for phone in (a, b, c):
        connected(world, phone)
    world.run(0.6)  # past the join tone
    since = world.now
    world.run(1.0)

    heard_a, heard_b, heard_c = (p.heard(since=since) for p in (a, b, c))
    assert tone_share(heard_a, B_HZ) > 0.8
    assert tone_share(heard_a, A_HZ) < 0.01
    assert tone_share(heard_b, A_HZ) > 0.8
    assert tone_share(heard_b, B_HZ) < 0.01
    assert rms(heard_c) < SILENT
    assert sorted(world.engine.mixer.conferences()) == ["room-1", "room-2"]
    assert len(world.engine.snapshots(world.engine.calls[world.uuid_of(a)].conversation_uuid)) == 1


def test_the_others_hear_a_join_tone_and_a_leave_tone() -> None:
    world = world_with([conversation("room-1")])
    a, b = world.phone(), world.phone()
    connected(world, a)
    world.run(0.5)
    assert rms(a.heard(since=world.now - 0.4)) < SILENT  # alone: no tone for the first member

    joined = world.now
    connected(world, b)
    world.run(0.4)
    heard = loud_part(a.heard(since=joined))
    assert 0.15 < len(heard) / 8000 < 0.25  # the 200 ms beep
    assert tone_share(heard, 659.3) > 0.3
    assert tone_share(heard, 880.0) > 0.3
    rising = heard[: len(heard) // 2]
    assert tone_share(rising, 659.3) > tone_share(rising, 880.0)  # low note first

    world.run(0.3)
    left = world.now
    b.bye()
    world.run(0.4)
    heard = loud_part(a.heard(since=left))
    assert 0.15 < len(heard) / 8000 < 0.25
    falling = heard[: len(heard) // 2]
    assert tone_share(falling, 880.0) > 0.5  # high note first


def test_can_speak_and_can_hear_lists_route_a_whisper_and_a_listener() -> None:
    world = world_with([conversation("room-1")])
    a, b = world.phone(voice=tone(A_HZ, 2.0)), world.phone(voice=tone(B_HZ, 2.0))
    ua, ub = connected(world, a), connected(world, b)
    # A coach whom only a hears (canSpeak), and who hears only b (canHear): the legs named by their uuids.
    world.answer = lambda request: ok([conversation("room-1", canSpeak=[ua], canHear=[ub])])
    coach = world.phone(voice=tone(C_HZ, 2.0))
    connected(world, coach)
    world.run(0.6)  # past the join tone
    since = world.now
    world.run(0.8)
    heard_a, heard_b, heard_coach = (p.heard(since=since) for p in (a, b, coach))
    assert tone_share(heard_a, C_HZ) > 0.3 and tone_share(heard_a, B_HZ) > 0.3
    assert tone_share(heard_b, C_HZ) < 0.01 and tone_share(heard_b, A_HZ) > 0.8
    assert tone_share(heard_coach, B_HZ) > 0.8 and tone_share(heard_coach, A_HZ) < 0.01


def test_mute_stops_the_others_hearing_a_caller_and_earmuff_stops_the_caller_hearing() -> None:
    world = world_with([conversation("room-1")])
    a = world.phone(voice=tone(A_HZ, 1.0))
    b = world.phone(voice=tone(B_HZ, 1.0))
    ua, ub = connected(world, a), connected(world, b)
    world.run(0.6)

    assert world.engine.set_muted(ua, True)
    world.run(0.2)
    since = world.now
    world.run(0.5)
    assert rms(b.heard(since=since)) < SILENT
    assert tone_share(a.heard(since=since), B_HZ) > 0.8  # a muted caller still hears
    assert world.engine.snapshot(ua).muted  # type: ignore[union-attr]

    assert world.engine.set_muted(ua, False)
    world.run(0.2)
    since = world.now
    world.run(0.5)
    assert tone_share(b.heard(since=since), A_HZ) > 0.8

    assert world.engine.set_earmuffed(ub, True)
    world.run(0.2)
    since = world.now
    world.run(0.5)
    assert rms(b.heard(since=since)) < SILENT
    assert tone_share(a.heard(since=since), B_HZ) > 0.8  # the others still hear an earmuffed caller
    assert world.engine.snapshot(ub).earmuffed  # type: ignore[union-attr]
    assert world.engine.set_earmuffed(ub, False)
    world.run(0.2)
    since = world.now
    world.run(0.5)
    assert tone_share(b.heard(since=since), A_HZ) > 0.8
    assert not world.engine.set_muted("no-such-call", True)
    assert not world.engine.set_earmuffed("no-such-call", True)


def test_who_speaks_is_reported_per_conversation_when_it_changes_a_few_times_a_second_at_most() -> None:
    settings = EngineSettings(
        contact_host=ENGINE_HOST, contact_port=5060, answer_url=ANSWER_URL, event_url=EVENT_URL,
        speaking_url=SPEAKING_URL,
    )  # fmt: skip
    world = world_with([conversation("room-1")], settings=settings)
    a, b = world.phone(), world.phone()  # both silent
    ua, _ = connected(world, a), connected(world, b)
    world.run(1.0)
    assert world.speaking_reports == []  # nobody has spoken: nothing to say
    a.voice = np.concatenate([tone(A_HZ, 1.0), np.zeros(8000 * 30, np.int16)])  # one second of tone, then quiet
    world.run(2.0)

    reports = world.speaking_reports
    assert [(r["conversation"], r["speaking"]) for _, r in reports] == [("room-1", [ua]), ("room-1", [])], reports
    started, stopped = reports[0][0], reports[1][0]
    assert 0.9 <= stopped - started <= 1.0 + 0.2 + SPEAKING_REPORT_S + 0.05  # the tone, the hangover, one batch
    assert all(r["timestamp"].endswith("Z") for _, r in reports)

    world.speaking_reports.clear()
    assert world.engine.set_muted(ua, True)  # a muted caller does not speak to anyone, whatever it sends
    a.voice = tone(A_HZ, 2.0)  # looped: speaking throughout
    world.run(1.0)
    assert world.speaking_reports == []


def test_end_on_exit_moves_the_others_on_to_the_rest_of_their_ncco() -> None:
    world = world_with(
        {
            "+15550000001": [conversation("room-1", endOnExit=True)],
            "+15550000002": [conversation("room-1"), talk("goodbye")],
        }
    )
    host = world.phone(caller="+15550000001", voice=tone(A_HZ, 1.0))
    guest = world.phone(caller="+15550000002")
    connected(world, host)
    ug = connected(world, guest)
    world.run(0.6)
    left = world.now
    host.bye()
    world.run(0.5)
    heard = guest.heard(since=left)
    assert tone_share(heard, GOODBYE_HZ) > 0.8
    assert tone_share(heard, A_HZ) < 0.01  # out of the conversation
    world.run(1.0)
    assert [r.method for r in guest.requests] == ["BYE"]
    assert world.event(ug, "completed")["reason"] == "ncco_completed"
    assert_idle(world)


def test_end_on_exit_runs_the_others_next_action_and_hangs_them_up_when_it_ends() -> None:
    inputs: list[SendWebhook] = []

    def app_input(request: SendWebhook) -> WebhookResult:
        inputs.append(request)
        return ok(None)  # an empty 2xx: carry on with the rest, which is nothing: hang up

    world = world_with(
        {
            "+15550000001": [conversation("room-1", endOnExit=True)],
            "+15550000002": [conversation("room-1"), dtmf_input(time_out=1)],
            "+15550000003": [conversation("room-1")],
        },
        webhook=app_input,
    )
    host = world.phone(caller="+15550000001", voice=tone(A_HZ, 1.0))
    guest = world.phone(caller="+15550000002")
    third = world.phone(caller="+15550000003")
    connected(world, host)
    ug, u3 = connected(world, guest), connected(world, third)
    world.run(0.6)
    host.bye()
    world.run(0.1)
    assert world.engine.mixer.conferences() == []  # the conversation ended for everyone
    since = world.now
    world.run(0.4)
    assert rms(guest.heard(since=since)) < SILENT
    assert not guest.requests
    world.run(1.0)  # the input times out
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "", "timed_out": True}]
    assert [r.method for r in guest.requests] == ["BYE"]
    assert [r.method for r in third.requests] == ["BYE"]  # nothing after its conversation: hung up at once
    assert world.event(ug, "completed")["reason"] == "ncco_completed"
    assert world.event(u3, "completed")["reason"] == "ncco_completed"
    assert_idle(world)


HOLD_URL = "http://app.test/hold.mp3"


def waiting_in(name: str) -> dict[str, Any]:
    """A member who waits, hearing music on hold, until one with startOnEnter (the default) joins."""
    return conversation(name, startOnEnter=False, musicOnHoldUrl=[HOLD_URL])


def test_a_conversation_ended_by_end_on_exit_must_be_started_again_before_its_members_talk() -> None:
    world = world_with(
        {
            "+15550000001": [conversation("room-1", endOnExit=True)],
            "+15550000002": [conversation("room-1")],
            "+15550000003": [waiting_in("room-1")],
            "+15550000004": [waiting_in("room-1")],
        }
    )
    world.audio[HOLD_URL] = tone(C_HZ, 1.0)
    host = world.phone(caller="+15550000001")
    guest = world.phone(caller="+15550000002")
    connected(world, host)
    connected(world, guest)
    host.bye()  # the conversation ends for everyone: the guest, with nothing after it, is hung up
    world.run(0.2)
    assert [r.method for r in guest.requests] == ["BYE"]

    first = world.phone(caller="+15550000003", voice=tone(A_HZ, 1.0))
    second = world.phone(caller="+15550000004", voice=tone(B_HZ, 1.0))
    connected(world, first)
    connected(world, second)
    world.run(0.3)
    since = world.now
    world.run(1.0)
    for phone, other_hz in ((first, B_HZ), (second, A_HZ)):
        heard = phone.heard(since=since)
        assert tone_share(heard, C_HZ) > 0.8  # waiting, on hold
        assert tone_share(heard, other_hz) < 0.01  # not in a live conversation
    first.bye()
    second.bye()
    assert_idle(world)


def test_a_member_ended_out_of_a_waiting_conversation_stops_hearing_its_music_on_hold() -> None:
    world = world_with(
        {
            "+15550000001": [conversation("room-1", startOnEnter=False, endOnExit=True)],
            "+15550000002": [waiting_in("room-1"), talk("goodbye")],
        }
    )
    world.audio[HOLD_URL] = tone(C_HZ, 1.0)
    host = world.phone(caller="+15550000001")
    guest = world.phone(caller="+15550000002")
    connected(world, host)
    connected(world, guest)
    world.run(0.3)
    assert tone_share(guest.heard(since=world.now - 0.2), C_HZ) > 0.8
    left = world.now
    host.bye()
    world.run(0.5)
    heard = guest.heard(since=left + 0.05)
    assert tone_share(heard, GOODBYE_HZ) > 0.8
    assert tone_share(heard, C_HZ) < 0.01
    world.run(1.0)
    assert [r.method for r in guest.requests] == ["BYE"]
    assert_idle(world)


def test_many_conversations_ended_by_end_on_exit_leave_no_state_behind() -> None:
    world = world_with(
        {
            **{f"+1555000{n:04}": [conversation(f"room-{n}", endOnExit=True)] for n in range(20)},
            **{f"+1555100{n:04}": [conversation(f"room-{n}"), talk("goodbye")] for n in range(20)},
        }
    )
    for n in range(20):
        host = world.phone(caller=f"+1555000{n:04}")
        guest = world.phone(caller=f"+1555100{n:04}")
        connected(world, host)
        connected(world, guest)
        host.bye()
        world.run(0.1)
    world.run(1.0)  # every guest's goodbye ends, and its call with it
    assert world.engine.calls == {}
    assert_idle(world)  # no conversation, started or not, is held any more


# ---- how calls end -----------------------------------------------------------------------------------------------


def test_when_the_ncco_runs_out_the_engine_sends_bye_and_reports_completed_with_the_duration() -> None:
    world = world_with([talk("goodbye")])  # 0.6 s
    phone = world.phone()
    uuid = connected(world, phone)
    answered_at = world.event(uuid, "answered")["timestamp"]
    world.run(0.4)
    assert not phone.requests
    world.run(0.5)
    [bye] = phone.requests
    assert bye.method == "BYE"
    assert bye.call_id == phone.call_id
    assert bye.to_addr.tag == phone.from_tag  # the engine's BYE goes the other way in the dialog
    completed = world.event(uuid, "completed")
    assert completed["reason"] == "ncco_completed"
    assert completed["start_time"] == answered_at
    assert completed["duration"] == "1"
    assert world.statuses(uuid) == ["started", "ringing", "answered", "completed"]
    assert world.engine.calls == {}
    assert_idle(world)


def test_a_call_ending_as_its_talk_finishes_does_not_cost_the_other_calls_their_audio() -> None:
    world = world_with({"+15550000001": [talk("goodbye")], "+15550000002": [conversation("room-1")]})
    ending = world.phone(caller="+15550000001")
    staying = world.phone(caller="+15550000002")
    uuid = connected(world, ending)
    connected(world, staying)
    before = len(staying.rx)
    world.until(lambda: not world.engine.calls.get(uuid), 2.0)
    world.run(0.2)
    ticks = round((world.now - NOW) / 0.02)
    stamps = sorted({item.at for item in staying.rx[before:]})
    gaps = [round((b - a) / 0.02) for a, b in itertools.pairwise(stamps)]
    assert gaps and set(gaps) == {1}, "every tick sent the staying call its packet"
    assert ticks > 0
    assert [r.method for r in ending.requests] == ["BYE"]


def test_a_remote_bye_is_answered_and_reported_completed() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone()
    uuid = connected(world, phone)
    world.run(2.0)
    phone.bye()
    assert phone.statuses("BYE") == [200]
    completed = world.event(uuid, "completed")
    assert completed["reason"] == "bye"
    assert completed["duration"] == "2"
    assert world.engine.snapshot(uuid).status == "completed"  # type: ignore[union-attr]
    world.run(0.2)
    assert not phone.requests  # no BYE of our own
    assert_idle(world)


def test_text_a_caller_writes_reaches_the_log_with_its_control_characters_escaped_and_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # From, To and Call-ID are the caller's text: raw in the log, CR/LF would forge lines and ESC sequences would
    # drive the terminal of whoever reads it. NUL and ESC pass the SIP parser in a URI's user part and a Call-ID.
    caplog.set_level(logging.INFO)
    world = world_with([conversation("room-1")])
    phone = world.phone(caller="ev\x00il\x1b[31m" + "9" * 500)
    # A folded display name: its CRLF is a header continuation, so it ends up as a space, not a line break.
    phone.send(phone.invite_bytes().replace(b'"SIPp caller"', b'"\x00\x1b[31m\r\n FAKE LINE"'))
    world.until(lambda: 200 in phone.statuses(), 2.0)
    stranger = world.phone(user="nobody")
    stranger.auto_ack = False  # its 404 is never ACKed: the engine logs the Call-ID when it gives up waiting
    stranger.send(stranger.invite_bytes().replace(stranger.call_id.encode(), b"forged\x1b[2J\rFAKE LINE@x"))
    assert stranger.statuses()[-1] == 404
    world.advance(40.0)  # 64*T1
    logged = [record.getMessage() for record in caplog.records]
    assert any("from ev\\x00il\\x1b[31m999" in line for line in logged), logged
    assert any("forged\\x1b[2J\\rFAKE LINE" in line for line in logged), logged
    for line in logged:
        assert line.isprintable(), repr(line)
        assert "9" * 300 not in line, f"caller text not capped: {line[:100]!r}..."
    # CR LF cannot pass the parser inside a header value; the escaping (one helper for every such value) takes it too.
    assert escaped_for_log("\x00\x1b[31m\r\nFAKE LINE") == "\\x00\\x1b[31m\\r\\nFAKE LINE"


def test_a_cancel_before_the_answer_gets_487_and_cancelled_and_the_late_answer_is_ignored() -> None:
    world = world_with([talk("prompt")])
    world.answer = None  # the answer webhook is slow
    phone = world.phone()
    phone.invite()
    [fetch] = world.fetches
    world.run(0.5)
    phone.cancel()
    assert phone.statuses("CANCEL") == [200]
    assert phone.statuses() == [100, 180, 487]
    assert world.statuses(fetch.call_uuid) == ["started", "ringing", "cancelled"]
    assert world.engine.calls == {}
    assert world.ports.open_ports == set()

    world.engine.answer_fetched(fetch.call_uuid, ok([talk("prompt")]), world.now)  # the answer arrives late
    world.pump()
    world.run(1.0)
    assert phone.statuses() == [100, 180, 487]
    assert not world.prepares
    assert world.statuses(fetch.call_uuid) == ["started", "ringing", "cancelled"]
    assert_idle(world)


def test_a_failed_answer_webhook_answers_plays_the_apology_then_hangs_up_naming_the_failure() -> None:
    world = world_with([])
    world.answer = lambda request: failed("connect timeout")
    phone = world.phone()
    uuid = connected(world, phone)
    [prepare] = world.prepares
    assert isinstance(prepare.source, TalkSource)
    assert prepare.source.text == DEFAULT_APOLOGY
    world.run(0.4)
    assert tone_share(phone.heard(), GOODBYE_HZ) > 0.8  # the apology's audio (0.8 s)
    assert not phone.requests
    world.run(0.6)
    assert [r.method for r in phone.requests] == ["BYE"]
    completed = world.event(uuid, "completed")
    assert "answer webhook failed" in completed["reason"]
    assert "connect timeout" in completed["reason"]
    assert_idle(world)


def test_an_answer_that_never_comes_keeps_ringing_until_the_caller_gives_up() -> None:
    world = World()
    phone = world.phone()
    phone.invite()
    world.advance(40.0)
    assert phone.statuses() == [100, 180]
    phone.cancel()
    assert_idle(world)


# ---- digits ------------------------------------------------------------------------------------------------------


def _collecting_world() -> tuple[World, list[SendWebhook]]:
    inputs: list[SendWebhook] = []

    def app_input(request: SendWebhook) -> WebhookResult:
        inputs.append(request)
        return ok([conversation("room-1")])

    return world_with([dtmf_input(max_digits=4, time_out=3, submit_on_hash=True)], webhook=app_input), inputs


def test_in_band_dtmf_in_pcmu_audio_reaches_the_input() -> None:
    world, inputs = _collecting_world()
    phone = world.phone(telephone_event=None)
    connected(world, phone)
    for digit in "9*07":
        phone.key_inband(digit)
        world.run(0.2)
    world.run(0.2)
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "9*07", "timed_out": False}]


def test_sip_info_dtmf_relay_reaches_the_input() -> None:
    world, inputs = _collecting_world()
    phone = world.phone()
    connected(world, phone)
    phone.info("5")
    phone.send(phone._in_dialog("INFO", b"Signal= 3\r\n", "application/dtmf-relay"))
    phone.send(phone._in_dialog("INFO", b"<xml>Signal=9</xml>", "application/media_control+xml"))
    assert phone.statuses("INFO") == [200, 200, 200]
    world.run(0.1)
    assert not inputs
    phone.info("#")  # submitOnHash
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "53", "timed_out": False}]


def test_sip_info_signal_10_is_star_and_11_is_hash() -> None:
    """application/dtmf-relay numbers * and # as 10 and 11 (the RFC 4733 event codes); some phones write them as is."""
    world, inputs = _collecting_world()
    phone = world.phone()
    connected(world, phone)
    for signal in ("10", "1", "*"):
        phone.info(signal)
    assert not inputs
    phone.info("11")  # submitOnHash
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "*1*", "timed_out": False}]


def test_a_phone_sending_both_rfc4733_and_the_tone_counts_each_key_once() -> None:
    world, inputs = _collecting_world()
    phone = world.phone()
    connected(world, phone)
    for digit in "1212":
        phone.key_rfc4733(digit, with_audio=True)
        phone.key_inband(digit)
        world.run(0.25)
    world.run(0.2)
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "1212", "timed_out": False}]
    assert world.engine.stats.digits == 4


def _rfc4733_then_info(world: World, phone: Phone, digit: str) -> None:
    phone.key_rfc4733(digit)
    world.tick(2)
    phone.info(digit)


def _info_then_rfc4733(world: World, phone: Phone, digit: str) -> None:
    phone.info(digit)
    phone.key_rfc4733(digit)


def _in_band_then_a_late_info(world: World, phone: Phone, digit: str) -> None:
    phone.key_inband(digit)
    world.run(0.15)  # the tone is heard before its INFO arrives
    phone.info(digit)


@pytest.mark.parametrize("key", [_rfc4733_then_info, _info_then_rfc4733, _in_band_then_a_late_info])
def test_a_phone_sending_each_key_two_ways_counts_it_once(key: Callable[[World, Phone, str], None]) -> None:
    world, inputs = _collecting_world()
    phone = world.phone()
    connected(world, phone)
    for digit in "1121":  # the same key twice running is two presses, not one seen twice
        key(world, phone, digit)
        world.run(0.25)
    assert [r.payload["dtmf"] for r in inputs] == [{"digits": "1121", "timed_out": False}]
    assert world.engine.stats.digits == 4


def test_digits_keyed_while_a_prompt_without_barge_in_plays_are_dropped() -> None:
    world, inputs = _collecting_world()
    world.answer = lambda request: ok([talk("goodbye"), dtmf_input(max_digits=1, time_out=2)])
    phone = world.phone()
    connected(world, phone)
    phone.key_rfc4733("4")
    world.run(0.8)  # the prompt ends, the input starts
    phone.key_rfc4733("6")
    world.run(0.3)
    assert [r.payload["dtmf"]["digits"] for r in inputs] == ["6"]


# ---- SDP: late offers, hold, moving -------------------------------------------------------------------------------


def test_an_invite_without_sdp_gets_our_offer_in_the_200_and_its_answer_in_the_ack_starts_media() -> None:
    world = world_with([conversation("room-1")])
    other = world.phone(voice=tone(B_HZ, 1.0))
    connected(world, other)
    phone = world.phone(voice=tone(A_HZ, 1.0), codec="PCMA")
    phone.late_answer_sdp = phone.offer()  # its answer: PCMA, of the PCMU and PCMA we offered
    phone.invite(with_sdp=False)
    world.until(lambda: 200 in phone.statuses(), 1.0)
    lines = sdp_lines(phone.last(200).body)
    media = next(line for line in lines if line.startswith("m=audio"))
    assert media.split()[3:5] == ["0", "8"]  # PCMU and PCMA offered, then the events
    assert "a=rtpmap:101 telephone-event/8000" in lines
    world.run(1.0)
    since = world.now
    world.run(1.0)
    assert {p.payload_type for p in phone.packets(since)} == {8}
    assert tone_share(phone.heard(since), B_HZ) > 0.8
    assert tone_share(other.heard(since), A_HZ) > 0.8


def test_an_ack_without_the_answer_our_offer_needs_hangs_the_call_up() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone()
    phone.late_answer_sdp = b"v=0\r\nnot sdp\r\n"
    phone.invite(with_sdp=False)
    world.run(0.2)
    uuid = world.uuid_of(phone)
    assert [r.method for r in phone.requests] == ["BYE"]
    assert "unusable SDP answer" in world.event(uuid, "completed")["reason"]
    assert_idle(world)


def test_an_ack_with_no_body_to_our_late_offer_hangs_the_call_up_and_frees_its_slot() -> None:
    world = world_with([conversation("room-1")], settings=settings_with(max_calls=1))
    phone = world.phone()  # its ACK carries no SDP: late_answer_sdp is None
    phone.invite(with_sdp=False)
    world.run(0.2)
    uuid = world.uuid_of(phone)
    assert phone.statuses()[-1] == 200
    assert [r.method for r in phone.requests] == ["BYE"]
    assert "no SDP answer" in world.event(uuid, "completed")["reason"]
    assert world.engine.calls == {}
    after = world.phone()
    connected(world, after)  # the one call this engine may hold is free again
    after.bye()
    assert_idle(world)


def test_hold_with_sendonly_is_answered_recvonly_and_stops_our_rtp_until_resumed() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone(voice=tone(A_HZ, 1.0))
    other = world.phone(voice=tone(B_HZ, 1.0))
    connected(world, phone)
    connected(world, other)
    world.run(0.5)

    phone.reinvite(phone.offer(direction="sendonly", version=2))
    answer = phone.last(200)
    assert answer.cseq.number == 2
    assert "a=recvonly" in sdp_lines(answer.body)
    world.run(0.1)
    held = world.now
    world.run(1.0)
    assert phone.packets(since=held) == []
    assert tone_share(other.heard(since=held), A_HZ) > 0.8  # music on hold still reaches the others

    phone.reinvite(phone.offer(version=3))
    assert "a=sendrecv" in sdp_lines(phone.last(200).body)
    resumed = world.now
    world.run(1.0)
    assert len(phone.packets(since=resumed)) >= 45
    assert tone_share(phone.heard(since=resumed + 0.2), B_HZ) > 0.8
    assert phone.statuses("INVITE")[-1] == 200


def test_a_call_whose_phone_went_silent_is_hung_up_after_the_rtp_timeout_but_not_one_on_hold() -> None:
    """A phone gone without a BYE (its network, its battery; over TCP, a connection closed and never back: calls
    outlive their connections now) would otherwise hold its line and its conference seat for good."""
    world = world_with([conversation("room-1")], settings=settings_with(rtp_timeout_s=10.0))
    gone, held, talking = (world.phone(voice=tone(hz, 30.0)) for hz in (A_HZ, B_HZ, A_HZ))
    for phone in (gone, held, talking):
        connected(world, phone)
    held.reinvite(held.offer(direction="inactive", version=2))
    assert held.last(200).cseq.number == 2
    gone.sending = held.sending = False
    world.advance(9.0)
    assert not [r for r in gone.requests if r.method == "BYE"]
    world.advance(3.0)
    assert [r.method for r in gone.requests].count("BYE") == 1
    (ended,) = [e for e in world.events if e["status"] == "completed"]
    assert (ended["uuid"], ended["reason"]) == (world.uuid_of(gone), "rtp_timeout")
    assert {world.uuid_of(held), world.uuid_of(talking)} <= set(world.engine.calls)
    for phone in (held, talking):
        phone.bye()
    world.run(0.5)


def test_reinvite_answers_keep_the_sdp_origin_and_step_its_version_once_per_change() -> None:
    """RFC 3264 §8: a later SDP has the same o= username, session id and address; its version goes up by one when
    the SDP changes and stays when it does not."""
    world = world_with([conversation("room-1")])
    phone = world.phone()
    connected(world, phone)

    def origin() -> list[str]:
        line = next(line for line in sdp_lines(phone.last(200).body) if line.startswith("o="))
        return line.split()

    first = origin()
    assert first[2] == "1"
    origins = []
    for offer in (phone.offer(direction="sendonly", version=2), phone.offer(version=3), phone.offer(version=3)):
        phone.reinvite(offer)  # hold, resume, then a session refresh offering the same again
        origins.append(origin())
    assert [o[:2] + o[3:] for o in origins] == [first[:2] + first[3:]] * 3
    assert [o[2] for o in origins] == ["2", "3", "3"]


def test_a_reinvite_with_a_new_address_moves_our_rtp_there_and_the_old_address_is_then_foreign() -> None:
    inputs: list[SendWebhook] = []
    world = world_with([dtmf_input(max_digits=2, time_out=10)], webhook=lambda r: kept(inputs, r))
    phone = world.phone()
    connected(world, phone)
    old = phone.rtp_address
    phone.rtp_address = ("192.0.2.77", 7002)
    phone.reinvite(phone.offer(version=2))
    assert phone.statuses()[-1] == 200
    moved = world.now
    world.run(0.5)
    assert len(phone.packets(since=moved)) >= 20
    assert not [d for _, _, d in world.stray_rtp if d == old and world.now > moved + 0.1]

    # Once the new address has latched, a packet from the old one (a late digit) is dropped.
    stray = build_rtp(RtpPacket(101, 1, 1000, 0xABCD, struct.pack("!BBH", 5, 0x80 | 10, 800), marker=True))
    assert phone.media_port is not None
    world.engine.receive_rtp(phone.media_port, stray, old, world.now)
    phone.key_rfc4733("1")
    phone.key_rfc4733("2")
    world.run(0.5)
    assert [r.payload["dtmf"]["digits"] for r in inputs] == ["12"]


def test_a_reinvite_offering_nothing_we_take_gets_488_and_the_call_carries_on() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone()
    uuid = connected(world, phone)
    phone.reinvite(phone.offer(media="video", version=2))
    assert phone.statuses()[-1] == 488
    assert phone.last(488).headers.get("Warning") == '305 dialbridge "Incompatible media format"'
    world.run(0.5)
    assert uuid in world.engine.calls
    assert len(phone.packets(since=world.now - 0.3)) >= 10


# ---- refusals -----------------------------------------------------------------------------------------------------


def _refused(world: World, phone: Phone, status: int, retry_after: str | None = None) -> None:
    response = phone.last(status)
    assert response.headers.get("Retry-After") == retry_after
    assert world.engine.stats.refused.get(status, 0) >= 1


@pytest.mark.parametrize(
    ("case", "status", "retry_after"),
    [
        ("unknown user", 404, None),
        ("not an allowed network", 403, None),
        ("max_calls", 503, "30"),
        ("per-source rate", 503, "60"),
        ("video only", 488, None),
        ("no free port", 503, "30"),
        ("malformed sdp", 400, None),
    ],
)
def test_refused_calls_get_their_status_and_leave_nothing_behind(case: str, status: int, retry_after: str) -> None:
    options: dict[str, dict[str, Any]] = {
        "not an allowed network": {"allowed_networks": (ipaddress.ip_network("10.0.0.0/8"),)},
        "max_calls": {"max_calls": 1},
        "per-source rate": {"invites_per_source_per_minute": 2},
    }
    changes = options.get(case, {})
    world = world_with([conversation("room-1")], settings=settings_with(**changes))
    kept: list[Phone] = []
    if case == "max_calls":
        kept.append(world.phone())
        connected(world, kept[0])
    if case == "per-source rate":
        for _ in range(2):
            kept.append(world.phone(host="203.0.113.200"))
            connected(world, kept[-1])
    if case == "no free port":
        world.ports.fail = True
    phone = world.phone(user="nobody" if case == "unknown user" else "dialin", host="203.0.113.200")
    if case == "video only":
        phone.invite(phone.offer(media="video"))
    elif case == "malformed sdp":
        phone.invite(b"v=0\r\nm=audio banana RTP/AVP 0\r\n")
    else:
        phone.invite()
    assert phone.statuses() == [100, status]
    _refused(world, phone, status, retry_after)
    assert phone.uuid is None  # never a call: no answer webhook
    assert len(world.engine.calls) == len(kept)
    assert len(world.ports.open_ports) == len(kept)
    assert not [e for e in world.events if e["status"] not in ("started", "ringing", "answered")]
    for other in kept:
        other.bye()
    world.ports.fail = False
    assert_idle(world)


def test_the_rate_limit_forgets_a_source_after_a_minute() -> None:
    world = world_with([conversation("room-1")], settings=settings_with(invites_per_source_per_minute=1))
    first = world.phone(host="203.0.113.5")
    connected(world, first)
    second = world.phone(host="203.0.113.5")
    second.invite()
    assert second.statuses() == [100, 503]
    world.advance(61.0)
    third = world.phone(host="203.0.113.5")
    connected(world, third)
    assert third.statuses()[:3] == [100, 180, 200]


def test_a_trunk_in_the_allow_list_is_not_held_to_the_per_source_rate() -> None:
    # A trunk brings everybody's calls from one address; the per-source rate guards an open engine from scanners.
    trunk = ipaddress.ip_network("203.0.113.0/24")
    world = world_with(
        [conversation("room-1")], settings=settings_with(invites_per_source_per_minute=1, allowed_networks=(trunk,))
    )
    phones = [world.phone(host="203.0.113.5") for _ in range(3)]
    for phone in phones:
        connected(world, phone)
        assert phone.statuses()[:3] == [100, 180, 200]
    assert len(world.engine.calls) == 3
    stranger = world.phone(host="198.51.100.7")
    stranger.invite()
    assert stranger.statuses() == [100, 403]


# ---- floods and unconfirmed calls -----------------------------------------------------------------------------------

FLOODER = ("192.0.2.66", 5070)


def _flood_message(method: str, n: int, source: Address = FLOODER) -> bytes:
    """Requests as a scanner sprays them: valid enough to be answered (405, 200), some with junk in them."""
    host, port = source
    lines = [
        f"{method} sip:dialin@{ENGINE_HOST}:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-flood-{n}",
        f"From: <sip:scanner@{host}>;tag=f{n}",
        f"To: <sip:dialin@{ENGINE_HOST}>",
        f"Call-ID: flood-{n}@{host}",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        f"X-Junk: {'@' * (n % 50)}",
        "Content-Length: 4",
    ]
    return ("\r\n".join(lines) + "\r\n\r\njunk").encode()


def test_a_flood_of_non_invite_requests_is_dropped_unparsed_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dialbridge.sip.agent as agent_module

    parsed: list[bytes] = []
    real_parse = agent_module.parse_message

    def counting_parse(data: bytes, **kwargs: Any) -> Any:
        parsed.append(data)
        return real_parse(data, **kwargs)

    monkeypatch.setattr(agent_module, "parse_message", counting_parse)
    world = world_with([conversation("room-1")])
    engine = world.engine
    limit = engine.settings.messages_per_source_per_second
    before = (engine.agent.table_sizes(), engine.source_table_sizes())
    methods = ("OPTIONS", "REGISTER", "MESSAGE", "SUBSCRIBE")
    caller = world.phone(host="203.0.113.9")
    start = world.now
    for n in range(20_000):
        engine.receive_sip(_flood_message(methods[n % 4], n), FLOODER, start + n / 20_000)
        if n == 10_000:  # mid-flood, another address calls: answered at once
            world.now = start + n / 20_000
            caller.invite()
            assert caller.statuses() == [100, 180, 200]
        if n == 15_000:  # past the limit, even what could never be parsed costs nothing
            engine.receive_sip(b"\x00garbage that no parser would take", FLOODER, start + n / 20_000)
    world.pump()

    flood_parsed = [data for data in parsed if b"flood-" in data or b"garbage" in data]
    assert len(flood_parsed) == limit  # the rest were dropped before parsing
    assert engine.stats.sip_dropped == 20_001 - limit
    sizes = engine.agent.table_sizes()
    assert sizes["server_transactions"] <= limit + 2  # the flood's answered requests, and the call's INVITE
    assert engine.source_table_sizes()["sip_messages"] == 2  # the flooder and the caller

    world.advance(70.0)  # every transaction's timer and every rate window has run out
    caller.bye()
    world.advance(70.0)
    assert (engine.agent.table_sizes(), engine.source_table_sizes()) == before
    assert world.idle() == IDLE


def _spoofed(n: int) -> Address:
    """The n-th of the many addresses a flood comes from, each in a /24 of its own, each under its own limits."""
    return (f"10.{n >> 8 & 255}.{n & 255}.{n >> 16 & 255 | 1}", 5060)


def test_a_flood_from_many_addresses_is_answered_statelessly_and_holds_nothing() -> None:
    world = world_with([conversation("room-1")])
    engine = world.engine
    before = engine.agent.table_sizes()
    methods = ("OPTIONS", "MESSAGE", "SUBSCRIBE")
    caller = world.phone(host="203.0.113.9")
    start = world.now
    for n in range(20_000):
        at = start + n / 20_000
        engine.receive_sip(_flood_message(methods[n % 3], n, _spoofed(n)), _spoofed(n), at)
        if n == 10_000:  # mid-flood, a normal caller: answered at once
            world.now = at
            caller.invite()
            assert caller.statuses() == [100, 180, 200]
    world.pump()

    answers = [parse_message(data) for _, data in world.stray_sip]
    assert len(answers) == 20_000  # each spoofed request was answered: 200 to OPTIONS, 405 to the rest
    assert {a.status for a in answers if isinstance(a, SipResponse)} == {200, 405}
    assert engine.agent.table_sizes()["server_transactions"] == 1  # the caller's INVITE, no flood request

    world.advance(70.0)  # every timer has run out
    caller.bye()
    world.advance(70.0)
    assert engine.agent.table_sizes() == before
    assert world.idle() == IDLE


def test_invites_beyond_the_server_transaction_cap_get_503_and_calls_in_progress_go_on() -> None:
    cap = 40
    world = world_with([conversation("room-1")], settings=settings_with(max_sip_server_transactions=cap))
    engine = world.engine
    first = world.phone(host="198.51.100.20")
    uuid = connected(world, first)
    start = world.now
    for n in range(200):  # INVITEs and REGISTERs from 200 addresses, never ACKed: each would hold 32 s
        method = "INVITE" if n % 2 else "REGISTER"
        data = _unacked_invite(world, _spoofed(n)) if method == "INVITE" else _flood_message(method, n, _spoofed(n))
        engine.receive_sip(data, _spoofed(n), start + n / 1000)
        assert engine.agent.table_sizes()["server_transactions"] <= cap
    world.pump()
    answers = [parse_message(data) for _, data in world.stray_sip]
    refused = [a for a in answers if isinstance(a, SipResponse) and a.status == 503 and a.to_addr.tag]
    assert refused and all(a.headers.get("Retry-After") for a in refused)
    assert {a.cseq.method for a in refused} == {"INVITE", "REGISTER"}

    # The call in progress: its in-dialog requests are still taken, and it ends as asked.
    first.bye()
    assert first.statuses("BYE") == [200]
    assert world.event(uuid, "completed")
    world.advance(70.0)
    assert world.idle() == IDLE
    second = world.phone(host="198.51.100.21")  # the table has room again
    connected(world, second)
    second.bye()
    assert_idle(world)


def _unacked_invite(world: World, source: Address) -> bytes:
    """An INVITE from `source` by a caller that is not listening: its answers go astray, it never ACKs."""
    caller = world.phone(host=source[0])
    caller.sip_address = source
    caller.auto_ack = False
    world.phones.remove(caller)
    return caller.invite_bytes()


def test_a_source_over_its_message_rate_gets_through_again_a_second_later() -> None:
    world = world_with([conversation("room-1")], settings=settings_with(messages_per_source_per_second=5))
    phone = world.phone(host="203.0.113.10")
    for n in range(5):
        world.engine.receive_sip(_flood_message("OPTIONS", n), phone.sip_address, world.now)
    phone.invite()  # the sixth message in the second: dropped, as UDP loses one; the phone would retransmit
    assert phone.statuses() == []
    world.run(1.0)
    phone.invite()
    assert phone.statuses()[:3] == [100, 180, 200]


def test_the_message_rate_spares_a_trunk_in_the_allow_list() -> None:
    trunk = ipaddress.ip_network("203.0.113.0/24")
    world = world_with(
        [conversation("room-1")],
        settings=settings_with(messages_per_source_per_second=3, allowed_networks=(trunk,)),
    )
    phones = [world.phone(host="203.0.113.5") for _ in range(3)]
    for phone in phones:  # nine messages and more from one address within the second
        phone.invite()
        assert phone.statuses()[:3] == [100, 180, 200]


def _unacked_call(world: World, host: str) -> Phone:
    """An INVITE from `host` whose 200 is never ACKed: a caller that holds a line for 64*T1 at no cost to itself.
    An IPv6 caller writes its SIP as an IPv4 one does (the phone speaks IPv4 only); its packets come from `host`."""
    phone = world.phone(host="192.0.2.200" if ":" in host else host)
    phone.auto_ack = False
    data = phone.invite_bytes()
    phone.sip_address = (host, phone.sip_address[1])  # rport: the engine answers the packet's source
    world.engine.receive_sip(data, phone.sip_address, world.now)
    world.pump()
    return phone


def test_unconfirmed_calls_are_capped_per_network_and_in_all_and_confirmed_callers_still_get_in() -> None:
    world = world_with(
        [conversation("room-1")],
        settings=settings_with(max_calls=10, max_unconfirmed_calls=5, max_unconfirmed_calls_per_network=2),
    )
    first = world.phone(host="198.51.100.20")
    connected(world, first)

    # Many addresses of one /24: two unconfirmed calls, then 503s.
    one_net = [_unacked_call(world, f"203.0.113.{n}") for n in range(10, 16)]
    assert [p.statuses()[-1] for p in one_net] == [200, 200, 503, 503, 503, 503]
    for refused in one_net[2:]:
        assert refused.last(503).headers.get("Retry-After") == "30"
    # An IPv6 caller's network is its /64: a third address in one is refused, the next /64 is not.
    six = [_unacked_call(world, host) for host in ("2001:db8:1:2::1", "2001:db8:1:2:ff::2", "2001:db8:1:2::3")]
    assert [p.statuses()[-1] for p in six] == [200, 200, 503]
    assert _unacked_call(world, "2001:db8:1:3::1").statuses()[-1] == 200
    # The total: five unconfirmed calls are held now, so another network is refused too ...
    assert _unacked_call(world, "192.0.2.77").statuses()[-1] == 503
    assert world.engine.stats.refused[503] == 6

    # ... and the calls already confirmed keep their lines, and MAX_CALLS was never filled.
    assert len(world.engine.calls) == 6
    world.advance(40.0)  # 64*T1: the unACKed calls are hung up
    assert len(world.engine.calls) == 1
    assert world.uuid_of(first) in world.engine.calls

    # ACKed calls do not count: more callers from one /24 than its unconfirmed cap all get in.
    callers = [world.phone(host=f"203.0.113.{n}") for n in range(20, 25)]
    for caller in callers:
        connected(world, caller)
        assert caller.statuses()[:3] == [100, 180, 200]
    assert len(world.engine.calls) == 6
    for phone in (first, *callers):
        phone.bye()
    assert_idle(world)


def test_calls_waiting_for_the_answer_webhook_are_not_unconfirmed_so_a_slow_app_refuses_nobody() -> None:
    """Found by bench/voice.py: 400 callers from one /24 while the answer webhook took ~0.6 s under load had 275
    refused with 503, when a call counted as unconfirmed from its INVITE. Only an answered, unACKed call holds a line
    for an attacker."""
    settings = settings_with(max_calls=20, max_unconfirmed_calls_per_network=2)
    world = World(answer=lambda request: None, settings=settings)
    waiting = [_unacked_call(world, f"203.0.113.{n}") for n in range(10, 16)]  # the app has not answered any yet
    assert [p.statuses()[-1] for p in waiting] == [180] * 6
    assert len(world.held_fetches) == 6 and 503 not in world.engine.stats.refused
    for fetch in world.held_fetches:  # the app answers; nobody ACKs: now they are unconfirmed
        world.engine.answer_fetched(fetch.call_uuid, ok([conversation("room-1")]), world.now)
    world.pump()
    assert _unacked_call(world, "203.0.113.99").statuses()[-1] == 503


def test_a_trunk_in_the_allow_list_is_held_to_the_total_unconfirmed_cap_only() -> None:
    trunk = ipaddress.ip_network("203.0.113.0/24")
    world = world_with(
        [conversation("room-1")],
        settings=settings_with(allowed_networks=(trunk,), max_unconfirmed_calls=3, max_unconfirmed_calls_per_network=1),
    )
    calls = [_unacked_call(world, "203.0.113.5") for _ in range(4)]
    assert [p.statuses()[-1] for p in calls] == [200, 200, 200, 503]


# ---- call control ------------------------------------------------------------------------------------------------


def test_snapshots_show_a_call_while_it_runs_and_after_it_ended() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone(caller="+15550009999")
    phone.invite()
    [fetch] = world.fetches
    uuid = fetch.call_uuid
    world.run(1.0)
    live = world.engine.snapshot(uuid)
    assert live is not None
    assert (live.uuid, live.from_, live.to, live.end_time) == (uuid, "+15550009999", "dialin", None)
    assert live.status == "answered"
    assert live.start_time == NOW
    assert live.conversation == "room-1"
    assert world.engine.snapshots() == [live]
    assert world.engine.snapshots(live.conversation_uuid) == [live]
    assert world.engine.snapshots("CON-other") == []
    assert live.duration == 0  # without a time, as long as it has lasted when answered
    so_far = world.engine.snapshot(uuid, world.now + 10.0)
    assert so_far is not None and so_far.duration == 11 and so_far.end_time is None  # answered at the start
    assert [snap.duration for snap in world.engine.snapshots(now=world.now + 10.0)] == [11]

    world.run(2.0)
    phone.bye()
    ended = world.engine.snapshot(uuid)
    assert ended is not None
    assert ended.status == "completed"
    assert ended.end_time == world.now
    assert ended.duration == 3
    assert ended.conversation is None
    assert world.engine.snapshots() == [ended]
    assert world.engine.snapshot("no-such-call") is None


def test_hangup_sends_bye_and_reports_completed_with_its_reason() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone()
    uuid = connected(world, phone)
    assert world.engine.hangup(uuid, world.now)
    world.tick()
    assert [r.method for r in phone.requests] == ["BYE"]
    assert world.event(uuid, "completed")["reason"] == "hangup"
    assert not world.engine.hangup(uuid, world.now)
    assert not world.engine.transfer(uuid, (), world.now)
    assert_idle(world)


def test_hangup_while_ringing_refuses_the_invite() -> None:
    world = World()
    phone = world.phone()
    phone.invite()
    uuid = world.fetches[0].call_uuid
    assert world.engine.hangup(uuid, world.now)
    world.tick()
    assert phone.statuses()[-1] >= 400
    assert world.statuses(uuid)[-1] in ("cancelled", "rejected", "failed")
    assert_idle(world)


def test_transfer_mid_conference_leaves_the_mixer_and_plays_the_new_ncco() -> None:
    world = world_with([conversation("room-1")])
    a = world.phone(voice=tone(A_HZ, 1.0))
    b = world.phone(voice=tone(B_HZ, 1.0))
    ua = connected(world, a)
    connected(world, b)
    world.run(0.6)
    assert world.engine.transfer(ua, _ncco([talk("transferred"), dtmf_input(time_out=10)]), world.now)
    world.pump()
    assert world.engine.mixer.members("room-1") == [world.uuid_of(b)]
    since = world.now
    world.run(0.8)
    heard = a.heard(since=since + 0.1)
    assert tone_share(heard, GOODBYE_HZ) > 0.8
    assert tone_share(heard, B_HZ) < 0.01
    assert world.engine.snapshot(ua).conversation is None  # type: ignore[union-attr]
    leave = loud_part(b.heard(since=since))
    assert tone_share(leave[: len(leave) // 2], 880.0) > 0.5  # b heard the leave tone
    assert not world.engine.transfer("no-such-call", (), world.now)


def _ncco(actions: list[dict[str, Any]]) -> tuple[Any, ...]:
    result = ok(actions)
    assert result.ncco is not None
    return result.ncco


def test_play_into_call_is_heard_on_top_of_the_conference_until_stopped() -> None:
    world = world_with([conversation("room-1")])
    a = world.phone(voice=tone(A_HZ, 1.0))
    b = world.phone(voice=tone(B_HZ, 1.0))
    ua = connected(world, a)
    connected(world, b)
    world.run(0.6)
    assert world.engine.play_into_call(ua, TalkSource("overlay", loop=0))
    world.pump()
    assert world.prepares[-1].playback_id < 0
    since = world.now
    world.run(1.0)
    heard = a.heard(since=since + 0.1)
    assert tone_share(heard, OVERLAY_HZ) > 0.3
    assert tone_share(heard, B_HZ) > 0.3  # the conference goes on underneath
    assert tone_share(b.heard(since=since), OVERLAY_HZ) < 0.01  # only the call it was played into

    assert world.engine.stop_playing_into_call(ua)
    stopped = world.now
    world.run(0.6)
    heard = a.heard(since=stopped + 0.1)
    assert tone_share(heard, OVERLAY_HZ) < 0.01
    assert tone_share(heard, B_HZ) > 0.8
    assert not world.engine.stop_playing_into_call(ua)  # nothing left to stop
    assert world.engine.play_into_call(ua, StreamSource("https://media.test/x.mp3", loop=1))
    assert not world.engine.play_into_call("no-such-call", TalkSource("overlay"))


def test_send_dtmf_sends_rfc4733_events_to_the_caller() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone(telephone_event=96)
    uuid = connected(world, phone)
    since = world.now
    assert world.engine.send_dtmf(uuid, "19#", world.now)
    world.run(1.2)
    events = [p for p in phone.packets(since) if p.payload_type == 96]
    starts = [p for p in events if p.marker]
    assert len(starts) == 3
    decoded = [parse_telephone_event(p.payload) for p in events]
    digits = "".join("0123456789*#"[e.event] for e, p in zip(decoded, events, strict=True) if p.marker)
    assert digits == "19#"
    for start in starts:
        same = [e for e, p in zip(decoded, events, strict=True) if p.timestamp == start.timestamp]
        assert sum(e.end for e in same) == 3  # the end packet, three times
    assert not world.engine.send_dtmf("no-such-call", "1", world.now)


def test_send_dtmf_to_a_call_without_telephone_event_is_refused_not_raised() -> None:
    world = world_with([conversation("room-1")])
    phone = world.phone(telephone_event=None)
    uuid = connected(world, phone)
    try:
        sent = world.engine.send_dtmf(uuid, "1", world.now)
    except ValueError:
        return  # the CallControl protocol's way to say "not these digits": a 400
    assert sent is False


def test_the_200_ok_is_ready_as_soon_as_the_answer_is_handed_in() -> None:
    world = World()
    phone = world.phone()
    phone.invite()
    [fetch] = world.fetches
    world.engine.answer_fetched(fetch.call_uuid, ok([conversation("room-1")]), world.now)
    sip, _, _ = world.engine.drain()
    assert any(out.data.startswith(b"SIP/2.0 200") for out in sip)


# ---- resource hygiene --------------------------------------------------------------------------------------------


ENDINGS = (
    "remote bye",
    "engine hangup",
    "cancel while ringing",
    "late answer after cancel",
    "input times out",
    "talk runs out",
    "answer webhook fails",
    "early bye",
    "no ack",
    "unknown user",
    "conversation, then bye",
    "end on exit",
)


def test_after_many_calls_with_random_endings_nothing_is_left_once_timers_run_out() -> None:
    rng = random.Random(2024)
    world = world_with([conversation("room-1")], webhook=lambda request: ok(None))
    seen: dict[str, int] = {}
    for n in range(200):
        ending = rng.choice(ENDINGS)
        seen[ending] = seen.get(ending, 0) + 1
        ncco: list[dict[str, Any]] = {
            "input times out": [dtmf_input(time_out=1)],
            "talk runs out": [talk("goodbye")],
            "end on exit": [conversation(f"room-{n % 3}", endOnExit=True)],
        }.get(ending, [conversation(f"room-{n % 3}")])
        world.answer = {
            "cancel while ringing": None,
            "late answer after cancel": None,
            "answer webhook fails": lambda request: failed("HTTP 500"),
            "early bye": None,
        }.get(ending, lambda request, ncco=ncco: ok(ncco))
        phone = world.phone(user="nobody" if ending == "unknown user" else "dialin", codec=rng.choice(["PCMU", "PCMA"]))
        phone.auto_ack = ending != "no ack"
        phone.invite()
        world.run(rng.choice([0.06, 0.2, 0.5]))
        if ending in ("remote bye", "conversation, then bye", "end on exit"):
            phone.bye()
        elif ending == "engine hangup" and phone.uuid is not None:
            world.engine.hangup(phone.uuid, world.now)
        elif ending in ("cancel while ringing", "late answer after cancel"):
            phone.cancel()
            if ending == "late answer after cancel" and phone.uuid is not None:
                world.engine.answer_fetched(phone.uuid, ok([talk("goodbye")]), world.now)
        elif ending == "early bye":
            phone.bye()  # RFC 3261 15: a BYE on the early dialog (the 180's To-tag)
        world.run(rng.choice([0.1, 1.2, 2.0]))
        if phone.uuid is not None and phone.uuid in world.engine.calls and ending not in ("no ack",):
            phone.bye()  # whatever is still up (a conversation without endOnExit) ends now
    assert len(seen) == len(ENDINGS)
    assert_idle(world)
    assert world.engine.mixer.inputs.any() == False  # noqa: E712
    assert world.ports.opened == len(world.fetches) == 200 - seen["unknown user"]
    ended = [e for e in world.events if e["status"] in ("completed", "cancelled", "failed", "rejected")]
    assert len({e["uuid"] for e in ended}) == len({f.call_uuid for f in world.fetches})


def test_a_flood_of_rtp_from_a_foreign_source_is_ignored_and_grows_nothing() -> None:
    inputs: list[SendWebhook] = []
    world = world_with(
        {"+15550000001": [conversation("room-1")], "+15550000002": [dtmf_input(max_digits=1, time_out=10)]},
        webhook=lambda r: kept(inputs, r),
    )
    a = world.phone(caller="+15550000001", voice=tone(A_HZ, 1.0))
    b = world.phone(caller="+15550000001", voice=tone(B_HZ, 1.0))
    listener = world.phone(caller="+15550000002")
    ua = connected(world, a)
    connected(world, b)
    connected(world, listener)
    world.run(0.6)
    port = a.media_port
    assert port is not None
    call = world.engine.calls[ua]
    assert call.rtp is not None
    before = (len(world.engine.calls), len(world.engine._by_port), world.engine.mixer.capacity)
    loud = np.full(160, 0x80, np.uint8).tobytes()  # full-scale PCMU
    since = world.now
    attacker = ("198.18.0.66", 4000)
    for tick in range(50):
        for i in range(200):
            seq = (tick * 200 + i) & 0xFFFF
            world.engine.receive_rtp(port, build_rtp(RtpPacket(0, seq, seq * 160, 0x5EED, loud)), attacker, world.now)
            event = struct.pack("!BBH", 7, 0x80 | 10, 800)
            world.engine.receive_rtp(
                listener.media_port or 0, build_rtp(RtpPacket(101, seq, seq * 7, 0x5EED, event)), attacker, world.now
            )
            world.engine.receive_rtp(port + 2000, b"\x80\x00" + bytes(170), attacker, world.now)  # no call there
        world.tick()
    assert call.rtp.stats.foreign_dropped == 50 * 200
    assert call.rtp.stats.latched == a.rtp_address
    assert tone_share(b.heard(since=since + 0.1), A_HZ) > 0.8  # b still hears a, and only a
    assert inputs == []  # the listener's input got no digit from the flood
    assert (len(world.engine.calls), len(world.engine._by_port), world.engine.mixer.capacity) == before
    assert world.stray_rtp == []


def test_an_early_bye_ends_the_ringing_call() -> None:
    world = World()
    phone = world.phone()
    phone.invite()
    uuid = world.fetches[0].call_uuid
    phone.bye()
    assert phone.statuses("BYE") == [200]
    assert phone.statuses()[-1] == 487
    assert world.statuses(uuid)[-1] == "cancelled"
    world.engine.answer_fetched(uuid, ok([conversation("room-1")]), world.now)
    world.tick()
    assert 200 not in phone.statuses()
    assert_idle(world)


# ---- anything, in any order ---------------------------------------------------------------------------------------


NCCOS: tuple[list[dict[str, Any]], ...] = (
    [conversation("room-1")],
    [conversation("room-1", endOnExit=True)],
    [talk("prompt", barge_in=True), dtmf_input(max_digits=2, time_out=1)],
    [talk("goodbye")],
    [dtmf_input(max_digits=1, time_out=1), conversation("room-2")],
    [{"action": "notify", "payload": {"step": 1}, "eventUrl": [INPUT_URL]}, talk("goodbye")],
)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\r\n")
    kind = rng.randrange(7)
    if kind == 0:
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2 and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    elif kind == 3:
        index = rng.randrange(len(lines))
        lines.insert(index, lines[index])
    elif kind == 4:
        lines = [
            b"Content-Length: %d" % rng.randint(0, 5000) if line.startswith(b"Content-Length") else line
            for line in lines
        ]
    elif kind == 5:
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    else:
        lines = [line.replace(b"SIP/2.0", b"SIP/3.0") if rng.random() < 0.5 else line for line in lines]
    return b"\r\n".join(lines)


_answer_op = st.tuples(st.just("answer"), st.integers(0, 5), st.integers(-2, len(NCCOS) - 1))
operation = st.one_of(
    _answer_op,
    _answer_op,
    st.tuples(st.just("audio"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("invite"), st.integers(0, 2), st.sampled_from(["sdp", "late", "video", "junk"])),
    st.tuples(st.just("bye"), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 2)),
    st.tuples(st.just("info"), st.integers(0, 2), st.sampled_from("12#x")),
    st.tuples(st.just("reinvite"), st.integers(0, 2), st.sampled_from(["sendonly", "sendrecv", "inactive", "none"])),
    st.tuples(st.just("mutated"), st.integers(0, 2), st.integers(0, 2**32)),
    st.tuples(st.just("rtp"), st.integers(0, 2), st.binary(max_size=200)),
    st.tuples(st.just("digit"), st.integers(0, 2), st.sampled_from("0123456789*#")),
    st.tuples(st.just("answer"), st.integers(0, 5), st.integers(-2, len(NCCOS) - 1)),
    st.tuples(st.just("webhook"), st.integers(0, 5), st.sampled_from(["ok", "ncco", "failed", "unknown"])),
    st.tuples(st.just("audio"), st.integers(0, 5), st.booleans()),
    st.tuples(
        st.just("verb"),
        st.integers(0, 2),
        st.sampled_from(["hangup", "transfer", "mute", "earmuff", "play", "stop", "dtmf"]),
    ),
    st.tuples(st.just("tick"), st.integers(1, 40)),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 5.0, 33.0])),
)


def _perform(world: World, phones: list[Phone], op: tuple[Any, ...], rng: random.Random) -> None:
    engine, now = world.engine, world.now
    kind = op[0]
    if kind in ("answer", "webhook", "audio"):
        queues: dict[str, list[Any]] = {
            "answer": world.held_fetches, "webhook": world.held_webhooks, "audio": world.held_audio
        }  # fmt: skip
        held = queues[kind]
        request = held.pop(op[1] % len(held)) if held else None
        uuid = request.call_uuid if request is not None else "no-such-call"
        if kind == "answer":
            result = failed("timeout") if op[2] < 0 else ok(NCCOS[op[2]])
            engine.answer_fetched(uuid if op[2] != -2 else "no-such-call", result, now)
        elif kind == "webhook":
            result = {"ok": ok(None), "ncco": ok(NCCOS[0]), "failed": failed("HTTP 502")}.get(op[2], ok(None))
            request_id = request.request_id if request is not None and op[2] != "unknown" else 999
            engine.webhook_answered(uuid, request_id, result, now)
        else:
            playback = request.playback_id if request is not None else 5
            engine.audio_ready(uuid, playback, tone(300.0, 0.3) if op[2] else None, now)
        world.pump()
        return
    if kind == "tick":
        world.tick(op[1])
        return
    if kind == "wait":
        world.advance(op[1])
        return
    phone = phones[op[1]]
    if kind == "invite":
        sdp = {"sdp": None, "late": None, "video": phone.offer(media="video"), "junk": b"v=0\r\nm=audio x\r\n"}[op[2]]
        phone.invite(sdp, with_sdp=op[2] != "late")
    elif kind == "bye":
        phone.bye()
    elif kind == "cancel":
        phone.cancel()
    elif kind == "info":
        phone.info(op[2])
    elif kind == "reinvite":
        phone.reinvite(None if op[2] == "none" else phone.offer(direction=op[2], version=rng.randint(2, 99)))
    elif kind == "mutated":
        mutation_rng = random.Random(op[2])
        valid = mutation_rng.choice(
            [
                phone.invite_bytes(),
                phone._in_dialog("BYE"),
                phone._in_dialog("INFO", b"Signal=1", "application/dtmf-relay"),
            ]
        )
        engine.receive_sip(_mutate(valid, mutation_rng), phone.sip_address, now)
        world.pump()
    elif kind == "rtp":
        port = phone.media_port if phone.media_port is not None else 40_000
        engine.receive_rtp(port, op[2], phone.rtp_address, now)
        engine.receive_rtcp(port + 1, op[2], phone.rtp_address, now)
    elif kind == "digit":
        phone.key_rfc4733(op[2])
        phone.key_inband(op[2])
    elif kind == "verb":
        uuid = phone.uuid or "no-such-call"
        verb = op[2]
        if verb == "hangup":
            engine.hangup(uuid, now)
        elif verb == "transfer":
            engine.transfer(uuid, _ncco(NCCOS[rng.randrange(len(NCCOS))]), now)
        elif verb == "mute":
            engine.set_muted(uuid, rng.random() < 0.5)
        elif verb == "earmuff":
            engine.set_earmuffed(uuid, rng.random() < 0.5)
        elif verb == "play":
            try:
                engine.play_into_call(uuid, TalkSource("overlay", loop=rng.choice([0, 1])))
            except ValueError:
                assert engine.calls[uuid].runner is None  # refused only while ringing
        elif verb == "stop":
            engine.stop_playing_into_call(uuid)
        else:
            engine.send_dtmf(uuid, "1#", now)
        world.pump()


def run_interleaving(operations: list[tuple[Any, ...]], seed: int) -> None:
    rng = random.Random(seed)
    world = World(seed=seed)
    world.hold_audio = True
    world.audio.update({"prompt": tone(PROMPT_HZ, 0.5), "goodbye": tone(GOODBYE_HZ, 0.3)})
    phones = [world.phone(codec=rng.choice(["PCMU", "PCMA"]), ptime=rng.choice([20, 30])) for _ in range(3)]
    for phone in phones:
        phone.auto_ack = rng.random() < 0.8
        phone.answer_bye = rng.random() < 0.8
        phone.voice = tone(rng.choice([A_HZ, B_HZ, C_HZ]), 1.0)
        if rng.random() < 0.9:
            phone.invite(with_sdp=rng.random() < 0.8)
    for op in operations:
        _perform(world, phones, op, rng)
        world.tick(rng.randint(1, 8))

    # Everyone hangs up; answers still outstanding arrive late; every timer runs out.
    for phone in phones:
        if phone.to_tag is not None and 200 in phone.statuses():
            phone.bye()
        else:
            phone.cancel()
    for uuid in list(world.engine.calls):
        world.engine.hangup(uuid, world.now)
    for fetch in world.held_fetches:
        world.engine.answer_fetched(fetch.call_uuid, ok(NCCOS[0]), world.now)
    world.advance(100.0)
    assert world.idle() == IDLE
    assert world.engine.snapshots()[: len(world.engine.calls)] == []


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(operation, min_size=5, max_size=40), st.integers(0, 2**16))
def test_any_interleaving_of_sip_rtp_webhooks_and_ticks_never_raises_and_ends_with_no_calls(
    operations: list[tuple[Any, ...]], seed: int
) -> None:
    run_interleaving(operations, seed)
