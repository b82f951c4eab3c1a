"""SipAgent driven by the messages SIPp/baresip send, with a fake clock: exact responses, schedules and cleanup."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialbridge.sip.agent import (
    CallCancelled,
    CallConfirmed,
    CallEnded,
    IncomingCall,
    InfoReceived,
    OfferAnswered,
    OfferReceived,
    Outgoing,
    SipAgent,
    SipEvent,
)
from dialbridge.sip.message import SipParseError, SipRequest, SipResponse, SipStreamFramer, parse_message
from tests.engine.sip_sent import parse_sent

HOST = "203.0.113.10"
PEER = ("192.0.2.20", 5061)
OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\n"
ANSWER = (
    b"v=0\r\no=- 2 2 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\n"
)
HOLD = OFFER.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
CALL_ID = "1-4242@192.0.2.20"


def message(
    method: str,
    *,
    branch: str = "z9hG4bK-4242-1-0",
    cseq: int = 1,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str = "application/sdp",
    via: str = "SIP/2.0/UDP 192.0.2.20:5061",
    extra: str = "",
    uri: str = "sip:1234@203.0.113.10:5060",
    call_id: str = CALL_ID,
    from_tag: str = "4242SIPpTag001",
) -> bytes:
    to = "<sip:1234@203.0.113.10:5060>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via};branch={branch}",
        f'From: "Alice Caller" <sip:+4930555@192.0.2.20:5061>;tag={from_tag}',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.20:5061>",
        "Max-Forwards: 70",
    ]
    if extra:
        lines += extra.strip("\r\n").split("\r\n")
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def invite(**kwargs: object) -> bytes:
    kwargs.setdefault("body", OFFER)
    kwargs.setdefault("extra", "User-Agent: SIPp\r\nX-OpenTok-SessionId: 2_MX4xfn5\r\nx-room: 42")
    return message("INVITE", **kwargs)  # type: ignore[arg-type]


class Harness:
    """An agent, a clock, and the parsed output since the last look."""

    def __init__(self, **kwargs: object) -> None:
        self.agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(7), **kwargs)  # type: ignore[arg-type]
        self.now = 0.0

    def send(self, data: bytes, source: tuple[str, int] = PEER, transport: str = "udp") -> None:
        self.agent.receive(data, source, self.now, transport)

    def take(self) -> tuple[list[SipEvent], list[Outgoing]]:
        return self.agent.drain()

    def responses(self) -> list[SipResponse]:
        events, out = self.take()
        assert events == []
        return [_response(o) for o in out]

    def advance(self, to: float) -> list[tuple[float, Outgoing]]:
        """Run every timer up to `to`, like an event loop would; return what went out and when."""
        sent: list[tuple[float, Outgoing]] = []
        while (deadline := self.agent.next_timer()) is not None and deadline <= to:
            assert deadline >= self.now
            self.now = deadline
            self.agent.on_timer(deadline)
            sent += [(deadline, o) for o in self.agent._outgoing]
            self.agent._outgoing.clear()
        self.now = to
        return sent

    def start_call(self, **kwargs: object) -> tuple[str, str]:
        """INVITE -> 100 -> ringing() -> 180; returns (leg_id, our To-tag)."""
        self.send(invite(**kwargs))
        events, out = self.take()
        assert [_response(o).status for o in out] == [100]
        (call,) = events
        assert isinstance(call, IncomingCall)
        self.agent.ringing(call.leg_id, self.now)
        (ringing,) = self.responses()
        assert ringing.status == 180
        tag = ringing.to_addr.tag
        assert tag
        return call.leg_id, tag

    def confirmed_call(self, **kwargs: object) -> tuple[str, str]:
        leg, tag = self.start_call(**kwargs)
        self.agent.accept(leg, ANSWER, self.now)
        assert [r.status for r in self.responses()] == [200]
        self.send(message("ACK", branch="z9hG4bK-ack-1", to_tag=tag))
        assert self.take() == ([CallConfirmed(leg, None)], [])
        return leg, tag


def _response(out: Outgoing) -> SipResponse:
    parsed = parse_message(out.data)
    assert isinstance(parsed, SipResponse), out.data
    return parsed


def _request(out: Outgoing) -> SipRequest:
    parsed = parse_message(out.data)
    assert isinstance(parsed, SipRequest), out.data
    return parsed


def assert_empty(agent: SipAgent) -> None:
    assert agent.table_sizes() == dict.fromkeys(agent.table_sizes(), 0)
    assert agent.next_timer() is None


# --- the basic call --------------------------------------------------------------------------------------------


def test_invite_gets_100_at_once_and_an_incoming_call_event() -> None:
    h = Harness()
    h.send(invite())
    events, out = h.take()
    assert out == [
        Outgoing(
            b"SIP/2.0 100 Trying\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.20:5061;branch=z9hG4bK-4242-1-0\r\n"
            b'From: "Alice Caller" <sip:+4930555@192.0.2.20:5061>;tag=4242SIPpTag001\r\n'
            b"To: <sip:1234@203.0.113.10:5060>\r\n"
            b"Call-ID: 1-4242@192.0.2.20\r\n"
            b"CSeq: 1 INVITE\r\n"
            b"Server: dialbridge\r\n"
            b"Content-Length: 0\r\n\r\n",
            PEER,
            "udp",
        )
    ]
    (call,) = events
    assert call == IncomingCall(
        leg_id=call.leg_id,
        request_uri="sip:1234@203.0.113.10:5060",
        request_user="1234",
        from_uri="sip:+4930555@192.0.2.20:5061",
        from_user="+4930555",
        from_display="Alice Caller",
        to_uri="sip:1234@203.0.113.10:5060",
        x_headers={"X-OpenTok-SessionId": "2_MX4xfn5", "x-room": "42"},
        sdp=OFFER,
        source=PEER,
        transport="udp",
    )


def test_ringing_accept_ack_with_exact_200_and_its_retransmission_schedule() -> None:
    h = Harness()
    leg, tag = h.start_call(extra="Record-Route: <sip:proxy.example.com;lr>")
    h.now = 1.0
    h.agent.accept(leg, ANSWER, h.now)
    events, out = h.take()
    assert events == []
    (ok,) = out
    assert ok.destination == PEER
    expected = (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 192.0.2.20:5061;branch=z9hG4bK-4242-1-0\r\n"
        'From: "Alice Caller" <sip:+4930555@192.0.2.20:5061>;tag=4242SIPpTag001\r\n'
        f"To: <sip:1234@203.0.113.10:5060>;tag={tag}\r\n"
        "Call-ID: 1-4242@192.0.2.20\r\n"
        "CSeq: 1 INVITE\r\n"
        "Record-Route: <sip:proxy.example.com;lr>\r\n"
        "Contact: <sip:203.0.113.10:5060>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
        "Server: dialbridge\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(ANSWER)}\r\n\r\n"
    ).encode() + ANSWER
    assert ok.data == expected
    # 13.3.1.4: resent at T1, then doubling up to T2, until the ACK.
    resent = h.advance(13.0)
    assert [t for t, _ in resent] == [1.5, 2.5, 4.5, 8.5, 12.5]
    assert all(o.data == expected for _, o in resent)
    h.send(message("ACK", branch="z9hG4bK-ack-1", to_tag=tag))
    assert h.take() == ([CallConfirmed(leg, None)], [])
    assert h.advance(60.0) == []  # nothing more once ACKed
    h.send(message("ACK", branch="z9hG4bK-ack-1", to_tag=tag))  # retransmitted ACK: silently dropped
    assert h.take() == ([], [])


def test_retransmitted_invite_is_absorbed_never_a_second_call() -> None:
    h = Harness()
    leg, tag = h.start_call()
    h.send(invite())
    (again,) = h.responses()
    assert again.status == 180 and again.to_addr.tag == tag  # the latest provisional is resent
    h.agent.accept(leg, ANSWER, h.now)
    h.take()
    h.send(invite())  # RFC 6026 Accepted: absorbed (the leg retransmits the 200 on its own clock)
    assert h.take() == ([], [])


def test_no_ack_within_64_t1_sends_bye_and_ends_the_call() -> None:
    h = Harness()
    leg, _tag = h.start_call()
    h.agent.accept(leg, ANSWER, h.now)
    h.take()
    sent = h.advance(31.9)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    sent = h.advance(32.0)
    assert [t for t, _ in sent] == [32.0]
    bye = _request(sent[0][1])
    assert bye.method == "BYE" and bye.uri == "sip:alice@192.0.2.20:5061"
    assert sent[0][1].destination == ("192.0.2.20", 5061)
    events, _ = h.take()
    assert events == [CallEnded(leg, "ack_timeout")]
    h.send(_reply(bye, 200))
    assert h.take() == ([], [])  # already reported
    h.advance(100.0)
    assert_empty(h.agent)


def _reply(request: SipRequest, status: int) -> bytes:
    """What the peer answers to one of our requests."""
    lines = [f"SIP/2.0 {status} Whatever"]
    lines += [f"Via: {v}" for v in request.headers.get_all("Via")]
    lines += [f"From: {request.headers.get('From')}", f"To: {request.headers.get('To')}"]
    lines += [f"Call-ID: {request.call_id}", f"CSeq: {request.cseq}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_full_call_then_tables_are_empty() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("BYE", branch="z9hG4bK-bye-1", cseq=2, to_tag=tag))
    events, out = h.take()
    assert events == [CallEnded(leg, "bye")]
    (ok,) = [_response(o) for o in out]
    assert (ok.status, ok.to_addr.tag, str(ok.cseq)) == (200, tag, "2 BYE")
    h.send(message("BYE", branch="z9hG4bK-bye-1", cseq=2, to_tag=tag))  # retransmitted BYE
    assert [r.status for r in h.responses()] == [200]
    assert h.agent.table_sizes()["legs"] == 0
    h.advance(100.0)
    assert_empty(h.agent)


# --- rejecting, cancelling -----------------------------------------------------------------------------------------


def test_reject_with_retry_after_and_timer_g_until_ack() -> None:
    h = Harness()
    leg, tag = h.start_call()
    h.agent.reject(leg, 503, h.now, headers={"Retry-After": "30"})
    events, out = h.take()
    assert events == [CallEnded(leg, "rejected")]
    (unavailable,) = [_response(o) for o in out]
    assert unavailable.status == 503 and unavailable.reason == "Service Unavailable"
    assert unavailable.headers.get("Retry-After") == "30"
    assert unavailable.to_addr.tag == tag
    assert [t for t, _ in h.advance(2.0)] == [0.5, 1.5]  # Timer G
    h.send(message("ACK", to_tag=tag))  # same branch as the INVITE: absorbed by the transaction
    assert h.take() == ([], [])
    assert h.advance(3.0) == []
    h.advance(100.0)
    assert_empty(h.agent)


def test_reject_without_ack_ends_at_timer_h() -> None:
    h = Harness()
    leg, _ = h.start_call()
    h.agent.reject(leg, 486, h.now, reason="Busy Here Now")
    _events, out = h.take()
    assert _response(out[0]).reason == "Busy Here Now"
    sent = h.advance(40.0)
    assert sent[-1][0] == 31.5  # last Timer G before Timer H at 32 s
    assert_empty(h.agent)
    with pytest.raises(ValueError):
        h.agent.reject(leg, 200, h.now)


def test_cancel_before_answer() -> None:
    h = Harness()
    leg, tag = h.start_call()
    h.send(message("CANCEL"))
    events, out = h.take()
    assert events == [CallCancelled(leg)]
    cancel_ok, terminated = (_response(o) for o in out)
    assert (cancel_ok.status, str(cancel_ok.cseq)) == (200, "1 CANCEL")
    assert (terminated.status, terminated.reason, str(terminated.cseq)) == (487, "Request Terminated", "1 INVITE")
    assert terminated.to_addr.tag == tag
    h.send(message("ACK", to_tag=tag))
    assert h.take() == ([], [])
    h.agent.accept(leg, ANSWER, h.now)  # the engine raced the CANCEL: ignored
    assert h.take() == ([], [])
    h.advance(100.0)
    assert_empty(h.agent)


def test_cancel_after_200_changes_nothing_and_unknown_cancel_is_481() -> None:
    h = Harness()
    leg, _ = h.start_call()
    h.agent.accept(leg, ANSWER, h.now)
    h.take()
    h.send(message("CANCEL"))
    assert [r.status for r in h.responses()] == [200]
    h.send(message("CANCEL", branch="z9hG4bK-nothing"))
    assert [r.status for r in h.responses()] == [481]


# --- BYE from us ---------------------------------------------------------------------------------------------------


def test_hangup_sends_bye_retransmits_and_ends_on_200() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.agent.hangup(leg, h.now)
    events, out = h.take()
    assert events == []  # CallEnded comes when the BYE completes
    (bye_out,) = out
    bye = _request(bye_out)
    assert bye_out.destination == ("192.0.2.20", 5061) and bye_out.transport == "udp"
    assert bye.uri == "sip:alice@192.0.2.20:5061"  # the remote target (Contact)
    via = bye.top_via
    assert (via.transport, via.host, via.port, via.has_rport) == ("UDP", HOST, 5060, True)
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert bye.headers.get("From") == f"<sip:1234@203.0.113.10:5060>;tag={tag}"
    assert bye.headers.get("To") == '"Alice Caller" <sip:+4930555@192.0.2.20:5061>;tag=4242SIPpTag001'
    assert bye.call_id == CALL_ID and str(bye.cseq) == "1 BYE"
    assert bye.headers.get("Max-Forwards") == "70" and bye.headers.get("User-Agent") == "dialbridge"
    assert bye.headers.get("Route") is None
    assert [t for t, _ in h.advance(2.0)] == [0.5, 1.5]  # Timer E
    h.send(_reply(bye, 200))
    assert h.take() == ([CallEnded(leg, "hangup")], [])
    h.advance(100.0)
    assert_empty(h.agent)


def test_bye_timeout_still_ends_the_call() -> None:
    h = Harness()
    leg, _ = h.confirmed_call()
    h.agent.hangup(leg, h.now)
    h.take()
    sent = h.advance(31.9)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.advance(32.0)
    assert h.take() == ([CallEnded(leg, "hangup")], [])
    assert_empty(h.agent)


def test_bye_follows_the_record_route_set() -> None:
    h = Harness()
    rr = "Record-Route: <sip:edge.example.com:5070;lr>, <sip:core.example.com;lr;transport=udp>"
    leg, _ = h.confirmed_call(extra=rr)
    h.agent.hangup(leg, h.now)
    (out,) = h.take()[1]
    bye = _request(out)
    # 12.1.1: the UAS keeps the Record-Route order; loose routing keeps the remote target as Request-URI.
    assert bye.headers.get_all("Route") == ["<sip:edge.example.com:5070;lr>", "<sip:core.example.com;lr;transport=udp>"]
    assert bye.uri == "sip:alice@192.0.2.20:5061"
    assert out.destination == ("edge.example.com", 5070)


def test_a_next_hop_without_a_port_is_sent_as_such_for_the_shell_to_look_up_its_srv_records() -> None:
    h = Harness()
    leg, _ = h.confirmed_call(extra="Record-Route: <sip:proxy.example.com;lr>")
    h.agent.hangup(leg, h.now)
    (out,) = h.take()[1]
    # RFC 3263 4.2: no port named, so SRV first (the shell's part); 5060 is where it goes without SRV records.
    assert (out.destination, out.port_named) == (("proxy.example.com", 5060), False)
    assert [o.port_named for _, o in h.advance(2.0)] == [False, False]  # its retransmissions too

    h2 = Harness()
    leg2, _ = h2.confirmed_call(extra="Record-Route: <sip:proxy.example.com:5060;lr>")
    h2.agent.hangup(leg2, h2.now)
    (named,) = h2.take()[1]
    assert (named.destination, named.port_named) == (("proxy.example.com", 5060), True)


def test_bye_through_a_strict_router() -> None:
    h = Harness()
    leg, _ = h.confirmed_call(extra="Record-Route: <sip:strict.example.com;maddr=10.0.0.1>")
    h.agent.hangup(leg, h.now)
    (out,) = h.take()[1]
    bye = _request(out)
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == ["<sip:alice@192.0.2.20:5061>"]


def test_hangup_early_is_480_and_hangup_before_ack_waits_for_it() -> None:
    h = Harness()
    leg, _ = h.start_call()
    h.agent.hangup(leg, h.now)
    events, out = h.take()
    assert events == [CallEnded(leg, "hangup")]
    assert [_response(o).status for o in out] == [480]

    h2 = Harness()
    leg2, tag2 = h2.start_call()
    h2.agent.accept(leg2, ANSWER, h2.now)
    h2.take()
    h2.agent.hangup(leg2, h2.now)
    assert h2.take() == ([], [])  # RFC 3261 15: no BYE before the ACK
    h2.send(message("ACK", branch="z9hG4bK-ack", to_tag=tag2))
    events, out = h2.take()
    assert events == []
    assert [_request(o).method for o in out] == ["BYE"]


# --- in-dialog offers and INFO ---------------------------------------------------------------------------------------


def test_reinvite_hold_and_resume() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re-1", cseq=2, to_tag=tag, body=HOLD))
    events, out = h.take()
    assert events == [OfferReceived(leg, HOLD, "INVITE")]
    assert [_response(o).status for o in out] == [100]
    # A second re-INVITE while the first is unanswered: 491.
    h.send(message("INVITE", branch="z9hG4bK-re-2", cseq=3, to_tag=tag, body=OFFER))
    assert [r.status for r in h.responses()] == [100, 491]
    h.agent.answer_offer(leg, ANSWER.replace(b"t=0 0\r\n", b"t=0 0\r\na=recvonly\r\n"), h.now)
    (ok,) = h.responses()
    assert ok.status == 200 and b"a=recvonly" in ok.body and ok.headers.get("Contact") == "<sip:203.0.113.10:5060>"
    assert str(ok.cseq) == "2 INVITE"
    resent = [(t, _response(o).status) for t, o in h.advance(h.now + 1.6)]
    assert [t for t, status in resent if status == 200] == [0.5, 1.5]  # this 2xx is retransmitted too
    assert [t for t, status in resent if status == 491] == [0.5, 1.5]  # (and the 491 by its Timer G)
    h.send(message("ACK", branch="z9hG4bK-ack-2", cseq=2, to_tag=tag))
    assert h.take() == ([], [])  # the offer was in the re-INVITE: nothing new for the engine
    h.send(message("INVITE", branch="z9hG4bK-re-3", cseq=4, to_tag=tag, body=OFFER))
    assert h.take()[0] == [OfferReceived(leg, OFFER, "INVITE")]


def test_hangup_while_a_reinvite_200_awaits_its_ack_sends_one_bye() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re-1", cseq=2, to_tag=tag, body=HOLD))
    h.take()
    h.agent.answer_offer(leg, ANSWER, h.now)
    h.take()
    h.agent.hangup(leg, h.now)
    (bye_out,) = h.take()[1]
    bye = _request(bye_out)
    h.send(_reply(bye, 200))
    assert h.take() == ([CallEnded(leg, "hangup")], [])
    sent = h.advance(100.0)
    assert [_response(o).status for _, o in sent] == []  # no more 200s, no second BYE
    assert_empty(h.agent)


def test_late_offer_initial_and_in_reinvite() -> None:
    h = Harness()
    h.send(invite(body=b""))
    events, _ = h.take()
    (call,) = events
    assert isinstance(call, IncomingCall) and call.sdp is None
    h.agent.accept(call.leg_id, OFFER, h.now)
    (ok,) = h.responses()
    tag = ok.to_addr.tag
    h.send(message("ACK", branch="z9hG4bK-ack-1", to_tag=tag, body=ANSWER))
    assert h.take() == ([CallConfirmed(call.leg_id, ANSWER)], [])
    h.send(message("INVITE", branch="z9hG4bK-re-1", cseq=2, to_tag=tag))
    assert h.take()[0] == [OfferReceived(call.leg_id, None, "INVITE")]
    h.agent.answer_offer(call.leg_id, OFFER, h.now)
    assert [r.body for r in h.responses()] == [OFFER]
    h.send(message("ACK", branch="z9hG4bK-ack-2", cseq=2, to_tag=tag, body=ANSWER))
    assert h.take() == ([OfferAnswered(call.leg_id, ANSWER)], [])


def test_reject_offer_keeps_the_dialog() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re-1", cseq=2, to_tag=tag, body=OFFER))
    h.take()
    h.agent.reject_offer(leg, 488, h.now)
    (rejected,) = h.responses()
    assert (rejected.status, rejected.to_addr.tag) == (488, tag)
    h.send(message("ACK", branch="z9hG4bK-re-1", cseq=2, to_tag=tag))  # non-2xx ACK: absorbed by the transaction
    assert h.take() == ([], [])
    h.send(
        message(
            "INFO",
            branch="z9hG4bK-info",
            cseq=3,
            to_tag=tag,
            body=b"Signal=5\r\nDuration=160\r\n",
            content_type="application/dtmf-relay",
        )
    )
    events, out = h.take()
    assert events == [InfoReceived(leg, "application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")]
    assert [_response(o).status for o in out] == [200]


def test_update_with_offer() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("UPDATE", branch="z9hG4bK-up-1", cseq=2, to_tag=tag, body=HOLD))
    assert h.take() == ([OfferReceived(leg, HOLD, "UPDATE")], [])
    h.agent.answer_offer(leg, ANSWER, h.now)
    (ok,) = h.responses()
    assert (ok.status, str(ok.cseq), ok.body) == (200, "2 UPDATE", ANSWER)
    h.send(message("UPDATE", branch="z9hG4bK-up-2", cseq=3, to_tag=tag))
    assert [r.status for r in h.responses()] == [200]  # no offer: a plain refresh


def test_out_of_order_cseq_is_500() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    h.send(message("INFO", branch="z9hG4bK-i5", cseq=5, to_tag=tag))
    h.take()
    h.send(message("INFO", branch="z9hG4bK-i4", cseq=4, to_tag=tag))
    assert [r.status for r in h.responses()] == [500]


# --- requests the agent answers on its own -------------------------------------------------------------------------


def test_merged_request_is_482() -> None:
    h = Harness()
    h.send(invite())
    events, _ = h.take()
    assert len(events) == 1
    h.send(invite(branch="z9hG4bK-other-path"), source=("192.0.2.99", 5060))
    events, out = h.take()
    assert events == []
    (loop,) = [_response(o) for o in out]
    assert (loop.status, loop.reason) == (482, "Loop Detected")
    assert out[0].destination == ("192.0.2.99", 5061)  # received= the second path's source


def test_requests_in_unknown_dialogs_get_481_and_unknown_acks_are_dropped() -> None:
    h = Harness()
    h.send(message("BYE", cseq=2, to_tag="nope"))
    assert [r.status for r in h.responses()] == [481]
    h.send(message("INVITE", branch="z9hG4bK-re", cseq=2, to_tag="nope", body=OFFER))
    assert [r.status for r in h.responses()] == [481]
    h.send(message("BYE", branch="z9hG4bK-b2", cseq=2))  # BYE outside any dialog
    assert [r.status for r in h.responses()] == [481]
    h.send(message("ACK", to_tag="nope"))
    assert h.take() == ([], [])


def test_options_in_and_out_of_dialog() -> None:
    h = Harness()
    h.send(message("OPTIONS", branch="z9hG4bK-opt"))
    (ok,) = h.responses()
    assert ok.status == 200
    assert ok.headers.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE"]
    assert ok.headers.get("Accept") == "application/sdp"
    assert ok.headers.get("Supported") == ""
    assert ok.to_addr.tag
    _, tag = h.confirmed_call()
    h.send(message("OPTIONS", branch="z9hG4bK-opt2", cseq=2, to_tag=tag))
    assert [r.status for r in h.responses()] == [200]


def test_requests_that_create_nothing_are_answered_without_a_transaction_and_alike_when_retransmitted() -> None:
    h = Harness()
    requests = [
        message("OPTIONS", branch="z9hG4bK-o"),
        message("MESSAGE", branch="z9hG4bK-m", body=b"hi", content_type="text/plain"),
        message("SUBSCRIBE", branch="z9hG4bK-s", extra="Event: presence"),
        message("BYE", branch="z9hG4bK-b", cseq=2),
        message("INFO", branch="z9hG4bK-i", cseq=3, to_tag="no-such-dialog"),
        message("CANCEL", branch="z9hG4bK-no-invite"),
        message("OPTIONS", branch="z9hG4bK-r", extra="Require: foo"),
    ]
    for data in requests:
        h.send(data)
        (first,) = h.take()[1]
        assert h.agent.table_sizes() == dict.fromkeys(h.agent.table_sizes(), 0), data
        h.send(data)  # the retransmission is answered again, the same way (8.2.7: the same To-tag)
        (again,) = h.take()[1]
        assert again == first


def test_server_transactions_are_capped_and_a_call_in_progress_keeps_its_share() -> None:
    h = Harness(max_server_transactions=8)
    _, tag = h.confirmed_call()  # its INVITE transaction: one
    for n in range(20):  # INVITEs from many callers, none answered: each holds a transaction
        h.send(
            invite(branch=f"z9hG4bK-flood-{n}", call_id=f"flood-{n}", from_tag=f"f{n}"), source=(f"10.0.{n}.1", 5060)
        )
    events, out = h.take()
    assert len(events) == 5  # 3/4 of the table for requests outside a dialog: 6, the call's INVITE among them
    refused = [_response(o) for o in out if _response(o).status == 503]
    assert len(refused) == 15 and all(r.headers.get("Retry-After") for r in refused)
    assert h.agent.table_sizes()["server_transactions"] == 6
    h.send(
        message(
            "INFO", branch="z9hG4bK-i1", cseq=2, to_tag=tag, body=b"Signal=1", content_type="application/dtmf-relay"
        )
    )
    h.send(message("BYE", branch="z9hG4bK-bye", cseq=3, to_tag=tag))
    assert [r.status for r in [_response(o) for o in h.take()[1]]] == [200, 200]


def test_unsupported_methods_register_and_require() -> None:
    h = Harness()
    h.send(message("MESSAGE", branch="z9hG4bK-m", body=b"hi", content_type="text/plain"))
    (refused,) = h.responses()
    assert refused.status == 405 and "INVITE" in refused.headers.get_all("Allow")
    h.send(message("REGISTER", branch="z9hG4bK-r", uri="sip:203.0.113.10"))
    assert [r.status for r in h.responses()] == [405]
    h.send(invite(branch="z9hG4bK-req", extra="Require: 100rel"))
    (bad_ext,) = h.responses()
    assert bad_ext.status == 420 and bad_ext.headers.get("Unsupported") == "100rel"


def test_rport_and_received_from_behind_a_nat() -> None:
    h = Harness()
    nat = ("198.51.100.7", 40123)
    h.send(invite(via="SIP/2.0/UDP 10.0.0.5:5060;rport"), source=nat)
    _events, out = h.take()
    (trying,) = out
    assert trying.destination == nat
    assert _response(trying).headers.get("Via") == (
        "SIP/2.0/UDP 10.0.0.5:5060;rport=40123;branch=z9hG4bK-4242-1-0;received=198.51.100.7"
    )
    h2 = Harness()
    h2.send(invite(via="SIP/2.0/UDP 10.0.0.5:5070"), source=nat)
    (trying,) = h2.take()[1]
    assert trying.destination == ("198.51.100.7", 5070)  # no rport: received address, sent-by port
    assert _response(trying).top_via.received == "198.51.100.7"


def test_tcp_answers_on_the_connection_with_a_tcp_contact() -> None:
    h = Harness()
    conn = ("192.0.2.20", 49152)
    h.send(invite(via="SIP/2.0/TCP 192.0.2.20:5061"), source=conn, transport="tcp")
    events, out = h.take()
    assert out[0].destination == conn and out[0].transport == "tcp"
    (call,) = events
    assert isinstance(call, IncomingCall)
    h.agent.accept(call.leg_id, ANSWER, h.now)
    (ok,) = h.take()[1]
    assert _response(ok).headers.get("Contact") == "<sip:203.0.113.10:5060;transport=tcp>"
    tag = _response(ok).to_addr.tag
    h.send(
        message("ACK", via="SIP/2.0/TCP 192.0.2.20:5061", branch="z9hG4bK-a", to_tag=tag), source=conn, transport="tcp"
    )
    h.agent.hangup(call.leg_id, h.now)
    (bye,) = h.take()[1]
    assert (bye.destination, bye.transport) == (conn, "tcp")
    assert _request(bye).top_via.transport == "TCP"
    assert h.agent.next_timer() is not None and h.advance(31.0) == []  # no Timer E on TCP


def test_tcp_peers_are_in_use_while_a_call_or_transaction_needs_their_connection() -> None:
    # The engine closes idle TCP connections, but never one that a call's in-dialog requests come over.
    h = Harness()
    conn = ("192.0.2.20", 49152)
    h.confirmed_call()  # over UDP: no connection to keep
    assert h.agent.reliable_peers_in_use() == set()
    h.send(
        invite(call_id="tcp-call", branch="z9hG4bK-tcp-1", via="SIP/2.0/TCP 192.0.2.20:5061"),
        source=conn,
        transport="tcp",
    )
    (call,) = h.take()[0]
    assert isinstance(call, IncomingCall)
    assert h.agent.reliable_peers_in_use() == {conn}
    h.agent.accept(call.leg_id, ANSWER, h.now)
    tag = _response(h.take()[1][0]).to_addr.tag
    ack = message("ACK", call_id="tcp-call", via="SIP/2.0/TCP 192.0.2.20:5061", branch="z9hG4bK-a", to_tag=tag)
    h.send(ack, source=conn, transport="tcp")
    h.advance(h.now + 100.0)  # the INVITE's transaction is long gone: the dialog alone keeps the connection
    assert h.agent.reliable_peers_in_use() == {conn}
    h.agent.hangup(call.leg_id, h.now)
    (bye,) = h.take()[1]
    h.send(_reply(_request(bye), 200), source=conn, transport="tcp")
    h.take()
    h.advance(h.now + 100.0)
    assert h.agent.reliable_peers_in_use() == set()


def test_malformed_oversized_and_garbage() -> None:
    h = Harness()
    h.send(invite().replace(b"Max-Forwards: 70", b"Max-Forwards: many"))
    (bad,) = h.responses()
    assert (bad.status, bad.reason) == (400, "Bad Request")
    assert (bad.headers.get("Warning") or "").startswith('399 203.0.113.10 "')
    h.send(invite(body=b"a=" + b"x" * 20000))
    (big,) = h.responses()
    assert big.status == 513
    h.send(invite().replace(b"Call-ID: ", b"Call-Idx: "))  # cannot be addressed: dropped
    h.send(b"\x00\x01garbage")
    h.send(b"SIP/2.0 200 OK\r\n\r\n")
    assert h.take() == ([], [])
    h.send(invite(body=b"<xml/>", content_type="application/xml"))
    assert [r.status for r in h.responses()] == [100, 415]
    assert_empty_after(h)


def test_oversized_headers_on_tcp_are_answered_513_like_on_udp() -> None:
    padding = "\r\n".join(f"X-Padding-{i}: {'p' * 100}" for i in range(200))  # 22 kB of headers, no end in sight
    data = invite(extra=padding)
    for transport in ("udp", "tcp"):
        h = Harness()
        if transport == "udp":
            h.send(data)
        else:
            with pytest.raises(SipParseError) as raised:
                SipStreamFramer().feed(data[:17000])  # the head alone is past the limit: no need to wait for its end
            assert raised.value.status == 513
            h.agent.answer_parse_error(raised.value, PEER, "tcp")
        events, out = h.take()
        assert events == []
        (too_big,) = [_response(o) for o in out]
        assert (too_big.status, too_big.call_id, out[0].transport) == (513, CALL_ID, transport)
    with pytest.raises(SipParseError) as unaddressable:  # no Call-ID among the lines received: nothing to answer
        SipStreamFramer().feed(data.replace(b"Call-ID: ", b"Call-Idx: ")[:17000])
    assert unaddressable.value.request is None


def assert_empty_after(h: Harness) -> None:
    h.advance(h.now + 100.0)
    assert_empty(h.agent)


def test_stray_responses_are_dropped() -> None:
    h = Harness()
    h.send(_reply(_request(Outgoing(message("BYE", to_tag="x"), PEER, "udp")), 200))
    assert h.take() == ([], [])


def test_timers_aggregate_across_calls() -> None:
    h = Harness()
    leg1, _ = h.start_call()
    leg2, _ = h.start_call(call_id="second@x", branch="z9hG4bK-2", from_tag="t2")
    h.agent.accept(leg1, ANSWER, 0.0)
    h.now = 0.2
    h.agent.reject(leg2, 404, h.now)
    h.take()
    assert h.agent.next_timer() == 0.5  # leg 1's 2xx retransmission before leg 2's Timer G at 0.7
    sent = h.advance(1.0)
    assert [(t, _response(o).status) for t, o in sent] == [(0.5, 200), (0.7, 404)]


# --- fuzzing the agent ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
RR = "Record-Route: <sip:edge.example.com;lr>, <sip:core.example.com;lr>\r\nRoute: <sip:x.example.com;lr>"
_SEEDS = [
    invite(),
    invite(body=b"", extra=RR),
    message("BYE", cseq=2, to_tag="x"),
    message("CANCEL"),
    message("ACK", to_tag="x"),
    message("OPTIONS", extra="Require: foo"),
    message("INFO", cseq=3, to_tag="y", body=b"Signal=1", content_type="application/dtmf-relay"),
]
# In-dialog seeds: TAGX is replaced by the live dialog's tag after mutation.
_DIALOG_SEEDS = [
    message("INVITE", branch="z9hG4bK-f1", cseq=2, to_tag="TAGX", body=HOLD),
    message("INVITE", branch="z9hG4bK-f2", cseq=3, to_tag="TAGX"),
    message("ACK", branch="z9hG4bK-f3", cseq=2, to_tag="TAGX", body=ANSWER),
    message("UPDATE", branch="z9hG4bK-f4", cseq=4, to_tag="TAGX", body=OFFER),
    message(
        "INFO", branch="z9hG4bK-f5", cseq=5, to_tag="TAGX", body=b"Signal=#", content_type="application/dtmf-relay"
    ),
    message("BYE", branch="z9hG4bK-f6", cseq=6, to_tag="TAGX"),
    message("CANCEL", branch="z9hG4bK-f1", cseq=2, to_tag="TAGX"),
]


def _mutate(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 5))):
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from([b";", b",", b"<", b">", b'"', b"\r\n", b" ", b":", b"\xc3", b"@"]))
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 15))]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 30))]
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    return _mutate(draw, draw(st.sampled_from(_SEEDS)))


@st.composite
def mutated_in_dialog(draw: st.DrawFn) -> bytes:
    return _mutate(draw, draw(st.sampled_from(_DIALOG_SEEDS)))


def _play_engine(agent: SipAgent, now: float, policy: str = "reject") -> None:
    """Answer like a minimal engine (calls per `policy`, offers accepted); check everything sent parses back."""
    events, out = agent.drain()
    for o in out:
        parsed = parse_sent(o.data)  # everything we send must parse back
        if isinstance(parsed, SipResponse):
            assert 100 <= parsed.status <= 699
            for name in ("Via", "From", "To", "Call-ID", "CSeq"):
                assert parsed.headers.get(name) is not None
        assert o.transport in ("udp", "tcp")
    for event in events:
        if isinstance(event, IncomingCall):
            if policy == "reject":
                agent.reject(event.leg_id, 486, now)
            elif policy == "accept":
                agent.accept(event.leg_id, ANSWER, now)
            elif policy == "hangup_early":
                agent.hangup(event.leg_id, now)
            else:
                agent.ringing(event.leg_id, now)
        elif isinstance(event, OfferReceived):
            agent.answer_offer(event.leg_id, ANSWER, now)
        elif isinstance(event, CallConfirmed) and policy == "accept":
            agent.hangup(event.leg_id, now)
    if events:
        _play_engine(agent, now, policy)


def _run_out(agent: SipAgent, now: float) -> None:
    for _ in range(500):
        deadline = agent.next_timer()
        if deadline is None:
            break
        now = max(deadline, now)
        agent.on_timer(now)
        _play_engine(agent, now)
    assert_empty(agent)


POLICIES = st.sampled_from(["reject", "accept", "hangup_early", "ring"])


@FUZZ
@given(st.lists(st.one_of(mutated(), st.binary(max_size=300)), min_size=1, max_size=6), st.booleans(), POLICIES)
def test_fuzz_receive_never_raises(datagrams: list[bytes], tcp: bool, policy: str) -> None:
    agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(1))
    now = 0.0
    for data in datagrams:
        agent.receive(data, PEER, now, "tcp" if tcp else "udp")
        _play_engine(agent, now, policy)
        now += 0.3
        agent.on_timer(now)
        _play_engine(agent, now, policy)
    for leg_id in list(agent._legs):  # calls still ringing or awaiting an ACK: the engine gives up on them
        agent.hangup(leg_id, now)
    _play_engine(agent, now, policy)
    _run_out(agent, now)  # nothing may be left behind


@FUZZ
@given(st.lists(mutated_in_dialog(), min_size=1, max_size=6))
def test_fuzz_in_dialog_never_raises(datagrams: list[bytes]) -> None:
    h = Harness()
    leg, tag = h.confirmed_call(extra=RR)
    for data in datagrams:
        h.agent.receive(data.replace(b"TAGX", tag.encode()), PEER, h.now)
        _play_engine(h.agent, h.now)
        h.now += 0.3
        h.agent.on_timer(h.now)
        _play_engine(h.agent, h.now)
    h.agent.hangup(leg, h.now)
    _play_engine(h.agent, h.now)
    _run_out(h.agent, h.now)


# --- more edges ------------------------------------------------------------------------------------------------


def test_bye_on_an_early_dialog_ends_the_invite_with_487() -> None:
    h = Harness()
    leg, tag = h.start_call()
    h.send(message("BYE", branch="z9hG4bK-early-bye", cseq=2, to_tag=tag))
    events, out = h.take()
    assert events == [CallEnded(leg, "bye")]
    assert [(_response(o).status, str(_response(o).cseq)) for o in out] == [(200, "2 BYE"), (487, "1 INVITE")]


def test_retransmitted_cancel_gets_its_200_again_and_no_second_event() -> None:
    h = Harness()
    h.start_call()
    h.send(message("CANCEL"))
    h.take()
    h.send(message("CANCEL"))
    assert [(r.status, str(r.cseq)) for r in h.responses()] == [(200, "1 CANCEL")]


def test_rfc2543_peer_without_magic_cookie_ack_is_absorbed() -> None:
    h = Harness()
    leg, tag = h.start_call(branch="old-style-1")
    h.agent.reject(leg, 404, h.now)
    h.take()
    h.send(message("ACK", branch="old-style-1", to_tag=tag))
    assert h.take() == ([], [])
    assert h.advance(10.0) == []  # the ACK matched: no Timer G retransmissions


def test_reinvite_2xx_without_ack_tears_the_call_down() -> None:
    h = Harness()
    leg, tag = h.confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re-1", cseq=2, to_tag=tag, body=HOLD))
    h.take()
    h.agent.answer_offer(leg, ANSWER, h.now)
    h.take()
    sent = h.advance(32.0)
    assert _request(sent[-1][1]).method == "BYE" and sent[-1][0] == 32.0
    assert h.take()[0] == [CallEnded(leg, "ack_timeout")]


def test_answer_parse_error_from_the_tcp_framer() -> None:
    h = Harness()
    conn = ("192.0.2.20", 49152)
    framer = SipStreamFramer(max_size=2000)
    with pytest.raises(SipParseError) as info:
        framer.feed(invite(via="SIP/2.0/TCP 192.0.2.20:5061", body=b"x" * 3000))
    h.agent.answer_parse_error(info.value, conn, "tcp")
    (too_big,) = h.take()[1]
    assert (too_big.destination, too_big.transport) == (conn, "tcp")
    assert _response(too_big).status == 513


TCP_VIA = "SIP/2.0/TCP 192.0.2.20:5061"
CONTACT_HOP = ("192.0.2.20", 5061)  # the Contact of `message()`, and the Via's sent-by


def _tcp_call(h: Harness, conn: tuple[str, int]) -> str:
    """A call that came in over the TCP connection from `conn`, answered and ACKed: its leg id."""
    h.send(invite(via=TCP_VIA), source=conn, transport="tcp")
    (call,) = h.take()[0]
    assert isinstance(call, IncomingCall)
    h.agent.accept(call.leg_id, ANSWER, h.now)
    tag = _response(h.take()[1][0]).to_addr.tag
    h.send(message("ACK", via=TCP_VIA, branch="z9hG4bK-a", to_tag=tag), source=conn, transport="tcp")
    assert h.take()[0] == [CallConfirmed(call.leg_id, None)]
    return call.leg_id


def test_a_lost_tcp_connection_ends_no_call_and_the_bye_then_goes_to_the_contact_over_a_new_one() -> None:
    """Proxies close idle TCP connections mid-call (RFC 3261 18): the call goes on; our next request opens anew."""
    h = Harness()
    conn = ("192.0.2.20", 49152)
    leg = _tcp_call(h, conn)
    h.send(invite(via=TCP_VIA, call_id="other@x", branch="z9hG4bK-2"), source=("192.0.2.21", 5060), transport="tcp")
    (other,) = h.take()[0]
    h.agent.transport_failed(conn, h.now)
    assert h.take() == ([], [])
    assert h.agent.table_sizes()["legs"] == 2
    h.agent.hangup(leg, h.now)
    (bye,) = h.take()[1]
    assert (_request(bye).method, bye.destination, bye.transport) == ("BYE", CONTACT_HOP, "tcp")
    assert isinstance(other, IncomingCall)
    h.agent.hangup(other.leg_id, h.now)
    h.take()


def test_a_peer_that_reconnects_makes_its_new_connection_the_calls_flow() -> None:
    h = Harness()
    old, new = ("192.0.2.20", 49152), ("192.0.2.20", 49999)
    leg = _tcp_call(h, old)
    h.agent.transport_failed(old, h.now)
    tag = h.agent._legs[leg].dialog.local_tag
    h.send(message("INFO", via=TCP_VIA, branch="z9hG4bK-i", cseq=2, to_tag=tag), source=new, transport="tcp")
    events, (ok,) = h.take()
    assert [type(e) for e in events] == [InfoReceived]
    assert (_response(ok).status, ok.destination) == (200, new)
    h.agent.hangup(leg, h.now)
    (bye,) = h.take()[1]
    assert (bye.destination, bye.transport) == (new, "tcp")  # the peer's new connection, which it keeps open


def test_a_response_due_on_a_lost_connection_goes_to_the_vias_address_over_a_new_one() -> None:
    h = Harness()
    conn = ("192.0.2.20", 49152)
    h.send(invite(via=TCP_VIA), source=conn, transport="tcp")
    (call,) = h.take()[0]
    assert isinstance(call, IncomingCall)
    h.agent.transport_failed(conn, h.now)  # lost while the engine fetched the answer webhook
    h.agent.accept(call.leg_id, ANSWER, h.now)
    (ok,) = h.take()[1]
    assert (_response(ok).status, ok.destination, ok.transport) == (200, CONTACT_HOP, "tcp")  # RFC 3261 18.2.2


def test_bye_to_an_unreachable_peer_ends_as_hangup() -> None:
    h = Harness()
    leg, _ = h.confirmed_call()
    h.agent.hangup(leg, h.now)
    (bye,) = h.take()[1]
    h.agent.transport_failed(bye.destination, h.now)
    assert h.take() == ([CallEnded(leg, "hangup")], [])
    assert_empty_after(h)
