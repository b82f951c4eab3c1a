"""The NCCO runner, driven as the engine drives it: events in with a fake clock (floats), commands out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.conference.callflow import CallFlow
from dialbridge.conference.ncco import ncco_json
from dialbridge.engine.calls.ncco import Action, Conversation, Input, Notify, Stream, Talk, parse_ncco
from dialbridge.engine.calls.payloads import CallInfo, WebhookResult
from dialbridge.engine.calls.runner import (
    DEFAULT_APOLOGY,
    Command,
    Hangup,
    JoinConversation,
    LeaveConversation,
    NccoRunner,
    Play,
    PostWebhook,
    RunnerState,
    StopPlayback,
    StreamSource,
    TalkSource,
)

T0 = 1_800_000_000.0
CALL = CallInfo(uuid="call-1", conversation_uuid="CON-1", from_="447700900000", to="442079460000")
INPUT_URL = "https://app.example/webhooks/input"
EVENT_URL = "https://app.example/webhooks/events"


def answered(ncco: tuple[Action, ...] | None = None, *, status: int = 200) -> WebhookResult:
    return WebhookResult(ok=True, status=status, ncco=ncco, error=None, elapsed_s=0.01)


def failed(error: str, status: int | None = None) -> WebhookResult:
    return WebhookResult(ok=False, status=status, ncco=None, error=error, elapsed_s=0.01)


def only(commands: list[Command], kind: type) -> object:
    assert len(commands) == 1 and isinstance(commands[0], kind), commands
    return commands[0]


def pin_prompt(max_digits: int = 6, time_out: int = 5) -> tuple[Action, ...]:
    """The dialbridge call flow's answer NCCO, as the app serves it."""
    flow = CallFlow(input_url=INPUT_URL, pin_max_digits=max_digits, input_timeout_s=time_out)
    return parse_ncco(ncco_json(flow.answer(bridge_room=None, caller_guesses_left=5)))


def test_call_flow_answer_digits_during_the_barge_in_talk_then_hash() -> None:
    runner = NccoRunner(CALL)
    play = only(runner.start(pin_prompt(), T0), Play)
    assert isinstance(play, Play) and play.barge_in and isinstance(play.source, TalkSource)
    assert "PIN" in play.source.text
    assert runner.next_timer() is None  # no input timer while the prompt plays

    assert runner.digit("1", T0 + 1) == [StopPlayback(play.playback_id)]
    assert runner.state is RunnerState.COLLECTING and runner.digits == "1"
    assert runner.next_timer() == T0 + 1 + 5
    for offset, key in enumerate("234", start=2):
        assert runner.digit(key, T0 + offset) == []
    post = only(runner.digit("#", T0 + 5), PostWebhook)
    assert isinstance(post, PostWebhook)
    assert (post.url, post.method, post.purpose) == (INPUT_URL, "POST", "input")
    assert post.payload == {
        "speech": {"results": []},
        "dtmf": {"digits": "1234", "timed_out": False},
        "from": "447700900000",
        "to": "442079460000",
        "uuid": "call-1",
        "conversation_uuid": "CON-1",
        "timestamp": "2027-01-15T08:00:05.000Z",
    }
    # A late playback report of the stopped prompt changes nothing.
    assert runner.playback_finished(play.playback_id, T0 + 6) == []
    assert runner.state is RunnerState.AWAITING_WEBHOOK


def test_digits_during_a_talk_without_barge_in_are_dropped() -> None:
    runner = NccoRunner(CALL)
    ncco = (Talk("Welcome."), Input(max_digits=2, time_out=3, event_url=(INPUT_URL,)))
    play = only(runner.start(ncco, T0), Play)
    assert isinstance(play, Play) and not play.barge_in
    assert runner.digit("9", T0 + 0.5) == []
    assert runner.playback_finished(play.playback_id, T0 + 2) == []
    assert runner.state is RunnerState.COLLECTING and runner.digits == ""
    runner.digit("4", T0 + 3)
    post = only(runner.digit("2", T0 + 4), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "42", "timed_out": False}


def test_barge_in_input_starts_after_the_prompt_when_nothing_is_keyed() -> None:
    runner = NccoRunner(CALL)
    play = only(runner.start(pin_prompt(time_out=5), T0), Play)
    assert isinstance(play, Play)
    assert runner.playback_finished(play.playback_id, T0 + 4) == []
    assert runner.next_timer() == T0 + 4 + 5
    assert runner.on_timer(T0 + 8.9) == []
    post = only(runner.on_timer(T0 + 9), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "", "timed_out": True}


def test_barge_in_sticks_until_the_input_and_skips_the_rest_of_the_prompt() -> None:
    runner = NccoRunner(CALL)
    ncco = (
        Talk("one", barge_in=True),
        Stream(("https://app.example/two.mp3",)),  # barge-in too: it comes before the input
        Talk("three"),
        Input(max_digits=1, event_url=(INPUT_URL,)),
    )
    first = only(runner.start(ncco, T0), Play)
    assert isinstance(first, Play)
    second = only(runner.playback_finished(first.playback_id, T0 + 1), Play)
    assert isinstance(second, Play) and second.barge_in and isinstance(second.source, StreamSource)
    commands = runner.digit("7", T0 + 1.5)
    assert commands[0] == StopPlayback(second.playback_id)
    post = commands[1]
    assert isinstance(post, PostWebhook) and post.payload["dtmf"]["digits"] == "7"  # maxDigits 1: at once


def test_submit_on_hash_excludes_the_hash_and_without_it_hash_is_a_digit() -> None:
    runner = NccoRunner(CALL)
    runner.start((Input(max_digits=4, submit_on_hash=True, event_url=(INPUT_URL,)),), T0)
    runner.digit("5", T0)
    post = only(runner.digit("#", T0 + 1), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "5", "timed_out": False}

    plain = NccoRunner(CALL)
    plain.start((Input(max_digits=2, submit_on_hash=False, event_url=(INPUT_URL,)),), T0)
    plain.digit("5", T0)
    post = only(plain.digit("#", T0 + 1), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "5#", "timed_out": False}


def test_max_digits_submits_at_once() -> None:
    runner = NccoRunner(CALL)
    runner.start((Input(max_digits=3, time_out=10, event_url=(INPUT_URL,)),), T0)
    assert runner.digit("1", T0) == [] and runner.digit("2", T0) == []
    post = only(runner.digit("3", T0 + 0.2), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "123", "timed_out": False}
    assert runner.digit("4", T0 + 0.3) == []  # keyed while the webhook is out: dropped
    assert runner.next_timer() is None


def test_time_out_counts_from_the_start_then_from_each_digit() -> None:
    runner = NccoRunner(CALL)
    runner.start((Input(max_digits=6, time_out=3, event_url=(INPUT_URL,)),), T0)
    assert runner.next_timer() == T0 + 3
    runner.digit("8", T0 + 2)
    assert runner.next_timer() == T0 + 5
    assert runner.on_timer(T0 + 3) == []  # the old deadline no longer holds
    post = only(runner.on_timer(T0 + 5), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "8", "timed_out": True}

    silent = NccoRunner(CALL)
    silent.start((Input(time_out=3, event_url=(INPUT_URL,)),), T0)
    post = only(silent.on_timer(T0 + 3), PostWebhook)
    assert isinstance(post, PostWebhook) and post.payload["dtmf"] == {"digits": "", "timed_out": True}


def test_the_input_webhooks_ncco_replaces_the_rest() -> None:
    runner = NccoRunner(CALL)
    ncco = (Input(max_digits=1, event_url=(INPUT_URL,)), Talk("never heard"))
    runner.start(ncco, T0)
    post = only(runner.digit("1", T0), PostWebhook)
    assert isinstance(post, PostWebhook)
    assert runner.webhook_answered(post.request_id + 100, answered((Talk("x"),)), T0) == []  # not ours
    replacement = (Talk("Joining."), Conversation("session-1"))
    play = only(runner.webhook_answered(post.request_id, answered(replacement), T0 + 0.1), Play)
    assert isinstance(play, Play) and play.source == TalkSource("Joining.")
    join = only(runner.playback_finished(play.playback_id, T0 + 2), JoinConversation)
    assert join == JoinConversation("session-1", Conversation("session-1"))
    assert runner.state is RunnerState.IN_CONVERSATION
    assert runner.digit("5", T0 + 3) == []


def test_an_empty_input_answer_carries_on_with_the_rest() -> None:
    runner = NccoRunner(CALL)
    runner.start((Input(max_digits=1, event_url=(INPUT_URL,)), Talk("next")), T0)
    post = only(runner.digit("1", T0), PostWebhook)
    assert isinstance(post, PostWebhook)
    play = only(runner.webhook_answered(post.request_id, answered(None, status=204), T0), Play)
    assert isinstance(play, Play) and play.source == TalkSource("next")


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (failed("connection failed: refused (after a retry)"), "input webhook failed: connection failed"),
        (failed("HTTP 500 (after a retry)", 500), "input webhook failed: HTTP 500"),
        (failed("invalid NCCO: action 0: action 'connect' is not supported", 200), "input webhook failed: invalid"),
    ],
)
def test_a_failed_input_webhook_apologises_and_hangs_up(result: WebhookResult, reason: str) -> None:
    runner = NccoRunner(CALL, apology_text="We are sorry.")
    runner.start((Input(max_digits=1, event_url=(INPUT_URL,)), Talk("never heard")), T0)
    post = only(runner.digit("1", T0), PostWebhook)
    assert isinstance(post, PostWebhook)
    apology = only(runner.webhook_answered(post.request_id, result, T0 + 1), Play)
    assert isinstance(apology, Play) and apology.source == TalkSource("We are sorry.") and not apology.barge_in
    assert runner.digit("2", T0 + 1.5) == []
    hangup = only(runner.playback_finished(apology.playback_id, T0 + 3), Hangup)
    assert isinstance(hangup, Hangup) and hangup.reason.startswith(reason)
    assert runner.state is RunnerState.ENDED and runner.hangup_reason == hangup.reason
    assert runner.digit("3", T0 + 4) == [] and runner.on_timer(T0 + 99) == []


def test_the_ncco_running_out_hangs_up() -> None:
    runner = NccoRunner(CALL)
    play = only(runner.start((Talk("Goodbye."),), T0), Play)
    assert isinstance(play, Play)
    assert runner.playback_finished(play.playback_id, T0 + 1) == [Hangup("ncco_completed")]
    assert NccoRunner(CALL).start((), T0) == [Hangup("ncco_completed")]


def test_talk_loop_reaches_the_engine_and_a_stream_plays_its_url() -> None:
    runner = NccoRunner(CALL)
    ncco = (Talk("Hold on.", loop=3, level=0.5, language="en-GB"), Stream(("https://a.example/m.mp3",), loop=0))
    play = only(runner.start(ncco, T0), Play)
    assert isinstance(play, Play) and play.source == TalkSource("Hold on.", "en-GB", 0.5, 3)
    stream = only(runner.playback_finished(play.playback_id, T0 + 9), Play)
    assert isinstance(stream, Play) and stream.source == StreamSource("https://a.example/m.mp3", 0.0, 0)
    assert stream.playback_id != play.playback_id


def test_conversation_then_conversation_left_runs_the_next_action() -> None:
    runner = NccoRunner(CALL)
    join = only(runner.start((Conversation("room"), Talk("The meeting has ended.")), T0), JoinConversation)
    assert isinstance(join, JoinConversation) and join.name == "room"
    play = only(runner.conversation_left(T0 + 60), Play)
    assert isinstance(play, Play) and play.source == TalkSource("The meeting has ended.")
    assert runner.playback_finished(play.playback_id, T0 + 62) == [Hangup("ncco_completed")]


def test_transfer_replaces_whatever_runs() -> None:
    runner = NccoRunner(CALL)
    play = only(runner.start((Talk("long", loop=0), Talk("never heard")), T0), Play)
    assert isinstance(play, Play)
    commands = runner.transfer((Conversation("elsewhere"),), T0 + 5)
    assert commands == [StopPlayback(play.playback_id), JoinConversation("elsewhere", Conversation("elsewhere"))]
    commands = runner.transfer((Talk("moved again"),), T0 + 6)
    assert commands[0] == LeaveConversation("elsewhere")
    assert isinstance(commands[1], Play) and commands[1].source == TalkSource("moved again")


def test_transfer_while_a_webhook_is_out_forgets_its_answer() -> None:
    runner = NccoRunner(CALL)
    runner.start((Input(max_digits=1, event_url=(INPUT_URL,)),), T0)
    post = only(runner.digit("1", T0), PostWebhook)
    assert isinstance(post, PostWebhook)
    join = only(runner.transfer((Conversation("c"),), T0 + 1), JoinConversation)
    assert isinstance(join, JoinConversation)
    assert runner.webhook_answered(post.request_id, answered((Talk("late"),)), T0 + 2) == []
    assert runner.state is RunnerState.IN_CONVERSATION


def test_notify_waits_for_its_answer_which_may_replace_the_rest() -> None:
    runner = NccoRunner(CALL)
    ncco = (Notify({"step": "menu"}, (EVENT_URL,)), Talk("rest"))
    post = only(runner.start(ncco, T0), PostWebhook)
    assert post == PostWebhook(1, EVENT_URL, "POST", {"step": "menu"}, "notify")
    assert runner.state is RunnerState.AWAITING_WEBHOOK
    play = only(runner.webhook_answered(1, answered((Talk("instead"),)), T0), Play)
    assert isinstance(play, Play) and play.source == TalkSource("instead")


@pytest.mark.parametrize(
    "result", [answered(None, status=204), answered(()), failed("timed out (ReadTimeout) (after a retry)")]
)
def test_notify_carries_on_after_an_empty_or_failed_answer(result: WebhookResult) -> None:
    runner = NccoRunner(CALL)
    post = only(runner.start((Notify({"a": 1}, (EVENT_URL,)), Talk("rest")), T0), PostWebhook)
    assert isinstance(post, PostWebhook)
    play = only(runner.webhook_answered(post.request_id, result, T0), Play)
    assert isinstance(play, Play) and play.source == TalkSource("rest")


def test_an_input_without_event_url_posts_to_the_applications_event_url() -> None:
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    runner.start((Input(max_digits=1),), T0)
    post = only(runner.digit("1", T0), PostWebhook)
    assert isinstance(post, PostWebhook) and post.url == EVENT_URL

    nowhere = NccoRunner(CALL)
    nowhere.start((Input(max_digits=1), Talk("next")), T0)
    play = only(nowhere.digit("1", T0), Play)  # no URL at all: carries on
    assert isinstance(play, Play)


def test_fail_apologises_with_the_default_text_and_hangs_up() -> None:
    runner = NccoRunner(CALL)
    apology = only(runner.fail("answer webhook failed: HTTP 500", T0), Play)
    assert isinstance(apology, Play) and apology.source == TalkSource(DEFAULT_APOLOGY)
    assert runner.playback_finished(apology.playback_id, T0 + 3) == [Hangup("answer webhook failed: HTTP 500")]


def test_start_twice_is_a_programming_error() -> None:
    runner = NccoRunner(CALL)
    runner.start((Conversation("c"),), T0)
    with pytest.raises(RuntimeError):
        runner.start((Conversation("c"),), T0)


# -- any sequence of events keeps the runner consistent ----------------------------------------------------------

NCCOS: list[tuple[Action, ...]] = [
    pin_prompt(),
    (Talk("a", barge_in=True), Stream(("https://a.example/s.mp3",)), Input(max_digits=2, event_url=(INPUT_URL,))),
    (Notify({"n": 1}, (EVENT_URL,)), Conversation("c"), Talk("after")),
    (Input(max_digits=3, time_out=0, submit_on_hash=True), Talk("x", loop=0)),
    (),
]
RESULTS = [answered(None), answered(()), answered((Talk("new"), Conversation("d"))), failed("HTTP 500", 500)]
EVENTS = st.one_of(
    st.tuples(st.just("digit"), st.sampled_from([*"0123456789*#", "A", ""])),
    st.tuples(st.just("finish"), st.integers(0, 2)),
    st.tuples(st.just("timer"), st.floats(0, 12)),
    st.tuples(st.just("answer"), st.integers(0, len(RESULTS) - 1)),
    st.tuples(st.just("left"), st.none()),
    st.tuples(st.just("transfer"), st.integers(0, len(NCCOS) - 1)),
    st.tuples(st.just("fail"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(NCCOS) - 1), st.lists(EVENTS, max_size=25))
def test_any_event_sequence_keeps_the_runner_consistent(start: int, events: list[tuple[str, object]]) -> None:
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    now = T0
    playing: set[int] = set()
    seen_plays: set[int] = set()
    requests: list[int] = []
    hangups = 0

    def apply(commands: list[Command]) -> None:
        nonlocal hangups
        assert hangups == 0 or commands == [], "nothing may follow a Hangup"
        for command in commands:
            if isinstance(command, Play):
                assert command.playback_id not in seen_plays
                seen_plays.add(command.playback_id)
                playing.add(command.playback_id)
            elif isinstance(command, StopPlayback):
                assert command.playback_id in playing
                playing.discard(command.playback_id)
            elif isinstance(command, PostWebhook):
                requests.append(command.request_id)
            elif isinstance(command, Hangup):
                hangups += 1

    apply(runner.start(NCCOS[start], now))
    for kind, value in events:
        if kind == "digit":
            apply(runner.digit(str(value), now))
        elif kind == "finish" and playing:
            playback_id = sorted(playing)[-1 - min(int(str(value)), len(playing) - 1)]
            playing.discard(playback_id)
            apply(runner.playback_finished(playback_id, now))
        elif kind == "timer":
            now += float(str(value))
            apply(runner.on_timer(now))
        elif kind == "answer" and requests:
            apply(runner.webhook_answered(requests[-1], RESULTS[int(str(value))], now))
        elif kind == "left":
            apply(runner.conversation_left(now))
        elif kind == "transfer":
            apply(runner.transfer(NCCOS[int(str(value))], now))
        elif kind == "fail":
            apply(runner.fail("engine failure", now))
        assert (runner.state is RunnerState.ENDED) == (hangups == 1)
        timer = runner.next_timer()
        assert timer is None or runner.state is RunnerState.COLLECTING


# -- asynchronous input (keypad commands during the conversation) -------------------------------------------------

KEYPAD_URL = "https://app.example/webhooks/keypad"


def test_asynchronous_input_does_not_wait_and_posts_each_digit_during_the_conversation() -> None:
    ncco = parse_ncco(
        [
            {"action": "input", "type": ["dtmf"], "mode": "asynchronous", "eventUrl": [KEYPAD_URL]},
            {"action": "conversation", "name": "room-1"},
        ]
    )
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    join = only(runner.start(ncco, T0), JoinConversation)
    assert isinstance(join, JoinConversation) and join.name == "room-1"
    assert runner.next_timer() is None  # nothing to time out: the input does not collect
    posts = [runner.digit("*", T0 + 1), runner.digit("6", T0 + 1.2)]
    for digit, commands in zip("*6", posts, strict=True):
        post = only(commands, PostWebhook)
        assert isinstance(post, PostWebhook)
        assert post.url == KEYPAD_URL and post.purpose == "keypad" and post.method == "POST"
        assert post.payload["dtmf"] == {"digits": digit, "timed_out": False}
        assert post.payload["uuid"] == CALL.uuid
    assert runner.state is RunnerState.IN_CONVERSATION  # the call stays in the conversation
    # An answer to a keypad post changes nothing, whatever it holds.
    first = posts[0][0]
    assert isinstance(first, PostWebhook)
    assert runner.webhook_answered(first.request_id, answered((Talk("x"),)), T0 + 2) == []
    assert runner.state is RunnerState.IN_CONVERSATION


def test_without_an_asynchronous_input_digits_in_a_conversation_are_dropped() -> None:
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    runner.start(parse_ncco([{"action": "conversation", "name": "room-1"}]), T0)
    assert runner.digit("*", T0 + 1) == []


def test_asynchronous_input_without_event_url_posts_to_the_application_event_url() -> None:
    ncco = parse_ncco(
        [{"action": "input", "type": ["dtmf"], "mode": "asynchronous"}, {"action": "conversation", "name": "r"}]
    )
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    runner.start(ncco, T0)
    post = only(runner.digit("5", T0 + 1), PostWebhook)
    assert isinstance(post, PostWebhook) and post.url == EVENT_URL


def test_the_call_flow_joining_ncco_runs_in_the_engine() -> None:
    from dialbridge.conference.rooms import Room

    flow = CallFlow(input_url=INPUT_URL, pin_max_digits=6, keypad_url=KEYPAD_URL)
    ncco = parse_ncco(ncco_json(flow.join_room(Room("r", "session-1", "123456"), others_present=0)))
    runner = NccoRunner(CALL, event_url=EVENT_URL)
    first = only(runner.start(ncco, T0), Play)
    assert isinstance(first, Play)
    second = only(runner.playback_finished(first.playback_id, T0 + 1), Play)
    assert isinstance(second, Play) and isinstance(second.source, TalkSource)
    assert second.source.text == "You are the first participant."
    assert runner.digit("*", T0 + 1.5) == []  # keyed before the input is set up: dropped, as Vonage drops it
    only(runner.playback_finished(second.playback_id, T0 + 2), JoinConversation)
    post = only(runner.digit("*", T0 + 3), PostWebhook)
    assert isinstance(post, PostWebhook) and post.url == KEYPAD_URL


@pytest.mark.parametrize(
    "action",
    [
        {"action": "input", "type": ["dtmf"], "mode": "asynchronous", "dtmf": {"maxDigits": 2}},
        {"action": "input", "type": ["dtmf"], "mode": "sometimes"},
        {"action": "input", "type": ["dtmf", "speech"], "mode": "asynchronous"},
    ],
)
def test_asynchronous_input_rules(action: dict[str, object]) -> None:
    from dialbridge.engine.calls.ncco import NccoError

    with pytest.raises(NccoError):
        parse_ncco([action])
