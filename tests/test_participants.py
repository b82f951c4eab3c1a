"""Pure parts of the room's participant list: masking, call states, keypad commands, the joining NCCO."""

from __future__ import annotations

import pytest
from vonage_voice.models import Conversation as VonageConversation
from vonage_voice.models import Input as VonageInput
from vonage_voice.models import Talk as VonageTalk

from dialbridge.conference.callflow import CallFlow
from dialbridge.conference.ncco import Conversation, KeypadInput, Talk, ncco_json
from dialbridge.conference.participants import (
    CallState,
    KeypadCommand,
    call_state,
    keypad_step,
    mask_number,
    phone_participant,
)
from dialbridge.conference.rooms import Room

ROOM = Room("standup", "session-abc", "482913")
KEYPAD_URL = "https://db.example/webhooks/keypad"
FLOW = CallFlow(input_url="https://db.example/webhooks/input", pin_max_digits=6, keypad_url=KEYPAD_URL)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+14155554567", "+1 ••• ••• 4567"),
        ("14155554567", "+1 ••• ••• 4567"),  # Vonage sends numbers without the +
        ("+447700900123", "+44 ••• ••• 0123"),
        ("+79161234567", "+7 ••• ••• 4567"),
        ("+353861234567", "+353 ••• ••• 4567"),
        ("", "Withheld number"),
        ("sip:alice@example.com", "Phone caller"),
        ("sipp", "Phone caller"),
        ("1234", "Phone caller"),  # too short to be a number: shown as nothing of it
    ],
)
def test_masking_keeps_the_country_code_and_last_four_digits_only(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_a_masked_number_holds_no_more_of_the_number_than_its_country_code_and_last_four() -> None:
    number = "+14155559876"
    shown = phone_participant("call-1", number, "in_conference", False).to_json()
    text = repr(shown)
    assert "4155559876" not in text and "415555" not in text and "5559876" not in text
    assert shown["number"] == "+1 ••• ••• 9876" and shown["kind"] == "phone" and shown["speaking"] is None


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("started", CallState.RINGING),
        ("ringing", CallState.RINGING),
        ("answered", CallState.ANSWERED),
        ("awaiting_pin", CallState.ANSWERED),
        ("in_conference", CallState.IN_CONFERENCE),
        ("completed", CallState.ENDED),
        ("busy", CallState.ENDED),
        ("timeout", CallState.ENDED),
        ("failed", CallState.ENDED),
        ("unanswered", CallState.ENDED),
    ],
)
def test_call_states(status: str, state: CallState) -> None:
    assert call_state(status) is state


def test_keypad_star_six_toggles_mute_and_star_one_counts() -> None:
    first = keypad_step("", "*")
    assert first.pending == "*" and first.command is None
    assert keypad_step(first.pending, "6").command is KeypadCommand.TOGGLE_MUTE
    assert keypad_step("*", "1").command is KeypadCommand.COUNT
    assert keypad_step("*", "6").pending == ""  # the command is done: a later 6 alone does nothing


@pytest.mark.parametrize(("pending", "digit"), [("", "6"), ("", "1"), ("*", "2"), ("*", "#"), ("", "#"), ("", "0")])
def test_digits_that_are_not_a_command_do_nothing(pending: str, digit: str) -> None:
    step = keypad_step(pending, digit)
    assert step.command is None and step.pending == ""


def test_a_second_star_starts_the_command_again() -> None:
    assert keypad_step("*", "*").pending == "*"
    assert keypad_step(keypad_step("*", "*").pending, "6").command is KeypadCommand.TOGGLE_MUTE


def test_joining_an_empty_room_says_first_participant_then_keypad_input_then_conversation() -> None:
    alone = FLOW.join_room(ROOM, others_present=0)
    assert alone == (
        Talk(FLOW.prompts.joining),
        Talk(FLOW.prompts.first_participant),
        KeypadInput(KEYPAD_URL),
        Conversation(ROOM.session_id),
    )
    company = FLOW.join_room(ROOM, others_present=2)
    assert FLOW.prompts.first_participant not in repr(company)
    assert isinstance(company[-2], KeypadInput) and company[-1] == Conversation(ROOM.session_id)


def test_without_a_keypad_url_there_is_no_asynchronous_input() -> None:
    flow = CallFlow(input_url="https://db.example/webhooks/input", pin_max_digits=6)
    assert not any(isinstance(action, KeypadInput) for action in flow.join_room(ROOM, others_present=3))


def test_the_joining_ncco_validates_against_vonage_models_and_follows_the_asynchronous_rules() -> None:
    models = {"talk": VonageTalk, "input": VonageInput, "conversation": VonageConversation}
    actions = ncco_json(FLOW.join_room(ROOM, others_present=0))
    for action in actions:
        model = models[action["action"]].model_validate(action)
        dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        # vonage-voice 1.5's Input has no `mode` field (it ignores it); everything else round-trips exactly.
        assert dumped == {key: value for key, value in action.items() if key != "mode"}
    keypad = next(action for action in actions if action["action"] == "input")
    assert keypad["mode"] == "asynchronous"
    assert "dtmf" not in keypad  # Vonage: no dtmf settings in asynchronous mode
    assert keypad["eventUrl"] == [KEYPAD_URL] and keypad["type"] == ["dtmf"]
    # The input comes before the conversation (the conversation holds the call; the input must be set up first)
    kinds = [action["action"] for action in actions]
    assert kinds.index("input") < kinds.index("conversation") == len(kinds) - 1


def test_a_right_pin_joins_through_join_room() -> None:
    decision = FLOW.pin_entered(guessed=True, room=ROOM, failures_on_call=0, caller_guesses_left=10)
    assert decision.ncco == FLOW.join_room(ROOM, others_present=1)
