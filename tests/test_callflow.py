"""The call flow as pure functions, and every NCCO it can produce checked against Vonage's own NCCO models."""

from __future__ import annotations

from typing import Any

import pytest
from vonage_voice.models import Conversation as VonageConversation
from vonage_voice.models import Input as VonageInput
from vonage_voice.models import Talk as VonageTalk

from dialbridge.conference.callflow import CallFlow, PinDecision, PinOutcome
from dialbridge.conference.ncco import Conversation, DtmfInput, Ncco, Talk, ncco_json
from dialbridge.conference.rooms import Room

ROOM = Room("standup", "session-abc", "482913")
FLOW = CallFlow(input_url="https://db.example/webhooks/input", pin_max_digits=6)
VONAGE_MODELS = {"talk": VonageTalk, "input": VonageInput, "conversation": VonageConversation}


def assert_valid_vonage_ncco(ncco: Ncco) -> list[dict[str, Any]]:
    """Each action parses as Vonage's model and serialises back to exactly what we send: nothing unknown."""
    actions = ncco_json(ncco)
    assert actions, "an empty NCCO would leave the caller in silence"
    for action in actions:
        model = VONAGE_MODELS[action["action"]].model_validate(action)
        assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == action
    # A talk with bargeIn must be followed by an input, or Vonage rejects the NCCO.
    for index, action in enumerate(actions):
        if action["action"] == "talk" and action["bargeIn"]:
            assert actions[index + 1]["action"] == "input"
    return actions


def every_ncco_the_flow_produces() -> list[Ncco]:
    produced: list[Ncco] = [
        FLOW.answer(bridge_room=ROOM, caller_guesses_left=10),
        FLOW.answer(bridge_room=None, caller_guesses_left=10),
        FLOW.answer(bridge_room=None, caller_guesses_left=0),
    ]
    for guessed in (True, False):
        for room in (ROOM, None):
            for failures in range(3):
                for left in (0, 1, 2, 10):
                    decision = FLOW.pin_entered(
                        guessed=guessed, room=room, failures_on_call=failures, caller_guesses_left=left
                    )
                    produced.append(decision.ncco)
    return produced


@pytest.mark.parametrize("ncco", every_ncco_the_flow_produces())
def test_every_ncco_validates_against_vonage_models(ncco: Ncco) -> None:
    actions = assert_valid_vonage_ncco(ncco)
    for action in actions:
        if action["action"] == "conversation":
            assert action["name"]


def test_bridge_call_joins_the_conversation_named_after_its_session() -> None:
    assert FLOW.answer(bridge_room=ROOM, caller_guesses_left=0) == (Conversation("session-abc"),)


def test_other_callers_are_asked_for_the_pin_followed_by_hash() -> None:
    talk, collect = FLOW.answer(bridge_room=None, caller_guesses_left=10)
    assert isinstance(talk, Talk) and "PIN" in talk.text and "hash" in talk.text
    assert collect == DtmfInput("https://db.example/webhooks/input", 6, 5, submit_on_hash=True)


def test_locked_out_caller_hears_goodbye_and_nothing_after() -> None:
    ncco = FLOW.answer(bridge_room=None, caller_guesses_left=0)
    assert len(ncco) == 1 and isinstance(ncco[0], Talk) and "Goodbye" in ncco[0].text


def test_right_pin_joins_the_rooms_conversation() -> None:
    decision = FLOW.pin_entered(guessed=True, room=ROOM, failures_on_call=2, caller_guesses_left=1)
    assert decision.outcome is PinOutcome.ACCEPTED
    assert decision.ncco[-1] == Conversation("session-abc")


def test_wrong_pin_says_so_and_asks_again_until_the_third_failure() -> None:
    first = FLOW.pin_entered(guessed=True, room=None, failures_on_call=0, caller_guesses_left=10)
    second = FLOW.pin_entered(guessed=True, room=None, failures_on_call=1, caller_guesses_left=9)
    third = FLOW.pin_entered(guessed=True, room=None, failures_on_call=2, caller_guesses_left=8)
    for decision in (first, second):
        assert decision.outcome is PinOutcome.REJECTED
        assert "not recognised" in decision.ncco[0].to_json()["text"]
        assert isinstance(decision.ncco[-1], DtmfInput)
    assert third.outcome is PinOutcome.EXHAUSTED
    assert len(third.ncco) == 1 and "Goodbye" in third.ncco[0].to_json()["text"]


def test_empty_entry_costs_the_call_an_attempt() -> None:
    decision: PinDecision = FLOW.pin_entered(guessed=False, room=None, failures_on_call=0, caller_guesses_left=1)
    assert decision.outcome is PinOutcome.REJECTED  # not a guess: the caller's last guess is still there


def test_guess_that_uses_up_the_callers_quota_ends_the_call() -> None:
    decision = FLOW.pin_entered(guessed=True, room=None, failures_on_call=0, caller_guesses_left=1)
    assert decision.outcome is PinOutcome.EXHAUSTED
    assert decision.ncco == (Talk(FLOW.prompts.locked_out),)


def test_locked_out_caller_is_refused_even_with_the_right_pin() -> None:
    decision = FLOW.pin_entered(guessed=True, room=ROOM, failures_on_call=0, caller_guesses_left=0)
    assert decision.outcome is PinOutcome.LOCKED_OUT
    assert not any(isinstance(action, Conversation) for action in decision.ncco)


def test_a_conversation_cannot_be_nameless() -> None:
    with pytest.raises(ValueError):
        Conversation("")


def test_input_limits_follow_vonage() -> None:
    with pytest.raises(ValueError):
        DtmfInput("https://x", max_digits=21, time_out_s=5)
    with pytest.raises(ValueError):
        DtmfInput("https://x", max_digits=6, time_out_s=11)
