"""The registrar, through the real SIP agent with a fake clock: challenge, 200 with bindings, expiry, removal, bounds,
stale and replayed nonces, NAT sources, and INVITEs from an account (407, then the call carries the account)."""

from __future__ import annotations

import random

import pytest

from dialbridge.sip.agent import IncomingCall, SipAgent
from dialbridge.sip.auth import DigestClient, DigestCredentials, parse_challenges
from dialbridge.sip.message import SipResponse, parse_message
from dialbridge.sip.registrar import Registrar, RegistrarLimits, SipAccount, parse_accounts

HOST = "203.0.113.10"
PHONE = ("198.51.100.7", 40123)  # the NAT's public side: what the packets come from
PRIVATE = "192.168.1.20:5060"  # what the phone writes in its Contact and Via
ALICE = SipAccount("alice", "s3cret", "room-1")
OFFER = b"v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


class Phone:
    """A registrar in an agent, and a phone talking to it; `now` is the fake clock."""

    def __init__(self, limits: RegistrarLimits | None = None, accounts: tuple[SipAccount, ...] = (ALICE,)) -> None:
        self.registrar = Registrar(accounts, domain=HOST, limits=limits, random=random.Random(3))
        self.agent = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(7), registrar=self.registrar)
        self.now = 0.0
        self.cseq = 0
        self.auth = DigestClient(DigestCredentials("alice", "s3cret"), random.Random(5))

    def request(
        self,
        method: str = "REGISTER",
        *,
        contact: str | None = f"<sip:alice@{PRIVATE}>",
        extra: str = "",
        authorization: str = "",
        user: str = "alice",
        call_id: str = "reg-1@192.168.1.20",
        source: tuple[str, int] = PHONE,
        transport: str = "udp",
    ) -> SipResponse:
        self.cseq += 1
        uri = f"sip:{HOST}" if method == "REGISTER" else f"sip:dialin@{HOST}"
        to = f"<sip:{user}@{HOST}>" if method == "REGISTER" else f"<sip:dialin@{HOST}>"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{transport.upper()} {PRIVATE};rport;branch=z9hG4bK-{self.cseq}",
            f"From: <sip:{user}@{HOST}>;tag=ph1",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {self.cseq} {method}",
            "Max-Forwards: 70",
        ]
        if contact is not None:
            lines.append(f"Contact: {contact}")
        lines += [line for line in extra.split("\r\n") if line]
        if authorization:
            lines.append(authorization)
        body = OFFER if method == "INVITE" else b""
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.agent.receive(("\r\n".join(lines) + "\r\n\r\n").encode() + body, source, self.now, transport)
        _, out = self.agent.drain()
        responses = [parse_message(o.data) for o in out]
        final = [r for r in responses if isinstance(r, SipResponse) and r.status >= 200]
        assert len(final) == 1, responses
        assert all(o.destination == source for o in out)  # rport / the connection: back through the NAT
        return final[0]

    def answer(self, challenge: SipResponse, method: str = "REGISTER") -> str:
        proxy = challenge.status == 407
        values = challenge.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        header = "Proxy-Authorization" if proxy else "Authorization"
        uri = f"sip:{HOST}" if method == "REGISTER" else f"sip:dialin@{HOST}"
        return f"{header}: " + self.auth.authorization(parse_challenges(values)[0], method, uri)

    def register(self, **kwargs: object) -> SipResponse:
        challenge = self.request(**kwargs)  # type: ignore[arg-type]
        assert challenge.status == 401
        return self.request(authorization=self.answer(challenge), **kwargs)  # type: ignore[arg-type]

    def advance(self, to: float) -> None:
        while (deadline := self.agent.next_timer()) is not None and deadline <= to:
            self.now = max(self.now, deadline)
            self.agent.on_timer(self.now)
            self.agent.drain()
        self.now = to


def test_register_is_challenged_with_sha256_and_md5_then_bound_with_the_packets_source() -> None:
    phone = Phone()
    challenge = phone.request()
    assert challenge.status == 401
    offered = parse_challenges(challenge.headers.get_all("WWW-Authenticate"))
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]  # RFC 8760: the strongest first
    assert {c.realm for c in offered} == {HOST} and all(c.qop == ("auth",) for c in offered)

    ok = phone.request(authorization=phone.answer(challenge), extra="Expires: 600")
    assert ok.status == 200
    assert ok.headers.get_all("Contact") == [f"<sip:alice@{PRIVATE}>;expires=600"]
    (binding,) = phone.registrar.bindings("alice")
    assert (binding.source, binding.transport) == (PHONE, "udp")  # not the private Contact: reachable behind NAT


def test_md5_alone_for_phones_that_fail_on_any_other_challenge() -> None:
    phone = Phone()
    phone.registrar = Registrar((ALICE,), domain=HOST, digest_algorithms=("MD5",))
    phone.agent.registrar = phone.registrar
    challenge = phone.request()
    assert [c.algorithm for c in parse_challenges(challenge.headers.get_all("WWW-Authenticate"))] == ["MD5"]
    assert phone.request(authorization=phone.answer(challenge)).status == 200
    with pytest.raises(ValueError, match="digest algorithms must be some of SHA-512-256, SHA-256, MD5"):
        Registrar((ALICE,), domain=HOST, digest_algorithms=("SHA-1",))


def test_an_md5_only_phone_registers_too() -> None:
    phone = Phone()
    challenge = phone.request()
    md5 = [c for c in parse_challenges(challenge.headers.get_all("WWW-Authenticate")) if c.algorithm == "MD5"]
    answer = "Authorization: " + phone.auth.authorization(md5[0], "REGISTER", f"sip:{HOST}")
    assert phone.request(authorization=answer).status == 200


def test_wrong_password_unknown_account_and_another_accounts_address_are_refused() -> None:
    phone = Phone(accounts=(ALICE, SipAccount("bob", "pw")))
    challenge = phone.request()
    wrong = DigestClient(DigestCredentials("alice", "guess"), random.Random(1))
    bad = "Authorization: " + wrong.authorization(
        parse_challenges(challenge.headers.get_all("WWW-Authenticate"))[0], "REGISTER", f"sip:{HOST}"
    )
    assert phone.request(authorization=bad).status == 403
    mallory = DigestClient(DigestCredentials("mallory", "x"), random.Random(1))
    challenge = phone.request()
    value = mallory.authorization(
        parse_challenges(challenge.headers.get_all("WWW-Authenticate"))[0], "REGISTER", f"sip:{HOST}"
    )
    assert phone.request(authorization="Authorization: " + value).status == 403
    # alice's credentials do not register bob's address (RFC 3261 10.3 step 6)
    challenge = phone.request(user="bob")
    assert phone.request(user="bob", authorization=phone.answer(challenge)).status == 403
    assert phone.registrar.bindings("bob") == []


def test_a_replayed_or_expired_nonce_is_stale_and_answering_the_new_one_works() -> None:
    phone = Phone(RegistrarLimits(nonce_lifetime_s=30))
    challenge = phone.request()
    answer = phone.answer(challenge)
    assert phone.request(authorization=answer).status == 200
    replay = phone.request(authorization=answer)  # the same nonce-count again: a replay
    assert replay.status == 401
    assert all(c.stale for c in parse_challenges(replay.headers.get_all("WWW-Authenticate")))
    assert phone.request(authorization=phone.answer(replay)).status == 200

    phone.now += 31
    late = phone.request(authorization=phone.answer(replay))  # nc 2 of a nonce past its lifetime
    assert late.status == 401 and parse_challenges(late.headers.get_all("WWW-Authenticate"))[0].stale
    assert phone.request(authorization=phone.answer(late)).status == 200


def test_expiry_from_the_header_the_contact_param_bounds_and_423() -> None:
    phone = Phone(RegistrarLimits(min_expires=60, max_expires=3600))
    brief = phone.register(extra="Expires: 30")
    assert brief.status == 423 and brief.headers.get("Min-Expires") == "60"
    assert phone.registrar.bindings("alice") == []
    capped = phone.register(extra="Expires: 86400")
    assert capped.headers.get_all("Contact") == [f"<sip:alice@{PRIVATE}>;expires=3600"]
    by_param = phone.register(contact=f"<sip:alice@{PRIVATE}>;expires=120", extra="Expires: 900")
    assert by_param.headers.get_all("Contact") == [f"<sip:alice@{PRIVATE}>;expires=120"]  # the param wins


def test_bindings_expire_on_the_clock_and_a_refresh_keeps_them() -> None:
    phone = Phone()
    phone.register(extra="Expires: 120")
    phone.advance(100)
    phone.register(extra="Expires: 120")  # refreshed: now until 220
    phone.advance(219)
    assert len(phone.registrar.bindings("alice")) == 1
    phone.advance(221)
    assert phone.registrar.bindings("alice") == []
    assert phone.registrar.table_sizes()["bindings"] == 0
    assert phone.agent.next_timer() is None  # nothing left to wake for


def test_several_contacts_query_and_removal_one_by_one_and_with_star() -> None:
    phone = Phone()
    two = phone.register(contact=f"<sip:alice@{PRIVATE}>, <sip:alice@192.168.1.21:5060>;expires=300")
    assert sorted(two.headers.get_all("Contact")) == [
        f"<sip:alice@{PRIVATE}>;expires=3600",
        "<sip:alice@192.168.1.21:5060>;expires=300",
    ]
    query = phone.register(contact=None)  # no Contact: lists the bindings, changes nothing
    assert len(query.headers.get_all("Contact")) == 2
    one = phone.register(contact="<sip:alice@192.168.1.21:5060>;expires=0")
    assert one.headers.get_all("Contact") == [f"<sip:alice@{PRIVATE}>;expires=3600"]
    assert phone.register(contact="*").status == 400  # * needs Expires: 0
    gone = phone.register(contact="*", extra="Expires: 0")
    assert gone.status == 200 and gone.headers.get_all("Contact") == []
    assert phone.registrar.table_sizes()["bindings"] == 0


def test_bindings_are_bounded_per_account_and_in_total() -> None:
    phone = Phone(RegistrarLimits(bindings_per_account=2, bindings_total=3), accounts=(ALICE,))
    for port, expires in ((5001, 300), (5002, 200), (5003, 400)):
        phone.register(contact=f"<sip:alice@192.168.1.20:{port}>;expires={expires}")
    # the one expiring soonest (5002) made room for the newest
    assert sorted(b.contact for b in phone.registrar.bindings("alice")) == [
        "sip:alice@192.168.1.20:5001",
        "sip:alice@192.168.1.20:5003",
    ]
    many = ", ".join(f"<sip:alice@192.168.1.20:{port}>" for port in (6001, 6002))
    assert phone.register(contact=many).status == 503  # 2 bound + 2 new > 3 in total
    assert phone.registrar.table_sizes()["bindings"] == 2


def test_nonces_are_bounded() -> None:
    phone = Phone(RegistrarLimits(max_nonces=4))
    for _ in range(10):
        phone.request()
    assert phone.registrar.table_sizes()["nonces"] == 4


def test_a_tcp_binding_keeps_its_connection_open() -> None:
    phone = Phone()
    assert phone.register(transport="tcp").status == 200
    assert phone.agent.reliable_peers_in_use() == {PHONE}


def test_a_tcp_binding_whose_connection_closed_is_marked_until_the_phone_registers_over_a_new_one() -> None:
    phone = Phone()
    phone.register(transport="tcp", extra="Expires: 120")
    phone.agent.transport_failed(PHONE, phone.now)
    [closed] = phone.registrar.bindings("alice")
    assert not closed.flow_open  # reached at its Contact from now on
    assert phone.registrar.table_sizes()["flows"] == 0

    again = ("198.51.100.7", 40999)
    phone.register(transport="tcp", source=again, extra="Expires: 120")
    [reopened] = phone.registrar.bindings("alice")
    assert (reopened.source, reopened.flow_open) == (again, True)
    assert phone.registrar.table_sizes()["flows"] == 1
    phone.advance(121)
    sizes = phone.registrar.table_sizes()
    assert (sizes["bindings"], sizes["flows"]) == (0, 0)


def test_an_invite_from_an_account_is_challenged_407_then_carries_the_account() -> None:
    phone = Phone()
    challenge = phone.request("INVITE", call_id="call-1")
    assert challenge.status == 407
    assert phone.agent.drain() == ([], [])
    phone.agent.receive(
        (
            f"ACK sip:dialin@{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {PRIVATE};rport;branch=z9hG4bK-{phone.cseq}\r\n"
            f"From: <sip:alice@{HOST}>;tag=ph1\r\nTo: <sip:dialin@{HOST}>;tag={challenge.to_addr.tag}\r\n"
            f"Call-ID: call-1\r\nCSeq: {phone.cseq} ACK\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        PHONE,
        phone.now,
    )
    authorization = phone.answer(challenge, "INVITE")
    phone.agent.receive(_invite_with(phone, authorization), PHONE, phone.now)
    events, _ = phone.agent.drain()
    (call,) = events
    assert isinstance(call, IncomingCall) and call.account == "alice"


def test_an_invite_from_elsewhere_or_with_a_wrong_password_is_not_the_account() -> None:
    phone = Phone()
    # the same user at another domain (a trunk's caller): not challenged, no account
    phone.agent.receive(_invite_with(phone, "", from_host="trunk.example.com"), PHONE, phone.now)
    events, _ = phone.agent.drain()
    (call,) = events
    assert isinstance(call, IncomingCall) and call.account is None
    challenge = phone.request("INVITE", call_id="call-2")
    phone.auth = DigestClient(DigestCredentials("alice", "guess"), random.Random(5))
    phone.agent.receive(_invite_with(phone, phone.answer(challenge, "INVITE"), call_id="call-2"), PHONE, phone.now)
    events, out = phone.agent.drain()
    assert events == []
    assert [r.status for r in map(parse_message, (o.data for o in out)) if isinstance(r, SipResponse)] == [100, 403]


def _invite_with(phone: Phone, authorization: str, *, from_host: str = HOST, call_id: str = "call-1") -> bytes:
    phone.cseq += 1
    lines = [
        f"INVITE sip:dialin@{HOST} SIP/2.0",
        f"Via: SIP/2.0/UDP {PRIVATE};rport;branch=z9hG4bK-{phone.cseq}",
        f"From: <sip:alice@{from_host}>;tag=ph1",
        f"To: <sip:dialin@{HOST}>",
        f"Call-ID: {call_id}",
        f"CSeq: {phone.cseq} INVITE",
        f"Contact: <sip:alice@{PRIVATE}>",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
    ]
    if authorization:
        lines.append(authorization)
    lines.append(f"Content-Length: {len(OFFER)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + OFFER


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "entry 1 (alice): not user:password"),
        ("alice:pw:room one", "entry 1 (alice): a room id"),
        ("al ice:pw", "entry 1: the user must be"),
        ("alice:pw,alice:other", "entry 2: account alice is listed twice"),
        ("alice:a:b:c", "entry 1 (alice): not user:password"),
    ],
)
def test_bad_accounts_are_refused_naming_the_entry_never_the_password(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as raised:
        parse_accounts(text.split(","))
    assert "other" not in str(raised.value) and ":pw" not in str(raised.value)


def test_accounts_parse() -> None:
    assert parse_accounts(["alice:s3cret:room-1", " bob:pw ", ""]) == (ALICE, SipAccount("bob", "pw"))


def test_allow_lists_register_only_while_a_registrar_serves_it() -> None:
    phone = Phone()
    options = phone.request("OPTIONS", contact=None)
    assert options.status == 200
    assert "REGISTER" in _allowed(options)
    plain = SipAgent(contact_host=HOST, contact_port=5060, random=random.Random(7))
    request = (
        f"REGISTER sip:{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {PRIVATE};rport;branch=z9hG4bK-r\r\n"
        f"From: <sip:alice@{HOST}>;tag=a\r\nTo: <sip:alice@{HOST}>\r\nCall-ID: r@x\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:alice@{PRIVATE}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    plain.receive(request.encode(), PHONE, 0.0)
    (refused,) = [parse_message(o.data) for o in plain.drain()[1]]
    assert isinstance(refused, SipResponse) and refused.status == 405
    assert "INVITE" in _allowed(refused) and "REGISTER" not in _allowed(refused)


def _allowed(response: SipResponse) -> set[str]:
    return {m.strip() for value in response.headers.get_all("Allow") for m in value.split(",")}


def test_a_late_register_of_the_same_call_id_and_a_lower_cseq_changes_nothing() -> None:
    """RFC 3261 10.3 step 7: UDP may deliver a phone's older REGISTER (its retransmission, say) after a newer one;
    applied, a de-registration that came late would unbind a phone that had just refreshed."""
    phone = Phone()
    assert phone.register(extra="Expires: 600").status == 200  # CSeq 1 challenged, 2 bound
    (bound,) = phone.registrar.bindings("alice")
    assert (bound.call_id, bound.cseq) == ("reg-1@192.168.1.20", 2)
    phone.advance(40.0)  # past its transactions (a retransmission of the same branch would meet those instead)
    phone.cseq = 0  # the late one: its CSeqs are 1 and 2 again, and it removes the binding
    late = phone.request(authorization=phone.answer(phone.request()), extra="Expires: 0")
    assert late.status == 500 and phone.registrar.bindings("alice") == [bound]
    other_phone = phone.register(call_id="another-phone@192.168.1.21", extra="Expires: 0")  # another Call-ID: applies
    assert other_phone.status == 200 and phone.registrar.bindings("alice") == []
