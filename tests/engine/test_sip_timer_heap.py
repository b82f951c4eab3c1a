"""SipAgent's timers: what each tick costs with thousands of calls, and that every deadline still fires on time while
deadlines come and go (transaction retransmissions, 2xx resends until the ACK, ring timeouts), with a fake clock."""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from dialbridge.sip.agent import CallFailed, IncomingCall, OfferReceived, SipAgent, SipEvent
from dialbridge.sip.message import SipRequest, SipResponse, build_response, parse_message
from dialbridge.sip.transaction import T1, T2, _Transaction
from tests.engine.test_sip_agent import ANSWER, HOLD, HOST, PEER, invite, message

TRUNK = ("192.0.2.40", 5060)


class TransactionTouches:
    """Counts every call of a transaction's `next_timer` / `on_timer`, whoever makes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("next_timer", "on_timer"):
            monkeypatch.setattr(_Transaction, name, self._counting(getattr(_Transaction, name)))

    def _counting(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(transaction: _Transaction, *args: Any) -> Any:
            self.count += 1
            return method(transaction, *args)

        return counted


def _confirm_calls(agent: SipAgent, count: int, now: float) -> None:
    """`count` incoming calls, each answered and ACKed at `now`."""
    for i in range(count):
        agent.receive(invite(call_id=f"idle-{i}", branch=f"z9hG4bK-idle-{i}", from_tag=f"f{i}"), PEER, now)
        (call,), _ = agent.drain()
        assert isinstance(call, IncomingCall)
        agent.accept(call.leg_id, ANSWER, now)
        _, (ok,) = agent.drain()
        tag = _parse_response(ok.data).to_addr.tag
        ack = message("ACK", branch=f"z9hG4bK-idle-ack-{i}", to_tag=tag, call_id=f"idle-{i}", from_tag=f"f{i}")
        agent.receive(ack, PEER, now)
        agent.drain()


def test_a_tick_with_no_timer_due_touches_no_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 confirmed calls whose INVITE transactions wait in Accepted (Timer L, 64*T1): a tick before then looks
    at none of them, and next_timer() at one or two."""
    agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(3))
    _confirm_calls(agent, 2000, 0.0)
    assert agent.table_sizes()["server_transactions"] == 2000
    touches = TransactionTouches(monkeypatch)
    for tick in range(1, 50):
        agent.on_timer(tick * 0.02)
    assert touches.count == 0
    assert agent.next_timer() == 64 * T1
    assert touches.count <= 2
    agent.on_timer(64 * T1)  # Timer L for all: each transaction once, and they are gone
    assert agent.table_sizes()["server_transactions"] == 0
    touches.count = 0
    agent.on_timer(64 * T1 + 0.02)
    assert (touches.count, agent.next_timer(), agent.drain()) == (0, None, ([], []))


def _resends(start: float, until: float, *, cap: float | None = T2) -> list[float]:
    """T1, then doubling (up to `cap`) intervals from `start`, strictly before `until`: Timers A, E, G and the 2xx's."""
    times: list[float] = []
    interval, at = T1, start + T1
    while at < until:
        times.append(at)
        interval = 2 * interval if cap is None else min(2 * interval, cap)
        at += interval
    return times


def _parse_request(data: bytes) -> SipRequest:
    parsed = parse_message(data)
    assert isinstance(parsed, SipRequest)
    return parsed


def _parse_response(data: bytes) -> SipResponse:
    parsed = parse_message(data)
    assert isinstance(parsed, SipResponse)
    return parsed


class Timeline:
    """An agent on a fake clock that records when each thing went out or was reported, by (Call-ID or leg, what)."""

    def __init__(self) -> None:
        self.agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(5))
        self.now = 0.0
        self.seen: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.sent: list[bytes] = []  # what the last step sent

    def run_until(self, to: float) -> None:
        """Fire every timer due up to `to` at its own deadline, as the shell does."""
        assert to >= self.now
        while (deadline := self.agent.next_timer()) is not None and deadline <= to:
            assert deadline >= self.now
            self.now = deadline
            self.agent.on_timer(deadline)
            self.record()
        self.now = to

    def record(self) -> list[SipEvent]:
        events, out = self.agent.drain()
        self.sent = [o.data for o in out]
        for data in self.sent:
            parsed = parse_message(data)
            what = parsed.method if isinstance(parsed, SipRequest) else f"{parsed.status} {parsed.cseq.method}"
            self.seen[(parsed.call_id, what)].append(self.now)
        for event in events:
            if isinstance(event, CallFailed):
                self.seen[(event.leg_id, f"failed {event.status}")].append(self.now)
        return events

    def receive(self, data: bytes, source: tuple[str, int] = PEER) -> list[SipEvent]:
        self.agent.receive(data, source, self.now)
        return self.record()

    def incoming(self, name: str) -> str:
        """An INVITE from PEER with Call-ID, branch and From-tag `name`; returns the leg id."""
        (call,) = self.receive(invite(call_id=name, branch=f"z9hG4bK-{name}", from_tag=name))
        assert isinstance(call, IncomingCall)
        return call.leg_id

    def accept(self, leg: str) -> str:
        """accept() the leg; returns our To-tag."""
        self.agent.accept(leg, ANSWER, self.now)
        self.record()
        (ok,) = self.sent
        return _parse_response(ok).to_addr.tag or ""

    def hangup(self, leg: str) -> None:
        self.agent.hangup(leg, self.now)
        self.record()

    def ack(self, name: str, tag: str | None, cseq: int = 1, branch: str | None = None) -> None:
        """The ACK for a 2xx (a transaction of its own), or, with the INVITE's `branch`, for a non-2xx."""
        branch = branch or f"z9hG4bK-{name}-ack{cseq}"
        self.receive(message("ACK", branch=branch, cseq=cseq, to_tag=tag, call_id=name, from_tag=name))


Action = Callable[[], object]


def test_every_timer_fires_at_its_time_while_deadlines_change() -> None:
    """Hundreds of calls, their deadlines set, moved and cancelled at staggered times: each retransmission, 2xx
    resend, timeout and ring timeout happens exactly when RFC 3261 (and dial()'s ring_timeout) say, and no other."""
    t = Timeline()
    expected: dict[tuple[str, str], list[float]] = {}
    actions: list[tuple[float, int, Action]] = []  # (when, order, what): run in time order

    def at(when: float, action: Action) -> None:
        actions.append((when, len(actions), action))

    def answered_call(i: int, start: float) -> None:
        # The 200 is resent until the ACK (every other call ACKs at +2 s, and hangs up at +5 s) or for 64*T1, when a
        # BYE ends the call; nobody answers the BYEs: Timer E resends them until Timer F.
        name = f"answered-{i}"
        leg = t.incoming(name)
        tag = t.accept(leg)
        acked = i % 2 == 0
        give_up = start + 64 * T1
        expected[(name, "100 INVITE")] = [start]
        expected[(name, "200 INVITE")] = [start, *_resends(start, start + 2.0 if acked else give_up)]
        if acked:  # and hung up at +5 s
            at(start + 2.0, lambda: t.ack(name, tag))
            at(start + 5.0, lambda: t.hangup(leg))
        bye_at = start + 5.0 if acked else give_up
        expected[(name, "BYE")] = [bye_at, *_resends(bye_at, bye_at + 64 * T1)]

    def rejected_call(i: int, start: float) -> None:
        # Timer G resends the 486 until the ACK (every third call ACKs at +1 s) or Timer H.
        name = f"rejected-{i}"
        t.agent.reject(t.incoming(name), 486, t.now)
        t.record()
        (busy,) = t.sent
        tag = _parse_response(busy).to_addr.tag
        acked = i % 3 == 0
        expected[(name, "100 INVITE")] = [start]
        expected[(name, "486 INVITE")] = [start, *_resends(start, start + 1.0 if acked else start + 64 * T1)]
        if acked:
            at(start + 1.0, lambda: t.ack(name, tag, branch=f"z9hG4bK-{name}"))

    def dialled_call(i: int, start: float) -> None:
        # A 180 at +0.2 s stops Timers A and B; the ring timeout then fails the call and CANCELs it, and the CANCEL,
        # never answered, is resent until its Timer F. Every fourth call gets no response at all: Timer A resends
        # the INVITE (doubling, no cap) until Timer B fails it.
        ring_timeout = 3.0 + (i % 7) * 0.41
        rings = i % 4 != 0
        leg = t.agent.dial(
            f"sip:+1415555{i:04d}@trunk.example.com",
            destination=TRUNK,
            transport="udp",
            sdp=ANSWER,
            now=t.now,
            from_uri="sip:gateway@203.0.113.10",
            ring_timeout=ring_timeout if rings else None,
        )
        t.record()
        (sent,) = t.sent
        request = _parse_request(sent)
        if rings:
            at(start + 0.2, lambda: t.receive(build_response(request, 180, to_tag=f"callee-{i}").to_bytes(), TRUNK))
            cancel_at = start + ring_timeout
            expected[(request.call_id, "INVITE")] = [start]
            expected[(leg, "failed 408")] = [cancel_at]
            expected[(request.call_id, "CANCEL")] = [cancel_at, *_resends(cancel_at, cancel_at + 64 * T1)]
        else:
            expected[(request.call_id, "INVITE")] = [start, *_resends(start, start + 64 * T1, cap=None)]
            expected[(leg, "failed 408")] = [start + 64 * T1]

    for i in range(90):
        start = i * 0.037
        for kind in (answered_call, rejected_call, dialled_call):
            at(start, functools.partial(kind, i, start))
    while actions:
        actions.sort()
        when, _, action = actions.pop(0)
        t.run_until(when)
        action()
    t.run_until(500.0)
    assert sorted(t.seen) == sorted(expected)
    for key, times in expected.items():
        assert t.seen[key] == pytest.approx(times, abs=1e-9), key
    assert t.agent.table_sizes() == dict.fromkeys(t.agent.table_sizes(), 0)
    assert t.agent.next_timer() is None


def test_a_reinvite_answer_is_resent_until_its_ack() -> None:
    """A deadline that appears on a confirmed call (the 2xx to a re-INVITE) fires on time and stops at the ACK."""
    t = Timeline()
    leg = t.incoming("reinvited")
    tag = t.accept(leg)
    t.ack("reinvited", tag)
    t.run_until(100.0)
    reinvite = message(
        "INVITE", branch="z9hG4bK-re", cseq=2, to_tag=tag, call_id="reinvited", from_tag="reinvited", body=HOLD
    )
    assert [type(event) for event in t.receive(reinvite)] == [OfferReceived]
    t.agent.answer_offer(leg, ANSWER, t.now)
    t.record()
    t.run_until(105.0)
    t.ack("reinvited", tag, cseq=2)
    t.run_until(300.0)
    assert t.seen[("reinvited", "200 INVITE")] == pytest.approx([0.0, 100.0, *_resends(100.0, 105.0)], abs=1e-9)
