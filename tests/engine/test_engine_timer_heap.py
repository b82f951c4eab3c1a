"""VoiceEngine's per-call deadlines (NCCO input timeouts, a placed call's length limit, RTCP reports) on heaps: what
a tick costs with thousands of calls with nothing due, and that every deadline still comes at its time while
deadlines come and go (a digit pushes an input's back, a transfer brings one forward), with a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dialbridge.engine.calls import NccoRunner, WebhookResult, parse_ncco
from dialbridge.engine.core import FetchAnswer, SendWebhook
from dialbridge.engine.deadlines import Deadlines
from dialbridge.rtp.session import RtpSession
from tests.engine.fake_engine import TICK, World, ok
from tests.engine.test_voice_engine import conversation, dtmf_input, settings_with

CALLS = 2000


class Asks:
    """Counts the calls of NCCO runners' `next_timer` / `on_timer`, and of RTP sessions' `rtcp_due` made before the
    report was due, whoever makes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runner = 0
        self.rtcp_early = 0
        for name in ("next_timer", "on_timer"):
            monkeypatch.setattr(NccoRunner, name, self._counting(getattr(NccoRunner, name)))
        rtcp_due = RtpSession.rtcp_due

        def counted_rtcp_due(session: RtpSession, now: float) -> bytes | None:
            self.rtcp_early += now < session.rtcp_at
            return rtcp_due(session, now)

        monkeypatch.setattr(RtpSession, "rtcp_due", counted_rtcp_due)

    def _counting(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(runner: NccoRunner, *args: Any) -> Any:
            self.runner += 1
            return method(runner, *args)

        return counted


def _tick_engine(world: World, until: float) -> None:
    """The engine's ticks up to `until`, and `World.pump`'s delivery, but for the phones' RTP, which is no part of
    this (and which `World.pump`, finding each packet's phone in a list, takes seconds a tick to deliver)."""
    phones = {phone.sip_address: phone for phone in world.phones}
    while world.now < until - 1e-9:
        world.now = round(world.now + TICK, 6)
        world.engine.tick(world.now)
        while True:
            sip, rtp, requests = world.engine.drain()
            if not (sip or rtp or requests):
                break
            for out in sip:
                phones[out.destination].on_sip(out.data)
            world.rtcp_out += [packet for packet in rtp if 192 <= packet[1][1] <= 223]
            for request in requests:
                world._handle(request)


def test_a_tick_with_no_ncco_timer_or_rtcp_report_due_asks_no_runner_or_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 answered calls, half collecting digits (a 3 s input timeout), half in a conversation: ticks before
    the timeout ask no runner, and no RTP session for a report before it is due; at 3 s every input times out, at
    its tick, and every call has sent its RTCP reports."""
    inputs: list[tuple[float, SendWebhook]] = []

    def answer(request: FetchAnswer) -> WebhookResult:
        collecting = int(request.query["from"]) % 2
        return ok([dtmf_input(time_out=3), conversation("after")] if collecting else [conversation("idle")])

    def app_input(request: SendWebhook) -> WebhookResult:
        inputs.append((world.now, request))
        return ok(None)

    world = World(settings=settings_with(max_calls=CALLS + 10), answer=answer, webhook=app_input)
    for i in range(CALLS):
        world.phone(caller=f"{i}").invite()
    assert len(world.engine.calls) == CALLS
    answered_at = world.now
    asks = Asks(monkeypatch)
    _tick_engine(world, answered_at + 2.98)
    assert (asks.runner, asks.rtcp_early, inputs) == (0, 0, [])
    _tick_engine(world, answered_at + 3.0)
    assert len(inputs) == CALLS // 2
    assert {at for at, _ in inputs} == {answered_at + 3.0}
    assert all(request.payload["dtmf"] == {"digits": "", "timed_out": True} for _, request in inputs)
    asks.runner = 0
    _tick_engine(world, answered_at + 3.5)
    assert (asks.runner, asks.rtcp_early) == (0, 0)
    reported = {port - 1 for port, _, _ in world.rtcp_out}
    assert reported == {call.port for call in world.engine.calls.values()}  # the first report is due within 3.1 s


def test_input_timeouts_come_at_their_time_as_digits_push_them_back_and_a_transfer_brings_one_forward() -> None:
    """Three callers collecting: one keys nothing (3 s), one keys a digit at 1 s and another at 2.5 s (times out
    at 5.5 s), one is transferred at 0.5 s to an input with a 1 s timeout (times out at 1.5 s, not 3 s)."""
    submitted: dict[str, tuple[float, dict[str, Any]]] = {}

    def app_input(request: SendWebhook) -> WebhookResult:
        submitted[request.call_uuid] = (round(world.now - start, 6), request.payload["dtmf"])
        return ok([conversation("after")])

    world = World(
        settings=settings_with(),
        answer=lambda _: ok([dtmf_input(time_out=3, max_digits=9)]),
        webhook=app_input,
    )
    phones = [world.phone() for _ in range(3)]
    keying = phones[1]
    for phone in phones:
        phone.invite()  # answered at once: the three inputs start now
    start = world.now
    quiet, keyed, transferred = uuids = [world.uuid_of(phone) for phone in phones]
    world.run(0.5)
    world.engine.transfer(transferred, parse_ncco([dtmf_input(time_out=1)]), world.now)
    world.run(0.5)
    keying.key_rfc4733("4")
    world.run(1.5)
    keying.key_rfc4733("2")
    world.run(4.0)
    assert set(submitted) == set(uuids)
    assert submitted[quiet] == (pytest.approx(3.0, abs=TICK / 2), {"digits": "", "timed_out": True})
    assert submitted[transferred] == (pytest.approx(1.5, abs=TICK / 2), {"digits": "", "timed_out": True})
    keyed_at, dtmf = submitted[keyed]
    assert dtmf == {"digits": "42", "timed_out": True}
    assert keyed_at == pytest.approx(2.5 + 3.0, abs=0.1)  # 3 s after the second digit (give or take its packets)


def test_deadlines_come_up_once_in_order_as_they_move_and_go() -> None:
    deadline: dict[str, float] = {"a": 5.0, "b": 3.0, "c": 4.0}
    timers: Deadlines[str] = Deadlines(deadline.get)
    for owner in "abc":
        timers.schedule(owner)
    deadline["a"] = 2.0  # brought forward
    timers.schedule("a")
    deadline["c"] = 6.0  # pushed back
    timers.schedule("c")
    assert [timers.pop_due(now) for now in (1.0, 2.5, 3.0, 5.0)] == [[], ["a"], ["b"], []]
    del deadline["c"]
    timers.forget("c")
    assert timers.pop_due(10.0) == []


def test_deadlines_dropped_long_before_their_time_do_not_pile_up() -> None:
    """Placed calls, each with a length limit two hours ahead, ending within seconds: the heap stays small."""
    deadline: dict[int, float] = {}
    timers: Deadlines[int] = Deadlines(deadline.get)
    for owner in range(10_000):
        deadline[owner] = 7200.0 + owner
        timers.schedule(owner)
        del deadline[owner]
        timers.forget(owner)
    assert len(timers) <= 100


def test_a_runner_failing_on_its_timer_costs_the_others_due_at_that_tick_nothing_but_the_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shell logs a tick that raises and goes on ticking: the calls whose timers were due then still run them
    on the next tick, as they did when every tick asked every runner (the failing one is asked again too)."""
    inputs: list[str] = []
    world = World(
        settings=settings_with(),
        answer=lambda _: ok([dtmf_input(time_out=3), conversation("after")]),
        webhook=lambda request: inputs.append(request.call_uuid) or ok(None),
    )
    phones = [world.phone() for _ in range(3)]
    for phone in phones:
        phone.invite()
    first, *others = [world.uuid_of(phone) for phone in phones]
    on_timer = NccoRunner.on_timer
    failures = [first]

    def failing_once(runner: NccoRunner, now: float) -> Any:
        if runner.call.uuid in failures:
            failures.remove(runner.call.uuid)
            raise RuntimeError("a bug in one call's NCCO")
        return on_timer(runner, now)

    monkeypatch.setattr(NccoRunner, "on_timer", failing_once)
    world.run(2.98)
    with pytest.raises(RuntimeError):
        world.tick()
    assert inputs == []
    world.tick()
    assert sorted(inputs) == sorted([first, *others])
