"""SIP message parsing/serialisation: what peers (SIPp, baresip, proxies) send and what they must get back."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialbridge.sip.message import (
    CSeq,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from tests.engine.sip_sent import parse_sent

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def sipp_invite(body: bytes = SDP, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n"
        "From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n"
        "To: service <sip:service@127.0.0.1:5060>\r\n"
        "Call-ID: 1-4242@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: sip:sipp@127.0.0.1:5061\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        "X-OpenTok-SessionId: 2_MX4xfn5\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {length}\r\n"
        "\r\n"
    )
    return head.encode() + body


def test_parses_a_sipp_invite() -> None:
    message = parse_message(sipp_invite())
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE"
    assert message.uri == "sip:service@127.0.0.1:5060"
    assert message.request_uri.user == "service"
    assert message.call_id == "1-4242@127.0.0.1"
    assert message.cseq == CSeq(1, "INVITE")
    assert message.from_addr.tag == "4242SIPpTag001"
    assert message.from_addr.display_name == "sipp"
    assert message.to_addr.tag is None
    assert message.top_via.branch == "z9hG4bK-4242-1-0"
    assert message.contacts[0].uri == SipUri.parse("sip:sipp@127.0.0.1:5061")
    assert message.content_type == "application/sdp"
    assert message.body == SDP
    assert message.headers.get("x-opentok-sessionid") == "2_MX4xfn5"
    # Unknown headers keep the peer's spelling (the engine reads X- headers by their original names).
    assert ("X-OpenTok-SessionId", "2_MX4xfn5") in list(message.headers)


def test_compact_forms_become_full_names() -> None:
    data = (
        b"BYE sip:a@10.0.0.1 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKx\r\n"
        b"f: <sip:b@10.0.0.2>;tag=1\r\n"
        b"t: <sip:a@10.0.0.1>;tag=2\r\n"
        b"i: abc\r\n"
        b"CSeq: 2 BYE\r\n"
        b"m: <sip:b@10.0.0.2>\r\n"
        b"k: timer\r\n"
        b"s: hi\r\n"
        b"o: dialog\r\n"
        b"u: talk\r\n"
        b"e: gzip\r\n"
        b"c: text/plain\r\n"
        b"l: 0\r\n\r\n"
    )
    message = parse_message(data)
    names = [name for name, _ in message.headers]
    assert names == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Supported",
        "Subject",
        "Event",
        "Allow-Events",
        "Content-Encoding",
        "Content-Type",
        "Content-Length",
    ]
    assert message.call_id == "abc"
    assert message.to_addr.tag == "2"


def test_list_headers_split_but_auth_and_date_stay_whole() -> None:
    data = (
        b"INVITE sip:a@10.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/TCP 10.0.0.9:5070;branch=z9hG4bK3\r\n"
        b'From: "Doe, John" <sip:john@example.com>;tag=9\r\n'
        b"To: <sip:a@10.0.0.1>\r\n"
        b"Call-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b'Contact: "Doe, John" <sip:john@10.0.0.9;a=b,c>, <sip:john@10.0.0.10>\r\n'
        b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
        b'Authorization: Digest username="john", realm="example.com", nonce="abc", uri="sip:a@10.0.0.1"\r\n'
        b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        b"Allow: INVITE, ACK,BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    message = parse_message(data)
    assert [via.host for via in message.vias] == ["p1.example.com", "p2.example.com", "10.0.0.9"]
    assert [via.branch for via in message.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert [str(c.uri) for c in message.contacts] == ["sip:john@10.0.0.9;a=b,c", "sip:john@10.0.0.10"]
    assert message.contacts[0].display_name == "Doe, John"
    assert message.from_addr.display_name == "Doe, John"
    assert message.headers.get_all("Record-Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert len(message.headers.get_all("Authorization")) == 1
    assert message.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert message.headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]


def test_header_folding_and_case_insensitive_names() -> None:
    data = (
        b"OPTIONS sip:a@10.0.0.1 SIP/2.0\r\n"
        b"VIA: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKx\r\n"
        b"from: <sip:b@10.0.0.2>;tag=1\r\n"
        b"TO: <sip:a@10.0.0.1>\r\n"
        b"call-id: abc\r\n"
        b"cseq: 7\r\n  OPTIONS\r\n"
        b"\r\n"
    )
    message = parse_message(data)
    assert message.cseq == CSeq(7, "OPTIONS")
    assert message.headers.get("Call-Id") == "abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.com", SipUri("sip", "alice", "atlanta.com")),
        ("SIP:alice@atlanta.com:5070", SipUri("sip", "alice", "atlanta.com", 5070)),
        (
            "sips:alice@[2001:db8::10]:5061;transport=tcp",
            SipUri("sips", "alice", "[2001:db8::10]", 5061, {"transport": "tcp"}),
        ),
        ("sip:[::1]", SipUri("sip", None, "[::1]")),
        (
            "sip:+4930123@gw.example.com;user=phone;lr",
            SipUri("sip", "+4930123", "gw.example.com", None, {"user": "phone", "lr": None}),
        ),
        ("sip:alice:secret@atlanta.com", SipUri("sip", "alice", "atlanta.com", password="secret")),
        (
            "sip:bob@biloxi.com?subject=project&priority=urgent",
            SipUri("sip", "bob", "biloxi.com", headers={"subject": "project", "priority": "urgent"}),
        ),
        (
            "tel:+1-201-555-0123;phone-context=example.com",
            SipUri("tel", "+1-201-555-0123", "", None, {"phone-context": "example.com"}),
        ),
        # '?' and ';' in the user part are the user's (RFC 4475 3.1.1.2, 3.1.1.9): headers start after the host.
        ("sip:a?b;c=d@example.com?h=v", SipUri("sip", "a?b;c=d", "example.com", headers={"h": "v"})),
    ],
)
def test_uri_parsing(text: str, expected: SipUri) -> None:
    uri = SipUri.parse(text)
    assert uri == expected
    assert SipUri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    ["sip:", "sip:@host", "sip:a@", "sip:a@host:", "sip:a@host:99999", "sip:a@[::1", "sip:a b@host", "sip:a@host;=x"],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        SipUri.parse(text)
    assert info.value.status == 400


def test_foreign_uri_scheme_is_416() -> None:
    with pytest.raises(SipParseError) as info:
        SipUri.parse("mailto:a@b.c")
    assert info.value.status == 416
    with pytest.raises(SipParseError) as info:
        SipUri.parse("<sip:a@b.c>")  # no scheme at all: malformed, not foreign (RFC 4475 3.1.2.7)
    assert info.value.status == 400


def test_to_and_from_may_hold_any_absolute_uri_kept_as_sent() -> None:
    """RFC 3261 20.10 / RFC 4475 3.3.4: an address header's URI may be of any scheme; it is kept, not read."""
    for text in ("isbn:2983792873", "<http://www.example.com>;tag=3234233", "<name:John_Smith>"):
        address = NameAddr.parse(text)
        assert address.uri.user is None and address.uri.opaque is not None
        assert NameAddr.parse(str(address)) == address
    assert str(NameAddr.parse("<http://www.example.com>;tag=1").uri) == "http://www.example.com"


def test_name_addr_params_belong_to_the_header_in_addr_spec_form() -> None:
    addr_spec = NameAddr.parse("sip:alice@atlanta.com;tag=88sja8x")
    assert addr_spec.tag == "88sja8x"
    assert addr_spec.uri.params == {}
    name_addr = NameAddr.parse('"Alice \\"A\\"" <sip:alice@atlanta.com;transport=udp>;tag=1928301774')
    assert name_addr.display_name == 'Alice "A"'
    assert name_addr.uri.params == {"transport": "udp"}
    assert name_addr.tag == "1928301774"
    assert NameAddr.parse(str(name_addr)) == name_addr
    bare_display = NameAddr.parse("Bob <sip:bob@biloxi.com>")
    assert bare_display.display_name == "Bob"
    assert str(bare_display.with_tag("x")) == '"Bob" <sip:bob@biloxi.com>;tag=x'


def test_via_parsing() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.1:5062;rport;branch=z9hG4bKnashds8;received=198.51.100.7")
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5062)
    assert via.branch == "z9hG4bKnashds8"
    assert via.received == "198.51.100.7"
    assert via.has_rport and via.rport is None
    with_value = Via.parse("SIP/2.0/tcp [2001:db8::1]:5060 ;rport=4000;branch=z9hG4bK1")
    assert with_value.transport == "TCP"
    assert with_value.host == "[2001:db8::1]"
    assert with_value.rport == 4000
    spaced = Via.parse("SIP / 2.0 / UDP host.example.com;branch=z9hG4bK2")
    assert spaced.host == "host.example.com" and spaced.port is None
    assert not spaced.has_rport
    stamped = via.with_params(rport="1234")
    assert str(stamped) == "SIP/2.0/UDP 192.0.2.1:5062;rport=1234;branch=z9hG4bKnashds8;received=198.51.100.7"
    # Another version parses (the Request-Line's decides, with a 505 that must still reach the sender) and is kept.
    other_version = Via.parse("SIP/7.0/UDP a;branch=z9hG4bK3").with_params(received="192.0.2.9")
    assert str(other_version) == "SIP/7.0/UDP a;branch=z9hG4bK3;received=192.0.2.9"
    for bad in ("SIP/2.0/UDP", "SIP//UDP a", "HTTP/2.0/UDP a", "SIP/2.0/UDP a;rport=x", "SIP/2.0/UDP a:0"):
        with pytest.raises(SipParseError):
            Via.parse(bad)


def test_missing_content_length_on_udp_takes_the_rest_of_the_datagram() -> None:
    data = sipp_invite().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    assert parse_message(data).body == SDP


def test_content_length_shorter_than_datagram_discards_the_extra() -> None:
    assert parse_message(sipp_invite(content_length=10)).body == SDP[:10]


def test_content_length_longer_than_datagram_is_400_with_an_addressable_request() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(sipp_invite(content_length=len(SDP) + 1))
    assert info.value.status == 400
    assert info.value.request is not None
    assert info.value.request.call_id == "1-4242@127.0.0.1"


def test_stream_messages_need_exact_content_length() -> None:
    with pytest.raises(SipParseError):
        parse_message(sipp_invite(content_length=10), stream=True)
    assert parse_message(sipp_invite(), stream=True).body == SDP


def test_oversized_message_is_513_and_still_addressable() -> None:
    body = b"a=x-padding:" + b"x" * 20000 + b"\r\n"
    with pytest.raises(SipParseError) as info:
        parse_message(sipp_invite(body=body))
    assert info.value.status == 513
    assert info.value.request is not None and info.value.request.method == "INVITE"


def test_unaddressable_garbage_has_no_request() -> None:
    data = sipp_invite().replace(b"Call-ID: 1-4242@127.0.0.1\r\n", b"")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert info.value.request is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards: seventy"),
        (b"Contact: sip:sipp@127.0.0.1:5061", b"Contact: <sip:sipp@"),
        (b"INVITE sip:service@127.0.0.1:5060 SIP/2.0", b"INVITE sip:service@127.0.0.1:abc SIP/2.0"),
    ],
)
def test_malformed_but_addressable_requests_carry_the_request(old: bytes, new: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(sipp_invite().replace(old, new))
    assert info.value.status == 400
    assert info.value.request is not None


def test_wrong_sip_version_is_505() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(sipp_invite().replace(b"5060 SIP/2.0\r\n", b"5060 SIP/3.0\r\n", 1))
    assert info.value.status == 505
    assert info.value.request is not None


def test_cseq_method_must_match() -> None:
    with pytest.raises(SipParseError):
        parse_message(sipp_invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))


def test_response_round_trip() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;received=1.2.3.4\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: z\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    response = parse_message(data)
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (180, "Ringing")
    assert response.to_bytes() == data


def test_serialisation_writes_content_length_from_the_body() -> None:
    request = parse_message(sipp_invite())
    request.body = b"v=0\r\n"
    out = request.to_bytes()
    assert out.count(b"Content-Length") == 1
    assert out.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    again = parse_message(out)
    assert again.body == b"v=0\r\n"
    assert list(again.headers) == [*list(request.headers)[:-1], ("Content-Length", "5")]


def test_build_response_follows_8_2_6_2() -> None:
    data = sipp_invite().replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n",
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp, SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n"
        b"Timestamp: 54\r\n",
    )
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    trying = build_response(request, 100, to_tag="local")
    assert trying.status == 100 and trying.reason == "Trying"
    assert trying.headers.get_all("Via") == request.headers.get_all("Via")
    assert trying.to_addr.tag is None  # no tag on 100 (17.2.1)
    assert trying.headers.get("Timestamp") == "54"
    busy = build_response(request, 486, to_tag="local", headers={"Retry-After": "30"})
    assert busy.reason == "Busy Here"
    assert busy.to_addr.tag == "local"
    assert busy.from_addr == request.from_addr
    assert (busy.call_id, busy.cseq) == (request.call_id, request.cseq)
    assert busy.headers.get("Retry-After") == "30"
    assert busy.headers.get("Timestamp") is None
    bye = parse_message(
        busy.to_bytes().replace(b"SIP/2.0 486 Busy Here", b"BYE sip:x@y SIP/2.0").replace(b"1 INVITE", b"1 BYE")
    )
    assert isinstance(bye, SipRequest)
    assert build_response(bye, 200, to_tag="other").to_addr.tag == "local"  # an existing To tag is kept


def test_headers_multimap() -> None:
    headers = Headers([("Route", "<sip:a;lr>"), ("route", "<sip:b;lr>"), ("X-Foo", "1")])
    assert headers.get_all("ROUTE") == ["<sip:a;lr>", "<sip:b;lr>"]
    headers.set("Route", "<sip:c;lr>")
    assert headers.get_all("Route") == ["<sip:c;lr>"]
    headers.replace_first("x-foo", "2")
    assert list(headers) == [("Route", "<sip:c;lr>"), ("X-Foo", "2")]
    headers.remove("x-FOO")
    assert "X-Foo" not in headers and "Route" in headers


# --- stream framing ----------------------------------------------------------------------------------------------


def test_framer_counts_a_ping_that_arrives_in_pieces_and_no_line_end_around_a_message() -> None:
    framer = SipStreamFramer()
    for piece in (b"\r\n", b"\r\n", b"\r", b"\n\r", b"\n"):
        assert framer.feed(piece) == []
    assert framer.keepalives == 2  # each gets its pong, however the network cut it
    options = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert framer.feed(b"\r\n" + options + b"\r\n") == [options]
    assert framer.feed(options) == [options]
    assert framer.keepalives == 2 and not framer.incomplete


def test_framer_splits_messages_and_skips_keepalives() -> None:
    framer = SipStreamFramer()
    one, two = sipp_invite(), sipp_invite(body=b"")
    stream = b"\r\n\r\n" + one + b"\r\n\r\n" + two
    out: list[bytes] = []
    for i in range(0, len(stream), 37):
        out += framer.feed(stream[i : i + 37])
    assert out == [one, two]
    assert framer.keepalives == 2
    assert framer.feed(b"") == []


def test_framer_says_when_a_message_is_partly_received() -> None:
    # What the TCP connection bounds time: a message begun and not finished (keep-alives leave nothing behind).
    framer = SipStreamFramer()
    invite = sipp_invite()
    assert framer.feed(b"\r\n\r\n") == [] and not framer.incomplete
    assert framer.feed(invite[:50]) == [] and framer.incomplete
    assert framer.feed(invite[50:-1]) == [] and framer.incomplete  # the head is whole, the body one byte short
    assert framer.feed(invite[-1:] + b"\r\n\r\n") == [invite] and not framer.incomplete


def test_framer_frames_bare_lf_messages_as_udp_parses_them() -> None:
    # RFC 3261 asks for CRLF, but the datagram parser tolerates bare LF: over TCP the same message must be framed
    # (head ended by a blank line of LFs, its Content-Length honoured), not left waiting for a CRLFCRLF.
    body = SDP.replace(b"\r\n", b"\n")
    head, _, _ = sipp_invite(body).partition(b"\r\n\r\n")
    bare = head.replace(b"\r\n", b"\n") + b"\n\n" + body
    framer = SipStreamFramer()
    stream = bare + sipp_invite() + bare
    out: list[bytes] = []
    for i in range(0, len(stream), 29):
        out += framer.feed(stream[i : i + 29])
    assert out == [bare, sipp_invite(), bare]
    assert parse_message(out[0], stream=True).body == body


def test_framer_rejects_oversize_and_bad_length() -> None:
    with pytest.raises(SipParseError) as info:
        SipStreamFramer(max_size=1000).feed(sipp_invite(content_length=5000))
    assert info.value.status == 513
    assert info.value.request is not None  # the head was enough to answer 513
    with pytest.raises(SipParseError) as info:
        SipStreamFramer(max_size=1000).feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"x" * 2000)
    assert info.value.status == 513
    with pytest.raises(SipParseError) as info:
        SipStreamFramer().feed(sipp_invite().replace(f"Content-Length: {len(SDP)}".encode(), b"Content-Length: -1"))
    assert info.value.status == 400


# --- fuzzing ----------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_error(data: bytes, stream: bool = False) -> None:
    try:
        message = parse_message(data, stream=stream)
    except SipParseError as exc:
        assert exc.status in (400, 416, 505, 513)
        if exc.request is not None:
            # Whatever came back must be answerable: the response builds and re-parses.
            reparsed = parse_sent(build_response(exc.request, exc.status, to_tag="t").to_bytes())
            assert isinstance(reparsed, SipResponse)
        return
    # What parsed must survive a round trip.
    again = parse_message(message.to_bytes(), max_size=10**6)
    assert type(again) is type(message)
    assert again.body == message.body


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_error(data)


_VALID = [sipp_invite(), sipp_invite(body=b""), parse_message(sipp_invite()).to_bytes()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [b":", b";", b",", b"<", b">", b'"', b"\r\n", b" ", b"\x00", b"\xff", b"[", b"@", b"=", b"\t"]
                )
            )
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_messages(data: bytes) -> None:
    _parse_or_error(data)
    _parse_or_error(data, stream=True)


@FUZZ
@given(st.lists(st.integers(1, 200), min_size=1, max_size=20), st.binary(max_size=50))
def test_fuzz_framer_chunking_is_invisible(cuts: list[int], junk: bytes) -> None:
    stream = sipp_invite() + b"\r\n" + sipp_invite(body=b"") + junk
    framer = SipStreamFramer()
    out: list[bytes] = []
    pos = 0
    try:
        for cut in cuts * 50:
            if pos >= len(stream):
                break
            out += framer.feed(stream[pos : pos + cut])
            pos += cut
        out += framer.feed(stream[pos:])
    except SipParseError:
        return  # the junk tail made a bad message; the two good ones may or may not have been returned first
    assert out[:2] == [sipp_invite(), sipp_invite(body=b"")]


@pytest.mark.parametrize(
    "filler",
    [b";a" * 7000, b",SIP/2.0/UDP h" * 1000, b'"\\"' * 4000, b"\r\n " * 5000, b"<" * 14000, b"[" * 14000],
)
def test_adversarial_input_at_the_size_limit_is_fast(filler: bytes) -> None:
    data = sipp_invite().replace(b"Max-Forwards: 70", b"Via: SIP/2.0/UDP x" + filler)[:16384]
    started = time.perf_counter()
    for _ in range(5):
        with contextlib.suppress(SipParseError):
            parse_message(data)
    assert time.perf_counter() - started < 1.0


def test_a_target_refresh_or_its_answer_naming_a_contact_we_cannot_send_to_is_refused() -> None:
    """Found by the agent's fuzz test: an UPDATE in a dialog with `Contact: <ip:alice@...>` became the dialog's
    target, and the engine's BYE then went out with `ip:` as its Request-URI, which no peer can parse."""
    head = (
        "{method} sip:1234@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5061;branch=z9hG4bK-u\r\n"
        "From: <sip:a@192.0.2.20>;tag=1\r\nTo: <sip:1234@203.0.113.10>;tag=2\r\nCall-ID: c@x\r\nCSeq: 4 {method}\r\n"
        "Contact: {contact}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    for method in ("UPDATE", "INVITE"):
        with pytest.raises(SipParseError) as refused:
            parse_message(head.format(method=method, contact="<tel:+4930555>").encode())
        assert refused.value.status == 400 and refused.value.request is not None  # answered 400
    assert parse_message(head.format(method="INFO", contact="<tel:+4930555>").encode())  # no target: kept as sent
    answer = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-o\r\nFrom: <sip:gw@203.0.113.10>;tag=1\r\n"
        "To: <sip:b@192.0.2.30>;tag=9\r\nCall-ID: o@x\r\nCSeq: 1 INVITE\r\nContact: <mailto:b@example.com>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    with pytest.raises(SipParseError):
        parse_message(answer.encode())  # a 2xx whose dialog could never be reached: dropped, as any bad response
