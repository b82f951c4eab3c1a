"""SipAgent.dial(): outbound calls (UAC), sans-I/O with a fake clock, then against SIPp as a real UAS."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from dialbridge.sip import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallProgress,
    InfoReceived,
    OfferReceived,
    Outgoing,
    SipAgent,
    SipEvent,
)
from dialbridge.sip.auth import DigestCredentials, build_challenge, parse_params, verify_authorization
from dialbridge.sip.message import Headers, SipRequest, SipResponse, build_response, parse_message
from tests.aio import run_in_thread
from tests.engine import sipp

HOST = "203.0.113.10"
TRUNK = ("192.0.2.20", 5060)  # where dial() sends the INVITE
CALLEE = ("192.0.2.30", 5070)  # the callee's Contact: in-dialog requests go there (no Record-Route)
URI = "sip:+14155550100@trunk.example.com"
OFFER = b"v=0\r\no=- 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
CREDS = DigestCredentials("gateway", "s3cret")
REALM = "trunk.example.com"


def _request(out: Outgoing) -> SipRequest:
    parsed = parse_message(out.data)
    assert isinstance(parsed, SipRequest), out.data
    return parsed


class Uac:
    """An agent, a fake clock, and helpers to play the far end."""

    def __init__(self) -> None:
        self.agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(11))
        self.now = 0.0
        self.timer_events: list[tuple[float, SipEvent]] = []  # what advance() saw, with when

    def dial(self, transport: str = "udp", **kwargs: object) -> tuple[str, SipRequest]:
        leg = self.agent.dial(
            URI,
            destination=TRUNK,
            transport=transport,
            sdp=OFFER,
            now=self.now,
            from_uri="sip:gateway@203.0.113.10",
            from_display="Room 42",
            headers={"X-OpenTok-SessionId": "2_MX4xfn5"},
            **kwargs,  # type: ignore[arg-type]
        )
        events, out = self.agent.drain()
        assert events == []
        (sent,) = out
        assert (sent.destination, sent.transport) == (TRUNK, transport)
        return leg, _request(sent)

    def reply(
        self,
        request: SipRequest,
        status: int,
        *,
        tag: str | None = "callee-1",
        sdp: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        transport: str = "udp",
    ) -> SipResponse:
        extra = list(headers or [])
        if 180 <= status < 300:
            extra.append(("Contact", f"<sip:bob@{CALLEE[0]}:{CALLEE[1]}>"))
        if sdp:
            extra.append(("Content-Type", "application/sdp"))
        response = build_response(request, status, to_tag=tag, headers=extra, body=sdp)
        self.agent.receive(response.to_bytes(), TRUNK, self.now, transport)
        return response

    def callee_replies(self, request: SipRequest, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        """The callee answers `request`, one of ours in the dialog (a BYE), from its Contact address."""
        self.agent.receive(build_response(request, status, headers=headers).to_bytes(), CALLEE, self.now)

    def take(self) -> tuple[list[SipEvent], list[Outgoing]]:
        return self.agent.drain()

    def advance(self, to: float) -> list[tuple[float, Outgoing]]:
        sent: list[tuple[float, Outgoing]] = []
        while (deadline := self.agent.next_timer()) is not None and deadline <= to:
            self.now = deadline
            self.agent.on_timer(deadline)
            events, out = self.take()
            sent += [(deadline, o) for o in out]
            self.timer_events += [(deadline, e) for e in events]
        self.now = to
        return sent

    def answered(self, **kwargs: object) -> tuple[str, SipRequest, SipResponse]:
        leg, invite = self.dial(**kwargs)
        ok = self.reply(invite, 200, sdp=ANSWER)
        events, out = self.take()
        assert events == [CallAnswered(leg, ANSWER)]
        assert [_request(o).method for o in out] == ["ACK"]
        return leg, invite, ok

    def hung_up(self, **kwargs: object) -> tuple[str, SipRequest, SipResponse, Outgoing]:
        """answered(**kwargs), then hangup(): the BYE goes out, nothing is reported yet."""
        leg, invite, ok = self.answered(**kwargs)
        self.agent.hangup(leg, self.now)
        events, (bye_out,) = self.take()
        assert events == []
        return leg, invite, ok, bye_out

    def from_peer(self, method: str, ok: SipResponse, cseq: int, body: bytes = b"", content_type: str = "") -> None:
        """A request the callee sends in the dialog its 2xx `ok` created (From/To swapped)."""
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {CALLEE[0]}:{CALLEE[1]};branch=z9hG4bK-peer-{method}-{cseq}")
        headers.add("From", ok.headers.get("To") or "")
        headers.add("To", ok.headers.get("From") or "")
        headers.add("Call-ID", ok.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        headers.add("Contact", f"<sip:bob@{CALLEE[0]}:{CALLEE[1]}>")
        headers.add("Max-Forwards", "70")
        if body:
            headers.add("Content-Type", content_type)
        request = SipRequest(method=method, uri=f"sip:{HOST}:5060", headers=headers, body=body)
        self.agent.receive(request.to_bytes(), CALLEE, self.now)


def assert_empty(agent: SipAgent) -> None:
    assert agent.table_sizes() == dict.fromkeys(agent.table_sizes(), 0)
    assert agent.next_timer() is None


# --- the INVITE and a normal answer ---------------------------------------------------------------------------------


def test_invite_headers() -> None:
    u = Uac()
    _, invite = u.dial()
    assert invite.method == "INVITE" and invite.uri == URI
    via = invite.top_via
    assert via.transport == "UDP" and via.sent_by == f"{HOST}:5060"
    assert via.has_rport and via.branch is not None and via.branch.startswith("z9hG4bK")
    assert invite.from_addr.display_name == "Room 42" and str(invite.from_addr.uri) == "sip:gateway@203.0.113.10"
    assert invite.from_addr.tag
    assert invite.to_addr.tag is None and str(invite.to_addr.uri) == URI
    assert invite.cseq.method == "INVITE" and 1 <= invite.cseq.number < 2**31
    assert [str(c.uri) for c in invite.contacts] == [f"sip:{HOST}:5060"]
    assert invite.headers.get("X-OpenTok-SessionId") == "2_MX4xfn5"
    assert invite.content_type == "application/sdp" and invite.body == OFFER
    # Random-ish per call: two dials share no Call-ID, tag or CSeq start.
    _, other = u.dial()
    assert other.call_id != invite.call_id and other.from_addr.tag != invite.from_addr.tag
    assert other.top_via.branch != via.branch and other.cseq.number != invite.cseq.number


def test_ringing_then_answer_acks_the_2xx_in_the_dialog() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 100, tag=None)
    assert u.take() == ([], [])  # 100 is hop-by-hop: no event
    u.reply(invite, 180)
    assert u.take() == ([CallProgress(leg, 180, "Ringing", None)], [])
    ok = u.reply(invite, 200, sdp=ANSWER)
    events, out = u.take()
    assert events == [CallAnswered(leg, ANSWER)]
    (ack_out,) = out
    assert (ack_out.destination, ack_out.transport) == (CALLEE, "udp")  # the 2xx's Contact, not the trunk
    ack = _request(ack_out)
    assert ack.method == "ACK" and ack.uri == f"sip:bob@{CALLEE[0]}:{CALLEE[1]}"
    assert ack.cseq.number == invite.cseq.number and ack.cseq.method == "ACK"
    assert ack.top_via.branch != invite.top_via.branch  # 2xx ACK is a transaction of its own (13.2.2.4)
    assert ack.call_id == invite.call_id
    assert ack.from_addr.tag == invite.from_addr.tag and ack.to_addr.tag == ok.to_addr.tag == "callee-1"
    assert u.agent.table_sizes()["dialogs"] == 1


def test_ack_follows_the_record_route() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 200, sdp=ANSWER, headers=[("Record-Route", "<sip:192.0.2.40:5080;lr>")])
    events, (ack_out,) = u.take()
    assert events == [CallAnswered(leg, ANSWER)]
    assert ack_out.destination == ("192.0.2.40", 5080)
    assert _request(ack_out).headers.get_all("Route") == ["<sip:192.0.2.40:5080;lr>"]


def test_183_reports_early_media_sdp() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 183, sdp=ANSWER)
    assert u.take() == ([CallProgress(leg, 183, "Session Progress", ANSWER)], [])


def test_retransmitted_2xx_is_acked_again_without_a_second_event() -> None:
    u = Uac()
    _leg, invite = u.dial()
    ok = u.reply(invite, 200, sdp=ANSWER)
    _, (first_ack,) = u.take()
    u.now = 0.5
    u.agent.receive(ok.to_bytes(), TRUNK, u.now)
    assert u.take() == ([], [first_ack])


def test_second_2xx_from_another_fork_is_acked_and_byed() -> None:
    u = Uac()
    _leg, invite = u.dial()
    u.reply(invite, 200, sdp=ANSWER)
    u.take()
    u.reply(invite, 200, tag="callee-2", sdp=ANSWER)
    events, out = u.take()
    assert events == []
    ack, bye = (_request(o) for o in out)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    assert ack.to_addr.tag == bye.to_addr.tag == "callee-2"
    assert bye.cseq.number == invite.cseq.number + 1
    assert u.agent.table_sizes()["dialogs"] == 1  # only the first dialog is ours


# --- failures -------------------------------------------------------------------------------------------------------


def test_busy_fails_and_the_transaction_acks() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 180)
    u.take()
    u.reply(invite, 486)
    events, out = u.take()
    assert events == [CallFailed(leg, 486, "Busy Here")]
    (ack_out,) = out
    ack = _request(ack_out)
    assert ack_out.destination == TRUNK  # non-2xx ACK: hop by hop, same branch as the INVITE (17.1.1.3)
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert ack.cseq.number == invite.cseq.number and ack.to_addr.tag == "callee-1"
    u.advance(40.0)
    assert_empty(u.agent)


def test_timer_a_retransmits_and_timer_b_fails_with_408() -> None:
    u = Uac()
    leg, invite = u.dial()
    sent = u.advance(40.0)
    resent = [(when, _request(o)) for when, o in sent]
    assert [when for when, _ in resent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(r.to_bytes() == invite.to_bytes() for _, r in resent)
    assert u.timer_events == [(32.0, CallFailed(leg, 408, "Request Timeout"))]  # Timer B = 64*T1
    assert_empty(u.agent)


def test_tcp_acks_and_byes_on_the_invites_connection() -> None:
    u = Uac()
    leg, invite = u.dial(transport="tcp")
    assert invite.top_via.transport == "TCP" and str(invite.contacts[0].uri) == f"sip:{HOST}:5060;transport=tcp"
    u.reply(invite, 200, sdp=ANSWER, transport="tcp")
    events, (ack_out,) = u.take()
    assert events == [CallAnswered(leg, ANSWER)]
    assert (ack_out.destination, ack_out.transport) == (TRUNK, "tcp")  # not the Contact: the same connection
    u.agent.hangup(leg, u.now)
    _, (bye_out,) = u.take()
    assert (bye_out.destination, bye_out.transport) == (TRUNK, "tcp") and _request(bye_out).method == "BYE"
    u.agent.transport_failed(TRUNK, u.now)
    assert u.take()[0] == [CallEnded(leg, "hangup")]


def test_bad_dial_arguments_raise() -> None:
    agent = SipAgent(contact_host=HOST, contact_port=5060)
    good: dict[str, Any] = {
        "destination": TRUNK, "transport": "udp", "sdp": OFFER, "now": 0.0, "from_uri": "sip:gw@203.0.113.10",
    }  # fmt: skip
    for override in (
        {"transport": "sctp"},
        {"sdp": b""},
        {"from_uri": "http://x"},
        {"headers": {"Call-ID": "mine"}},
        {"headers": {"X-Evil": "a\r\nBYE: x"}},
    ):
        with pytest.raises(ValueError):
            agent.dial(URI, **{**good, **override})
    assert agent.drain() == ([], [])
    assert_empty(agent)


def test_tcp_sends_once_and_a_transport_failure_is_503() -> None:
    u = Uac()
    leg, _ = u.dial(transport="tcp")
    assert u.advance(10.0) == []  # reliable transport: no Timer A
    u.agent.transport_failed(TRUNK, u.now)
    events, _ = u.take()
    assert events == [CallFailed(leg, 503, "Service Unavailable")]
    assert_empty(u.agent)


# --- digest authentication ------------------------------------------------------------------------------------------


def _challenge(nonce: str, *, algorithm: str = "SHA-256", stale: bool = False) -> tuple[str, str]:
    return ("Proxy-Authenticate", build_challenge(REALM, nonce, algorithm=algorithm, opaque="op", stale=stale))


def test_407_then_200_with_a_correct_proxy_authorization() -> None:
    u = Uac()
    leg, first = u.dial(credentials=CREDS)
    # MD5 listed first; RFC 8760 says take SHA-256.
    u.reply(first, 407, headers=[_challenge("n-md5", algorithm="MD5"), _challenge("n-sha")])
    events, out = u.take()
    assert events == []
    ack, second = (_request(o) for o in out)
    assert ack.method == "ACK" and ack.top_via.branch == first.top_via.branch  # the 407's ACK
    assert second.method == "INVITE"
    assert second.top_via.branch != first.top_via.branch
    assert second.cseq.number == first.cseq.number + 1
    assert second.call_id == first.call_id and second.from_addr.tag == first.from_addr.tag
    assert second.body == OFFER and second.headers.get("X-OpenTok-SessionId") == "2_MX4xfn5"
    answer = second.headers.get("Proxy-Authorization")
    assert answer is not None and second.headers.get("Authorization") is None
    _, params = parse_params(answer)
    assert params["algorithm"] == "SHA-256" and params["uri"] == URI and params["opaque"] == "op"
    assert verify_authorization(answer, method="INVITE", credentials=CREDS, realm=REALM, nonce="n-sha")
    assert not verify_authorization(answer, method="INVITE", credentials=DigestCredentials("gateway", "wrong"))

    u.reply(second, 200, sdp=ANSWER)
    events, (ack_out,) = u.take()
    assert events == [CallAnswered(leg, ANSWER)]
    ack2 = _request(ack_out)
    assert ack2.cseq.number == second.cseq.number
    assert ack2.headers.get("Proxy-Authorization") == answer  # 13.2.2.4: same credentials as the INVITE


def test_401_is_answered_with_authorization() -> None:
    u = Uac()
    _leg, first = u.dial(credentials=CREDS)
    u.reply(first, 401, headers=[("WWW-Authenticate", build_challenge(REALM, "n1", algorithm="MD5"))])
    _, out = u.take()
    second = _request(out[1])
    answer = second.headers.get("Authorization")
    assert answer is not None and second.headers.get("Proxy-Authorization") is None
    assert verify_authorization(answer, method="INVITE", credentials=CREDS, realm=REALM, nonce="n1")


def test_second_407_for_the_same_realm_fails() -> None:
    u = Uac()
    leg, first = u.dial(credentials=CREDS)
    u.reply(first, 407, headers=[_challenge("n1")])
    second = _request(u.take()[1][1])
    u.reply(second, 407, headers=[_challenge("n2")])
    events, out = u.take()
    assert events == [CallFailed(leg, 407, "Proxy Authentication Required")]
    assert [_request(o).method for o in out] == ["ACK"]  # no third INVITE


def test_stale_nonce_is_retried() -> None:
    u = Uac()
    _leg, first = u.dial(credentials=CREDS)
    u.reply(first, 407, headers=[_challenge("n1")])
    second = _request(u.take()[1][1])
    u.reply(second, 407, headers=[_challenge("n2", stale=True)])
    events, out = u.take()
    assert events == []
    third = _request(out[1])
    assert third.cseq.number == second.cseq.number + 1
    answer = third.headers.get("Proxy-Authorization")
    assert answer is not None and len(third.headers.get_all("Proxy-Authorization")) == 1
    assert verify_authorization(answer, method="INVITE", credentials=CREDS, nonce="n2")


def test_proxy_and_callee_realms_are_both_answered_each_round() -> None:
    u = Uac()
    _leg, first = u.dial(credentials=CREDS)
    u.reply(first, 407, headers=[_challenge("proxy-nonce")])
    second = _request(u.take()[1][1])
    callee = ("WWW-Authenticate", build_challenge("callee.example.com", "callee-nonce", algorithm="MD5"))
    u.reply(second, 401, headers=[callee])
    events, out = u.take()
    assert events == []
    third = _request(out[1])
    proxy_answer, callee_answer = third.headers.get("Proxy-Authorization"), third.headers.get("Authorization")
    assert proxy_answer is not None and callee_answer is not None
    assert verify_authorization(proxy_answer, method="INVITE", credentials=CREDS, realm=REALM, nonce="proxy-nonce")
    assert parse_params(proxy_answer)[1]["nc"] == "00000002"  # the proxy's nonce again: the count moves on
    assert verify_authorization(callee_answer, method="INVITE", credentials=CREDS, nonce="callee-nonce")


def test_endless_stale_challenges_give_up() -> None:
    u = Uac()
    leg, invite = u.dial(credentials=CREDS)
    for round_ in range(10):
        u.reply(invite, 407, headers=[_challenge(f"n{round_}", stale=round_ > 0)])
        events, out = u.take()
        if events:
            break
        invite = _request(out[1])
    assert events == [CallFailed(leg, 407, "Proxy Authentication Required")]
    assert round_ == 4  # four re-sent INVITEs, then the fifth challenge fails the call


def test_407_without_credentials_fails() -> None:
    u = Uac()
    leg, first = u.dial()
    u.reply(first, 407, headers=[_challenge("n1")])
    events, out = u.take()
    assert events == [CallFailed(leg, 407, "Proxy Authentication Required")]
    assert [_request(o).method for o in out] == ["ACK"]


# --- hanging up -----------------------------------------------------------------------------------------------------


def test_hangup_while_ringing_cancels() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 180)
    u.take()
    u.agent.hangup(leg, u.now)
    events, (cancel_out,) = u.take()
    assert events == []
    cancel = _request(cancel_out)
    assert cancel_out.destination == TRUNK
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.top_via.branch == invite.top_via.branch  # 9.1: it must match the INVITE's transaction
    assert cancel.cseq.number == invite.cseq.number and cancel.cseq.method == "CANCEL"
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.headers.get("From") == invite.headers.get("From")
    ok = build_response(cancel, 200, to_tag="callee-1")
    u.agent.receive(ok.to_bytes(), TRUNK, u.now)
    assert u.take() == ([], [])
    u.reply(invite, 487)
    events, out = u.take()
    assert events == [CallEnded(leg, "cancelled")]
    assert [_request(o).method for o in out] == ["ACK"]
    u.advance(60.0)
    assert_empty(u.agent)


def test_hangup_before_any_provisional_waits_for_one_to_cancel() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.agent.hangup(leg, u.now)
    assert u.take() == ([], [])  # 9.1: no CANCEL before a provisional response
    u.reply(invite, 180)
    events, (cancel_out,) = u.take()
    assert events == []  # no CallProgress for a call being cancelled
    assert _request(cancel_out).method == "CANCEL"
    u.reply(invite, 487)
    assert u.take()[0] == [CallEnded(leg, "cancelled")]


def test_hangup_with_no_response_ends_on_timer_b() -> None:
    u = Uac()
    leg, _ = u.dial()
    u.agent.hangup(leg, u.now)
    sent = u.advance(40.0)
    assert all(_request(o).method == "INVITE" for _, o in sent)  # never a CANCEL
    assert u.timer_events == [(32.0, CallEnded(leg, "cancelled"))]
    assert_empty(u.agent)


def test_cancelled_call_ends_even_without_a_final_response() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 180)
    u.agent.hangup(leg, u.now)
    u.take()
    sent = u.advance(80.0)
    assert all(_request(o).method == "CANCEL" for _, o in sent)  # Timer E resends the CANCEL, never the INVITE
    assert u.timer_events == [(32.0, CallEnded(leg, "cancelled"))]  # 9.1: 64*T1 after the CANCEL
    assert_empty(u.agent)  # the INVITE transaction, stuck in Proceeding, is destroyed too


def test_ring_timeout_fails_the_call_and_cancels_it() -> None:
    u = Uac()
    leg, invite = u.dial(ring_timeout=20.0)
    u.reply(invite, 180)
    u.take()
    sent = u.advance(20.0)
    assert u.timer_events == [(20.0, CallFailed(leg, 408, "No Answer", no_answer=True))]
    assert [(when, _request(o).method) for when, o in sent] == [(20.0, "CANCEL")]
    u.reply(invite, 487)
    events, out = u.take()
    assert events == [] and [_request(o).method for o in out] == ["ACK"]  # the end was already reported
    u.agent.hangup(leg, u.now)  # too late: ignored
    assert u.take() == ([], [])
    u.advance(100.0)
    assert_empty(u.agent)


def test_ring_timeout_does_not_touch_an_answered_call() -> None:
    u = Uac()
    _leg, invite = u.dial(ring_timeout=20.0)
    u.reply(invite, 200, sdp=ANSWER)
    u.take()
    u.advance(40.0)  # past the deadline, and past Timer M (32 s), which runs on_timer
    assert u.timer_events == []
    assert u.agent.table_sizes()["legs"] == 1


def test_2xx_crossing_our_cancel_is_acked_then_byed() -> None:
    u = Uac()
    leg, invite = u.dial()
    u.reply(invite, 180)
    u.agent.hangup(leg, u.now)
    u.take()
    u.reply(invite, 200, sdp=ANSWER)
    events, out = u.take()
    assert events == []
    ack, bye = (_request(o) for o in out)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    u.callee_replies(bye, 200)
    assert u.take()[0] == [CallEnded(leg, "hangup")]


def test_hangup_after_answer_sends_bye() -> None:
    u = Uac()
    leg, invite, ok, bye_out = u.hung_up()
    bye = _request(bye_out)
    assert bye_out.destination == CALLEE and bye.method == "BYE"
    assert bye.cseq.number == invite.cseq.number + 1
    assert bye.to_addr.tag == ok.to_addr.tag and bye.from_addr.tag == invite.from_addr.tag
    u.callee_replies(bye, 200)
    assert u.take()[0] == [CallEnded(leg, "hangup")]
    u.advance(60.0)
    assert_empty(u.agent)


def test_a_challenged_bye_is_resent_with_credentials() -> None:
    u = Uac()
    leg, _, ok, bye_out = u.hung_up(credentials=CREDS)
    bye = _request(bye_out)
    assert bye.headers.get("Proxy-Authorization") is None
    u.callee_replies(bye, 407, [_challenge("bye-nonce")])
    events, (retry_out,) = u.take()
    assert events == []
    retry = _request(retry_out)
    assert retry_out.destination == CALLEE and retry.method == "BYE"
    assert retry.cseq.number == bye.cseq.number + 1 and retry.top_via.branch != bye.top_via.branch
    assert retry.to_addr.tag == ok.to_addr.tag
    answer = retry.headers.get("Proxy-Authorization")
    assert answer is not None
    assert verify_authorization(answer, method="BYE", credentials=CREDS, realm=REALM, nonce="bye-nonce")
    # Challenged again: the credentials are wrong; the call is over for us anyway (15.1.1).
    u.callee_replies(retry, 407, [_challenge("n2")])
    events, out = u.take()
    assert events == [CallEnded(leg, "hangup")] and out == []
    u.advance(60.0)
    assert_empty(u.agent)


def test_a_bye_challenged_by_proxy_then_callee_keeps_raising_its_cseq() -> None:
    u = Uac()
    leg, _, _, bye_out = u.hung_up(credentials=CREDS)
    bye = _request(bye_out)
    u.callee_replies(bye, 407, [_challenge("proxy-nonce")])
    _, (retry_out,) = u.take()
    retry = _request(retry_out)
    callee = ("WWW-Authenticate", build_challenge("callee.example.com", "callee-nonce"))
    u.callee_replies(retry, 401, [callee])
    events, (again_out,) = u.take()
    assert events == []
    again = _request(again_out)
    # Each re-sent BYE is a new request in the dialog: its CSeq must go up again (12.2.1.1).
    assert again.cseq.number == retry.cseq.number + 1 == bye.cseq.number + 2
    assert again.headers.get("Proxy-Authorization") is not None and again.headers.get("Authorization") is not None
    u.callee_replies(again, 200)
    assert u.take()[0] == [CallEnded(leg, "hangup")]


def test_a_challenged_bye_without_credentials_ends_the_call() -> None:
    u = Uac()
    leg, _, _, bye_out = u.hung_up()
    u.callee_replies(_request(bye_out), 407, [_challenge("bye-nonce")])
    assert u.take() == ([CallEnded(leg, "hangup")], [])


# --- requests from the peer in the dialog ----------------------------------------------------------------------------


def test_bye_from_the_peer_ends_the_call() -> None:
    u = Uac()
    leg, _, ok = u.answered()
    u.from_peer("BYE", ok, 1)
    events, (response_out,) = u.take()
    assert events == [CallEnded(leg, "bye")]
    response = parse_message(response_out.data)
    assert isinstance(response, SipResponse) and response.status == 200
    assert response_out.destination == CALLEE
    u.advance(60.0)
    assert_empty(u.agent)


def test_reinvite_and_info_from_the_peer() -> None:
    u = Uac()
    leg, _, ok = u.answered()
    u.from_peer("INVITE", ok, 5, body=ANSWER, content_type="application/sdp")
    events, out = u.take()
    assert events == [OfferReceived(leg, ANSWER, "INVITE")]
    u.agent.answer_offer(leg, OFFER, u.now)
    _, out = u.take()
    response = parse_message(out[-1].data)
    assert isinstance(response, SipResponse) and response.status == 200 and response.body == OFFER
    u.from_peer("ACK", ok, 5)
    assert u.take() == ([], [])
    u.from_peer("INFO", ok, 6, body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    events, _ = u.take()
    assert events == [InfoReceived(leg, "application/dtmf-relay", b"Signal=5\r\n")]
    u.from_peer("UPDATE", ok, 7, body=ANSWER, content_type="application/sdp")
    assert u.take()[0] == [OfferReceived(leg, ANSWER, "UPDATE")]
    u.agent.answer_offer(leg, OFFER, u.now)
    u.take()
    u.from_peer("OPTIONS", ok, 8)
    events, (out_options,) = u.take()
    options = parse_message(out_options.data)
    assert events == [] and isinstance(options, SipResponse) and options.status == 200
    assert "INVITE" in (options.headers.get("Allow") or "")
    u.from_peer("INFO", ok, 3)  # CSeq below the last one: out of order (12.2.2)
    _, (out_old,) = u.take()
    old = parse_message(out_old.data)
    assert isinstance(old, SipResponse) and old.status == 500


# --- against a real UAS: SIPp over UDP on 127.0.0.1 ------------------------------------------------------------------

SIPP_USER, SIPP_PASSWORD = "gateway", "s3cret"

_SIPP_SDP = """
v=0
o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""
# The INVITE must carry the gateway's X- header (check_it fails the call otherwise); echoed so that it is used.
_SIPP_RECV_INVITE = """<recv request="INVITE" crlf="true">
  <action>
    <ereg regexp="2_MX4xfn5" search_in="hdr" header="X-OpenTok-SessionId:" check_it="true" assign_to="session"/>
    {verify}
  </action>
</recv>
"""
_SIPP_RECV_ACK = sipp.UAS_RECV_ACK
_sipp_reply = sipp.uas_reply
_SIPP_REPLY = sipp.UAS_REPLY


def _sipp_challenged_invite(status: str, challenge: str, verify: str) -> str:
    """The INVITE answered `status` with the `challenge` header, the ACK for that, and the INVITE re-sent with
    credentials (`verify`: the SIPp actions that check them)."""
    return (
        _SIPP_RECV_INVITE.format(verify="")
        + _sipp_reply(status, challenge)
        + _SIPP_RECV_ACK
        + _SIPP_RECV_INVITE.format(verify=verify)
    )


_SIPP_ANSWER = (
    _sipp_reply("180 Ringing")
    + _SIPP_REPLY.format(
        retrans=' retrans="500"',
        status="200 OK",
        extra="X-Session-Seen: [$session]\nContent-Type: application/sdp\n",
        length="[len]",
        body=_SIPP_SDP,
    )
    + _SIPP_RECV_ACK
    + '<recv request="BYE"/>\n'
    + sipp.OK_TO_LAST
)
SIPP_UAS_ANSWERS = _SIPP_RECV_INVITE.format(verify="") + _SIPP_ANSWER
# 401 with an MD5 challenge (SIPp's verifyauth checks the Authorization header with MD5), then answer only if the
# re-sent INVITE proves the password; otherwise 403, which fails our call and the test.
SIPP_UAS_CHALLENGES = (
    _sipp_challenged_invite(
        "401 Unauthorized",
        'WWW-Authenticate: Digest realm="dialbridge.test", nonce="[pid]-[call_number]-n0nce", '
        'algorithm=MD5, qop="auth", opaque="0paque"\n',
        verify=f'<verifyauth assign_to="authvalid" username="{SIPP_USER}" password="{SIPP_PASSWORD}"/>',
    )
    + '<nop hide="true" test="authvalid" next="goodauth"/>\n'
    + _sipp_reply("403 Forbidden")
    + _SIPP_RECV_ACK
    + '<nop><action><exec int_cmd="stop_now"/></action></nop>\n'
    + '<label id="goodauth"/>\n'
    + _SIPP_ANSWER
)
# 407: SIPp's verifyauth reads only Authorization, so here SIPp checks the Proxy-Authorization's fields (its nonce
# echoed, our user, realm and Request-URI, a 32-hex response) and the test verifies the digest itself off the wire.
SIPP_UAS_PROXY_CHALLENGES = _sipp_challenged_invite(
    "407 Proxy Authentication Required",
    'Proxy-Authenticate: Digest realm="dialbridge.test", nonce="[pid]-[call_number]-n0nce", '
    'algorithm=MD5, qop="auth"\n',
    verify=f'<ereg regexp="Digest username=.{SIPP_USER}., realm=.dialbridge[.]test., nonce=.[0-9]+-1-n0nce., '
    'uri=.sip:dialin@127[.]0[.]0[.]1:[0-9]+., response=.[0-9a-f]{32}." search_in="hdr" '
    'header="Proxy-Authorization:" check_it="true" assign_to="proxyauth"/>',
) + _SIPP_ANSWER.replace("X-Session-Seen: [$session]", "X-Session-Seen: [$session] [$proxyauth]")


class _UdpShell(asyncio.DatagramProtocol):
    """The smallest event loop shell for the agent: datagrams in, timers on loop time, drain, sendto."""

    def __init__(self, agent: SipAgent, loop: asyncio.AbstractEventLoop) -> None:
        self.agent = agent
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.events: list[SipEvent] = []
        self.sent: list[bytes] = []
        self.changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector one isn't a subclass of it

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.agent.receive(data, (str(addr[0]), int(addr[1])), self.loop.time())
        self.flush()

    def on_timer(self) -> None:
        self.agent.on_timer(self.loop.time())
        self.flush()

    def flush(self) -> None:
        events, out = self.agent.drain()
        assert self.transport is not None
        for item in out:
            assert item.transport == "udp" and item.destination[0] == "127.0.0.1"
            self.transport.sendto(item.data, item.destination)
            self.sent.append(item.data)
        if events:
            self.events += events
            self.changed.set()
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.agent.next_timer()
        self._timer = None if deadline is None else self.loop.call_at(deadline, self.on_timer)

    async def wait_for(self, kind: type[SipEvent], within: float = 15.0) -> SipEvent:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        return event
                self.changed.clear()
                await self.changed.wait()


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _call_sipp(
    folder: Path, xml: str, credentials: DigestCredentials | None
) -> tuple[list[SipEvent], list[bytes]]:
    """Dial SIPp (as UAS), expect the answer, hang up; return the events. SIPp must exit 0 (its scenario passed)."""
    sipp_port = _udp_port()
    xml = sipp.scenario(xml, name="dialbridge UAC test peer")
    run = sipp.start(folder, xml, target=None, sip_port=sipp_port, media_port=_udp_port(), timeout_s=30)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    agent = SipAgent(contact_host="127.0.0.1", contact_port=sock.getsockname()[1])
    transport, shell = await loop.create_datagram_endpoint(lambda: _UdpShell(agent, loop), sock=sock)
    try:
        await asyncio.sleep(0.3)  # SIPp binds its port (Timer A would cover a late start anyway)
        leg = agent.dial(
            f"sip:dialin@127.0.0.1:{sipp_port}",
            destination=("127.0.0.1", sipp_port),
            transport="udp",
            sdp=OFFER,
            now=loop.time(),
            from_uri="sip:gateway@127.0.0.1",
            headers={"X-OpenTok-SessionId": "2_MX4xfn5"},
            credentials=credentials,
        )
        shell.flush()
        try:
            answered = await shell.wait_for(CallAnswered | CallFailed)  # type: ignore[arg-type]
        except TimeoutError:
            pytest.fail(f"no answer from SIPp: {shell.events}\n{run.errors()}")
        assert isinstance(answered, CallAnswered), f"{answered}\n{run.errors()}"
        assert answered.leg_id == leg and answered.sdp is not None and b"m=audio" in answered.sdp
        agent.hangup(leg, loop.time())
        shell.flush()
        ended = await shell.wait_for(CallEnded)
        assert ended == CallEnded(leg, "hangup")
        status = await asyncio.to_thread(run.wait, 20)
        assert status == 0, f"SIPp exited {status}:\n{run.errors()}"
        return shell.events, shell.sent
    finally:
        transport.close()
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


sipp_only = pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs sip-tester")


@sipp_only
@pytest.mark.timeout(60)
def test_sipp_uas_answers_our_call(tmp_path: Path) -> None:
    events, _ = run_in_thread(lambda: _call_sipp(tmp_path, SIPP_UAS_ANSWERS, None))
    assert [type(e) for e in events] == [CallProgress, CallAnswered, CallEnded]
    assert isinstance(events[0], CallProgress) and events[0].status == 180


@sipp_only
@pytest.mark.timeout(60)
def test_sipp_uas_accepts_our_digest(tmp_path: Path) -> None:
    creds = DigestCredentials(SIPP_USER, SIPP_PASSWORD)
    events, _ = run_in_thread(lambda: _call_sipp(tmp_path, SIPP_UAS_CHALLENGES, creds))
    assert [type(e) for e in events] == [CallProgress, CallAnswered, CallEnded]


@sipp_only
@pytest.mark.timeout(60)
def test_sipp_proxy_challenge_is_answered(tmp_path: Path) -> None:
    creds = DigestCredentials(SIPP_USER, SIPP_PASSWORD)
    events, sent = run_in_thread(lambda: _call_sipp(tmp_path, SIPP_UAS_PROXY_CHALLENGES, creds))
    assert [type(e) for e in events] == [CallProgress, CallAnswered, CallEnded]
    invites = [m for m in map(parse_message, sent) if isinstance(m, SipRequest) and m.method == "INVITE"]
    answer = invites[-1].headers.get("Proxy-Authorization")
    assert answer is not None and invites[0].headers.get("Proxy-Authorization") is None
    assert verify_authorization(answer, method="INVITE", credentials=creds, realm="dialbridge.test")
