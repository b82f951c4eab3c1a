"""The NCCO parser: Vonage's defaults and limits, refusals that name the action and field, the call flow's own
NCCOs, agreement with Vonage's `vonage_voice.models`, and fuzzing (anything → actions or NccoError)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vonage_voice.models import ncco as vonage
from vonage_voice.models.input_types import Dtmf

from dialbridge.conference.callflow import CallFlow
from dialbridge.conference.ncco import ncco_json
from dialbridge.conference.rooms import Room
from dialbridge.engine.calls.ncco import (
    Connect,
    Conversation,
    Input,
    NccoError,
    Notify,
    PhoneEndpoint,
    SipEndpoint,
    Stream,
    Talk,
    TransferDestination,
    parse_ncco,
    parse_transfer,
)

EVENTS = "https://app.example/webhooks/input"


def test_defaults_are_vonages() -> None:
    ncco = parse_ncco(
        [
            {"action": "talk", "text": "Hello"},
            {"action": "stream", "streamUrl": ["https://app.example/music.mp3"]},
            {"action": "input", "type": ["dtmf"]},
            {"action": "notify", "payload": {"step": "1"}, "eventUrl": [EVENTS]},
            {"action": "conversation", "name": "room-1"},
        ]
    )
    assert ncco == (
        Talk("Hello", barge_in=False, loop=1, level=0.0, language="en-US", style=0, premium=False),
        Stream(("https://app.example/music.mp3",), level=0.0, barge_in=False, loop=1),
        Input(("dtmf",), max_digits=4, time_out=3, submit_on_hash=False, event_url=None, event_method="POST"),
        Notify({"step": "1"}, (EVENTS,), "POST"),
        Conversation("room-1", None, start_on_enter=True, end_on_exit=False, record=False, mute=False),
    )


def test_every_field_is_read() -> None:
    talk, stream, dtmf, conversation = parse_ncco(
        orjson.dumps(
            [
                {
                    "action": "talk",
                    "text": "Bonjour",
                    "bargeIn": True,
                    "loop": 0,
                    "level": -0.5,
                    "language": "fr-FR",
                    "style": 2,
                    "premium": True,
                },
                {"action": "stream", "streamUrl": ["https://a.example/x.wav"], "level": 1, "bargeIn": True, "loop": 3},
                {
                    "action": "input",
                    "type": ["dtmf"],
                    "dtmf": {"maxDigits": 20, "timeOut": 10, "submitOnHash": True},
                    "eventUrl": [EVENTS],
                    "eventMethod": "get",
                },
                {
                    "action": "conversation",
                    "name": "r",
                    "musicOnHoldUrl": ["https://a.example/hold.mp3"],
                    "startOnEnter": False,
                    "endOnExit": True,
                    "record": True,
                    "canSpeak": ["leg-1"],
                    "canHear": [],
                },
            ]
        )
    )
    assert talk == Talk("Bonjour", True, 0, -0.5, "fr-FR", 2, True)
    assert stream == Stream(("https://a.example/x.wav",), 1.0, True, 3)
    assert dtmf == Input(("dtmf",), 20, 10, True, (EVENTS,), "GET")
    assert conversation == Conversation("r", ("https://a.example/hold.mp3",), False, True, True, ("leg-1",), (), False)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"action": "talk", "text": "x" * 1501}, "action 1 (talk): 'text' must be at most 1500 characters"),
        ({"action": "talk"}, "action 1 (talk): 'text' is required"),
        ({"action": "talk", "text": "hi", "level": 1.5}, "action 1 (talk): 'level' must be a number within -1..1"),
        ({"action": "talk", "text": "hi", "loop": -1}, "action 1 (talk): 'loop' must be at least 0"),
        ({"action": "talk", "text": "hi", "bargeIn": "yes"}, "action 1 (talk): 'bargeIn' must be true or false"),
        (
            {"action": "input", "type": ["dtmf"], "dtmf": {"maxDigits": 21}},
            "action 1 (input): 'dtmf.maxDigits' must be within 1..20",
        ),
        (
            {"action": "input", "type": ["dtmf"], "dtmf": {"timeOut": 11}},
            "action 1 (input): 'dtmf.timeOut' must be within 0..10",
        ),
        ({"action": "input", "type": ["speech"]}, "action 1 (input): 'type' speech input is not supported"),
        ({"action": "input", "type": ["dtmf"], "eventUrl": "https://x"}, "action 1 (input): 'eventUrl' must be an"),
        ({"action": "input", "type": ["dtmf"], "eventMethod": "PUT"}, "action 1 (input): 'eventMethod' must be GET"),
        ({"action": "stream", "streamUrl": ["ftp://x"]}, "action 1 (stream): 'streamUrl' must hold http"),
        ({"action": "conversation", "name": ""}, "action 1 (conversation): 'name' must not be empty"),
        (
            {"action": "conversation", "name": "r", "canSpeak": ["a"], "mute": True},
            "action 1 (conversation): 'mute' cannot be used together with canSpeak",
        ),
        ({"action": "notify", "eventUrl": [EVENTS]}, "action 1 (notify): 'payload' is required"),
        ({"action": "connect", "endpoint": []}, "action 1 (connect): 'endpoint' must be an array of one endpoint"),
        (
            {"action": "connect", "endpoint": [{"type": "websocket", "uri": "wss://x"}]},
            'action 1 (connect): \'endpoint.type\' must be "phone" or "sip"',
        ),
        (
            {"action": "connect", "endpoint": [{"type": "phone", "number": "call me"}]},
            "action 1 (connect): 'endpoint.number' must be a phone number",
        ),
        (
            {"action": "connect", "endpoint": [{"type": "sip", "uri": "sips:a@b"}]},
            "action 1 (connect): 'endpoint.uri' must be a sip: URI",
        ),
        (
            {"action": "connect", "endpoint": [{"type": "sip", "uri": "sip:a@b", "headers": {"A": "x\r\nB: y"}}]},
            "action 1 (connect): 'endpoint.headers' must be an object of header names",
        ),
        (
            {"action": "connect", "endpoint": [{"type": "phone", "number": "1"}], "timeout": 1},
            "action 1 (connect): 'timeout' must be within 3..7200",
        ),
        (
            {"action": "connect", "endpoint": [{"type": "phone", "number": "1"}], "eventType": "async"},
            "action 1 (connect): 'eventType' must be \"synchronous\"",
        ),
        ({"action": "record"}, "action 'record' is not supported by the embedded voice engine"),
        ({"action": "transfer", "conversationId": "c"}, "action 'transfer' is not supported"),
        ({"text": "no action"}, "action 1: 'action' is required"),
        ("talk", "action 1: must be an object"),
    ],
)
def test_refusals_name_the_action_and_field(action: Any, message: str) -> None:
    with pytest.raises(NccoError) as refused:
        parse_ncco([{"action": "talk", "text": "first"}, action])
    assert message in str(refused.value)


def test_dtmf_and_speech_honours_dtmf_and_says_speech_is_ignored() -> None:
    (action,) = parse_ncco([{"action": "input", "type": ["dtmf", "speech"], "speech": {"context": ["sales"]}}])
    assert isinstance(action, Input)
    assert action.types == ("dtmf", "speech")
    assert action.warnings and "speech" in action.warnings[0]
    (plain,) = parse_ncco([{"action": "input", "type": ["dtmf"]}])
    assert isinstance(plain, Input) and plain.warnings == ()


def test_nexmos_original_input_form_is_dtmf() -> None:
    legacy = {"action": "input", "maxDigits": 2, "timeOut": 7, "submitOnHash": True, "eventUrl": [EVENTS]}
    assert parse_ncco([legacy]) == (Input(("dtmf",), 2, 7, True, (EVENTS,), "POST"),)
    assert parse_ncco([{"action": "input"}]) == (Input(),)
    with pytest.raises(NccoError, match=r"action 0 \(input\): 'maxDigits' must be within 1..20"):
        parse_ncco([{"action": "input", "maxDigits": 0}])
    with pytest.raises(NccoError, match=r"'type' is required"):
        parse_ncco([{"action": "input", "dtmf": {"maxDigits": 2}}])


def test_barge_in_needs_a_following_input() -> None:
    parse_ncco(
        [
            {"action": "talk", "text": "a", "bargeIn": True},
            {"action": "stream", "streamUrl": ["https://a.example/b.mp3"]},
            {"action": "input", "type": ["dtmf"]},
        ]
    )
    with pytest.raises(NccoError, match=r"action 0 \(talk\): 'bargeIn' true must be followed by an input"):
        parse_ncco([{"action": "talk", "text": "a", "bargeIn": True}, {"action": "conversation", "name": "r"}])
    with pytest.raises(NccoError, match=r"action 1 \(stream\)"):
        parse_ncco(
            [{"action": "talk", "text": "a"}, {"action": "stream", "streamUrl": ["https://x/y"], "bargeIn": True}]
        )


def test_ssml_tags_do_not_count_towards_the_talk_limit() -> None:
    text = "<speak>" + "a" * 1500 + "</speak>"
    assert parse_ncco([{"action": "talk", "text": text}]) == (Talk(text),)


def test_not_json_and_not_an_array() -> None:
    with pytest.raises(NccoError, match="not valid JSON"):
        parse_ncco(b"[{")
    with pytest.raises(NccoError, match="must be a JSON array"):
        parse_ncco(b'{"action": "talk", "text": "hi"}')
    assert parse_ncco(b"[]") == ()


def test_connect_reads_vonages_fields_and_defaults() -> None:
    [phone, sip] = parse_ncco(
        [
            {"action": "connect", "endpoint": [{"type": "phone", "number": "447700900001"}]},
            {
                "action": "connect",
                "from": "447700900000",
                "timeout": 20,
                "limit": 600,
                "eventUrl": [EVENTS],
                "eventMethod": "GET",
                "eventType": "synchronous",
                "ringbackTone": "https://app.example/ring.mp3",
                "endpoint": [{"type": "sip", "uri": "sip:alice@pbx.example", "headers": {"Room": "42"}}],
            },
        ]
    )
    assert phone == Connect(PhoneEndpoint("447700900001"), timeout=60, limit=7200)
    assert sip == Connect(
        SipEndpoint("sip:alice@pbx.example", (("Room", "42"),)),
        from_="447700900000",
        timeout=20,
        limit=600,
        event_url=(EVENTS,),
        event_method="GET",
        ringback_tone="https://app.example/ring.mp3",
        synchronous=True,
    )


def test_transfer_bodies() -> None:
    inline = parse_transfer(
        {"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "talk", "text": "moved"}]}}
    )
    assert inline == TransferDestination(ncco=(Talk("moved"),))
    by_url = parse_transfer(b'{"action": "transfer", "destination": {"type": "ncco", "url": ["https://a.example/n"]}}')
    assert by_url == TransferDestination(url="https://a.example/n")
    with pytest.raises(NccoError, match="action 0: action 'record' is not supported"):
        parse_transfer({"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "record"}]}})
    with pytest.raises(NccoError, match="destination"):
        parse_transfer({"action": "transfer", "destination": {"type": "ncco"}})
    with pytest.raises(NccoError):
        parse_transfer({"action": "hangup"})


def test_every_ncco_of_the_call_flow_parses() -> None:
    flow = CallFlow(input_url=EVENTS, pin_max_digits=6, input_timeout_s=5)
    room = Room(room_id="r1", session_id="session-1", pin="123456")
    produced = [
        flow.answer(bridge_room=room, caller_guesses_left=5),
        flow.answer(bridge_room=None, caller_guesses_left=0),
        flow.answer(bridge_room=None, caller_guesses_left=5),
    ]
    for guessed, found, failures, left in [
        (True, room, 0, 5),
        (True, None, 0, 5),
        (True, None, 0, 1),
        (False, None, 2, 5),
    ]:
        produced.append(
            flow.pin_entered(guessed=guessed, room=found, failures_on_call=failures, caller_guesses_left=left).ncco
        )
    produced.append(flow.pin_entered(guessed=True, room=None, failures_on_call=0, caller_guesses_left=0).ncco)
    for ncco in produced:
        parsed = parse_ncco(orjson.dumps(ncco_json(ncco)))
        assert len(parsed) == len(ncco)
    asking = parse_ncco(ncco_json(flow.answer(bridge_room=None, caller_guesses_left=5)))
    assert asking == (
        Talk(flow.prompts.ask_pin, barge_in=True),
        Input(("dtmf",), max_digits=6, time_out=5, submit_on_hash=True, event_url=(EVENTS,), event_method="POST"),
    )


# -- agreement with Vonage's own models ---------------------------------------------------------------------------

URLS = st.sampled_from(["https://a.example/one", "http://b.example/two?x=1"])
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="<>"), min_size=1, max_size=40).filter(str.strip)
LEVEL = st.none() | st.sampled_from([-1.0, -0.5, 0.0, 0.3, 1.0])
FLAG = st.none() | st.booleans()
COUNT = st.none() | st.integers(0, 5)


def vonage_talk(
    barge_in: st.SearchStrategy[bool | None] = st.none() | st.just(False),
) -> st.SearchStrategy[vonage.Talk]:
    return st.builds(
        vonage.Talk,
        text=TEXT,
        bargeIn=barge_in,
        loop=COUNT,
        level=LEVEL,
        language=st.none() | st.sampled_from(["en-GB", "de-DE"]),
        style=COUNT,
        premium=FLAG,
    )


def vonage_input() -> st.SearchStrategy[vonage.Input]:
    dtmf = st.builds(
        Dtmf, timeOut=st.none() | st.integers(0, 10), maxDigits=st.none() | st.integers(1, 20), submitOnHash=FLAG
    )
    return st.builds(
        vonage.Input,
        type=st.sampled_from([["dtmf"], ["dtmf", "speech"]]),
        dtmf=st.none() | dtmf,
        eventUrl=st.none() | st.lists(URLS, min_size=1, max_size=2),
        eventMethod=st.none() | st.sampled_from(["GET", "POST"]),
    )


VONAGE_ACTIONS = st.one_of(
    vonage_talk(),
    st.builds(
        vonage.Stream,
        streamUrl=st.lists(URLS, min_size=1, max_size=1),
        level=LEVEL,
        bargeIn=st.none() | st.just(False),
        loop=COUNT,
    ),
    vonage_input(),
    st.builds(
        vonage.Conversation,
        name=TEXT,
        musicOnHoldUrl=st.none() | st.lists(URLS, min_size=1, max_size=1),
        startOnEnter=FLAG,
        endOnExit=FLAG,
        record=FLAG,
        canHear=st.none() | st.lists(TEXT, max_size=2),
    ),
    st.builds(
        vonage.Notify,
        payload=st.dictionaries(TEXT, TEXT, max_size=3),
        eventUrl=st.lists(URLS, min_size=1, max_size=1),
        eventMethod=st.none() | st.sampled_from(["GET", "POST"]),
    ),
)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def expected(model: Any) -> object:
    """What our parser must make of a Vonage model: its values, Vonage's documented defaults where unset."""
    if isinstance(model, vonage.Talk):
        return Talk(
            model.text,
            _or(model.bargeIn, False),
            _or(model.loop, 1),
            _or(model.level, 0.0),
            _or(model.language, "en-US"),
            _or(model.style, 0),
            _or(model.premium, False),
        )
    if isinstance(model, vonage.Stream):
        return Stream(tuple(model.streamUrl), _or(model.level, 0.0), _or(model.bargeIn, False), _or(model.loop, 1))
    if isinstance(model, vonage.Input):
        dtmf = model.dtmf or Dtmf()
        return (
            tuple(model.type),
            _or(dtmf.maxDigits, 4),
            _or(dtmf.timeOut, 3),
            _or(dtmf.submitOnHash, False),
            tuple(model.eventUrl) if model.eventUrl else None,
            _or(model.eventMethod, "POST"),
        )
    if isinstance(model, vonage.Conversation):
        return Conversation(
            model.name,
            tuple(model.musicOnHoldUrl) if model.musicOnHoldUrl else None,
            _or(model.startOnEnter, True),
            _or(model.endOnExit, False),
            _or(model.record, False),
            None,
            tuple(model.canHear) if model.canHear is not None else None,
            False,
        )
    assert isinstance(model, vonage.Notify)
    return Notify(model.payload, tuple(model.eventUrl), _or(model.eventMethod, "POST"))


# A barge-in talk is valid only before an input (Vonage: "the next non-talk action must be an input").
BARGE_IN_PROMPT = st.tuples(vonage_talk(st.just(True)), vonage_input()).map(list)
VONAGE_NCCOS = st.lists(VONAGE_ACTIONS.map(lambda model: [model]) | BARGE_IN_PROMPT, max_size=4).map(
    lambda groups: [model for group in groups for model in group]
)


@settings(max_examples=300, deadline=None)
@given(VONAGE_NCCOS)
def test_agrees_with_vonage_models(models: list[Any]) -> None:
    as_json = [model.model_dump(mode="json", by_alias=True, exclude_none=True) for model in models]
    parsed = parse_ncco(orjson.dumps(as_json))
    for model, action in zip(models, parsed, strict=True):
        if isinstance(action, Input):
            got: object = (
                action.types,
                action.max_digits,
                action.time_out,
                action.submit_on_hash,
                action.event_url,
                action.event_method,
            )
        else:
            got = action
        assert got == expected(model)


def test_vonage_models_accept_the_call_flow_nccos_too() -> None:
    flow = CallFlow(input_url=EVENTS, pin_max_digits=6)
    models = {"talk": vonage.Talk, "input": vonage.Input, "conversation": vonage.Conversation}
    room = Room(room_id="r1", session_id="s", pin="1")
    for ncco in (
        flow.answer(bridge_room=None, caller_guesses_left=3),
        flow.answer(bridge_room=room, caller_guesses_left=3),
    ):
        for action in ncco_json(ncco):
            models[action["action"]].model_validate(action)


# -- fuzzing: anything at all is either an NCCO or an NccoError --------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["action", "text", "bargeIn", "loop", "level", "type", "dtmf", "maxDigits", "timeOut", "submitOnHash",
     "eventUrl", "eventMethod", "name", "payload", "streamUrl", "canSpeak", "mute", "language", "style", "mode"]
)  # fmt: skip
ACTION_NAMES = st.sampled_from(["talk", "stream", "input", "conversation", "notify", "connect", "wait"])
ACTIONISH = st.dictionaries(KEYS, JSON | ACTION_NAMES | st.lists(st.sampled_from(["dtmf", "speech"])), max_size=6).map(
    lambda fields: {**fields, "dtmf": fields["dtmf"]} if "dtmf" in fields else fields
)


def _parses_or_refuses(data: Any) -> None:
    try:
        result = parse_ncco(data)
    except NccoError:
        return
    assert isinstance(result, tuple)
    assert all(isinstance(action, Talk | Stream | Input | Conversation | Notify | Connect) for action in result)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_any_json_value_parses_or_is_refused(data: Any) -> None:
    _parses_or_refuses(data)
    _parses_or_refuses(json.dumps(data))  # the stdlib encodes integers of any size


@settings(max_examples=400, deadline=None)
@given(st.lists(ACTIONISH | st.builds(dict, action=ACTION_NAMES, dtmf=JSON, text=JSON), max_size=4))
def test_action_shaped_json_parses_or_is_refused(data: list[Any]) -> None:
    _parses_or_refuses(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=32))
def test_any_bytes_parse_or_are_refused(data: bytes | str) -> None:
    _parses_or_refuses(data)
