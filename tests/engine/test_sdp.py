"""SDP offer/answer as SIPp, baresip and trunks write it; hold and resume; what must be refused."""

from __future__ import annotations

import contextlib
from typing import TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.sdp import (
    AudioParameters,
    NoUsableMedia,
    SdpError,
    accept_answer,
    answer_offer,
    make_offer,
)


class Local(TypedDict):
    local_host: str
    local_port: int
    session_id: int
    session_version: int


LOCAL = Local(local_host="192.0.2.1", local_port=40000, session_id=777, session_version=1)


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def answer_lines(answer: bytes) -> list[str]:
    assert answer.endswith(b"\r\n")
    return answer.decode().split("\r\n")[:-1]


def media_sections(answer: bytes) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in answer_lines(answer):
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


# SIPp's uac_pcap scenario (captured from SIPp 3.6), with a=ptime:30 added as our SIPp runs send it. Our answer to
# the captured offer was accepted: SIPp ACKed and played g711a.pcap to the answer's port.
SIPP_OFFER = sdp(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 8 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-11,16",
    "a=ptime:30",
)

BARESIP_OFFER = sdp(
    "v=0",
    "o=- 1520317414 4007543542 IN IP4 10.0.0.5",
    "s=-",
    "c=IN IP4 10.0.0.5",
    "t=0 0",
    "m=audio 10002 RTP/AVP 96 9 0 8 101",
    "b=AS:117",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=rtcp-rsize",
    "a=sendrecv",
    "a=label:1",
    "a=ssrc:1234567 cname:abc@baresip",
    "a=ptime:20",
    "m=video 10004 RTP/AVP 98",
    "a=rtpmap:98 H264/90000",
    "a=sendrecv",
)

# What baresip 1.0 (Debian) sent, captured: its codec order follows its module load order.
BARESIP_CAPTURED_OFFER = sdp(
    "v=0",
    "o=- 406217703 1470895272 IN IP4 192.0.2.2",
    "s=-",
    "c=IN IP4 192.0.2.2",
    "t=0 0",
    "a=tool:baresip 1.0.0",
    "m=audio 14376 RTP/AVP 0 8 96 9 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=label:1",
    "a=rtcp-rsize",
    "a=ssrc:3000665721 cname:sip:bob@127.0.0.1",
    "a=minptime:20",
    "a=ptime:20",
)

TRUNK_OFFER = sdp(
    "v=0",
    "o=- 1699999999 1699999999 IN IP4 216.147.1.2",
    "s=VONAGE Media Gateway",
    "c=IN IP4 216.147.1.2",
    "t=0 0",
    "m=audio 23456 RTP/AVP 0 8 18 101 13",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=rtpmap:13 CN/8000",
    "a=ptime:20",
    "a=maxptime:40",
    "a=rtcp:23461 IN IP4 216.147.1.3",
    "a=sendrecv",
)


def test_sipp_offer_pcma_telephone_event_ptime_30() -> None:
    params, answer = answer_offer(SIPP_OFFER, **LOCAL)
    assert params == AudioParameters(
        codec="PCMA",
        payload_type=8,
        dtmf_payload_type=101,
        cn_payload_type=None,
        ptime_ms=30,
        remote_rtp=("127.0.0.1", 6000),
        remote_rtcp=("127.0.0.1", 6001),
        direction="sendrecv",
    )
    assert answer_lines(answer) == [
        "v=0",
        "o=dialbridge 777 1 IN IP4 192.0.2.1",
        "s=dialbridge",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 40000 RTP/AVP 8 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:30",
        "a=sendrecv",
    ]


def test_baresip_offer_skips_opus_and_g722_and_rejects_video() -> None:
    params, answer = answer_offer(BARESIP_OFFER, **LOCAL)
    assert (params.codec, params.payload_type, params.dtmf_payload_type) == ("PCMU", 0, 101)
    assert params.remote_rtp == ("10.0.0.5", 10002)
    audio, video = media_sections(answer)
    assert audio[0] == "m=audio 40000 RTP/AVP 0 101"
    assert video == ["m=video 0 RTP/AVP 98"]  # RFC 3264 §6: same order, port 0


def test_captured_baresip_offer() -> None:
    # Our answer to exactly this offer was accepted by baresip ("Call established", PCMU both ways, our RFC 4733
    # digits received once each); that run is not part of the suite, it needs baresip and takes seconds.
    params, answer = answer_offer(BARESIP_CAPTURED_OFFER, **LOCAL)
    assert (params.codec, params.payload_type, params.dtmf_payload_type, params.ptime_ms) == ("PCMU", 0, 101, 20)
    assert params.remote_rtp == ("192.0.2.2", 14376)
    assert media_sections(answer) == [
        [
            "m=audio 40000 RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=sendrecv",
        ]
    ]


def test_trunk_offer_takes_cn_and_a_rtcp_address() -> None:
    params, answer = answer_offer(TRUNK_OFFER, **LOCAL)
    assert (params.codec, params.payload_type, params.dtmf_payload_type, params.cn_payload_type) == ("PCMU", 0, 101, 13)
    assert params.remote_rtcp == ("216.147.1.3", 23461)
    assert "a=rtpmap:13 CN/8000" in answer_lines(answer)
    assert media_sections(answer)[0][0] == "m=audio 40000 RTP/AVP 0 101 13"


def test_offer_order_decides_between_pcmu_and_pcma() -> None:
    params, _ = answer_offer(
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0", "m=audio 5000 RTP/AVP 8 0"), **LOCAL
    )
    assert params.codec == "PCMA"


def test_dynamic_numbering_is_honoured() -> None:
    offer = sdp(
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "c=IN IP4 1.2.3.4",
        "t=0 0",
        "m=audio 5000 RTP/AVP 110 96",
        "a=rtpmap:110 pcmu/8000",  # encoding names are case-insensitive
        "a=rtpmap:96 telephone-event/8000",
        "a=rtpmap:97 telephone-event/16000",
    )
    params, answer = answer_offer(offer, **LOCAL)
    assert (params.payload_type, params.dtmf_payload_type) == (110, 96)
    assert "a=rtpmap:110 PCMU/8000" in answer_lines(answer)
    assert "a=fmtp:96 0-16" in answer_lines(answer)


def test_telephone_event_at_another_rate_is_not_dtmf() -> None:
    offer = sdp(
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "c=IN IP4 1.2.3.4",
        "t=0 0",
        "m=audio 5000 RTP/AVP 0 97",
        "a=rtpmap:97 telephone-event/48000",
    )
    params, answer = answer_offer(offer, **LOCAL)
    assert params.dtmf_payload_type is None
    assert b"telephone-event" not in answer


def hold_offer(*extra: str, connection: str = "1.2.3.4", port: int = 5000) -> bytes:
    return sdp(
        "v=0",
        "o=- 1 2 IN IP4 1.2.3.4",
        "s=-",
        f"c=IN IP4 {connection}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 101",
        "a=rtpmap:101 telephone-event/8000",
        *extra,
    )


@pytest.mark.parametrize(
    ("offer", "direction", "remote"),
    [
        (hold_offer("a=sendonly"), "recvonly", ("1.2.3.4", 5000)),
        (hold_offer("a=recvonly"), "sendonly", ("1.2.3.4", 5000)),
        (hold_offer("a=inactive"), "inactive", None),
        (hold_offer(connection="0.0.0.0"), "recvonly", None),  # RFC 2543 hold: do not send to me
        (hold_offer("a=sendonly", connection="0.0.0.0"), "recvonly", None),
        (hold_offer("a=sendrecv"), "sendrecv", ("1.2.3.4", 5000)),  # resume
        (hold_offer(), "sendrecv", ("1.2.3.4", 5000)),
    ],
)
def test_hold_and_resume(offer: bytes, direction: str, remote: tuple[str, int] | None) -> None:
    params, answer = answer_offer(offer, **LOCAL)
    assert params.direction == direction
    assert params.remote_rtp == remote
    assert f"a={direction}" in answer_lines(answer)
    assert media_sections(answer)[0][0].startswith("m=audio 40000 ")


def test_session_level_direction_applies_to_media() -> None:
    offer = sdp(
        "v=0", "o=- 1 2 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0", "a=sendonly", "m=audio 5000 RTP/AVP 0"
    )
    assert answer_offer(offer, **LOCAL)[0].direction == "recvonly"


def test_disabled_audio_stream_is_answered_with_port_0() -> None:
    params, answer = answer_offer(hold_offer(port=0), **LOCAL)
    assert params.remote_rtp is None and params.direction == "inactive"
    assert media_sections(answer)[0][0] == "m=audio 0 RTP/AVP 0 101"


def test_an_initial_offer_whose_only_audio_stream_is_disabled_has_no_usable_media() -> None:
    # RFC 3264 §5.1: port 0 in an offer is a stream that must not be used; starting a call on it leaves no audio.
    with pytest.raises(NoUsableMedia):
        answer_offer(hold_offer(port=0), **LOCAL, initial=True)
    enabled_too = hold_offer(port=0) + b"m=audio 5002 RTP/AVP 8\r\n"
    params, answer = answer_offer(enabled_too, **LOCAL, initial=True)
    assert params.remote_rtp == ("1.2.3.4", 5002)
    assert [section[0] for section in media_sections(answer)] == ["m=audio 0 RTP/AVP 0", "m=audio 40000 RTP/AVP 8"]


def test_ipv6_offer_and_answer() -> None:
    offer = sdp("v=0", "o=- 1 1 IN IP6 2001:db8::5", "s=-", "c=IN IP6 2001:DB8::5", "t=0 0", "m=audio 5000 RTP/AVP 0")
    params, answer = answer_offer(offer, local_host="2001:db8::1", local_port=40000, session_id=1, session_version=1)
    assert params.remote_rtp == ("2001:db8::5", 5000)
    assert "c=IN IP6 2001:db8::1" in answer_lines(answer)
    assert "o=dialbridge 1 1 IN IP6 2001:db8::1" in answer_lines(answer)


def test_media_level_connection_overrides_session_level() -> None:
    offer = sdp(
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "c=IN IP4 1.2.3.4",
        "t=0 0",
        "m=audio 5000 RTP/AVP 0",
        "c=IN IP4 5.6.7.8",
    )
    assert answer_offer(offer, **LOCAL)[0].remote_rtp == ("5.6.7.8", 5000)


@pytest.mark.parametrize(("ptime", "expected"), [("30", 30), ("20", 20), ("10", 10), ("25", 20), ("abc", 20)])
def test_ptime(ptime: str, expected: int) -> None:
    params, answer = answer_offer(hold_offer(f"a=ptime:{ptime}"), **LOCAL)
    assert params.ptime_ms == expected
    assert f"a=ptime:{expected}" in answer_lines(answer)


def test_secure_audio_stream_is_rejected_and_plain_one_taken() -> None:
    offer = sdp(
        "v=0",
        "o=- 1 1 IN IP4 1.2.3.4",
        "s=-",
        "c=IN IP4 1.2.3.4",
        "t=0 0",
        "m=audio 5000 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=audio 5002 RTP/AVP 0",
    )
    params, answer = answer_offer(offer, **LOCAL)
    assert params.remote_rtp == ("1.2.3.4", 5002)
    first, second = media_sections(answer)
    assert first == ["m=audio 0 RTP/SAVP 0"]
    assert second[0] == "m=audio 40000 RTP/AVP 0"


@pytest.mark.parametrize(
    "offer",
    [
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0", "m=video 5000 RTP/AVP 96"),
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0", "m=audio 5000 RTP/AVP 9 18"),
        sdp(
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "s=-",
            "c=IN IP4 1.2.3.4",
            "t=0 0",
            "m=audio 5000 RTP/AVP 96",
            "a=rtpmap:96 opus/48000/2",
        ),
    ],
)
def test_nothing_usable_is_488(offer: bytes) -> None:
    with pytest.raises(NoUsableMedia):
        answer_offer(offer, **LOCAL)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello",
        b"INVITE sip:x SIP/2.0\r\n",
        sdp("v=1", "o=- 1 1 IN IP4 1.2.3.4", "m=audio 5000 RTP/AVP 0"),
        sdp("v=0", "s=-", "c=IN IP4 1.2.3.4", "m=audio 5000 RTP/AVP 0"),  # no o=
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4"),  # no m=
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0", "m=audio 5000 RTP/AVP 0"),  # no c=
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4 999.1.1.1", "m=audio 5000 RTP/AVP 0"),
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4 1.2.3.4", "m=audio 99999 RTP/AVP 0"),
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4 1.2.3.4", "m=audio 5000 RTP/AVP x"),
        sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4 1.2.3.4", "m=audio 5000 RTP/AVP 0", "a=rtpmap:0 PCMU"),
        b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\xff\xfe\r\n",
        b"v=0\r\n" + b"a=x\r\n" * 5000,  # over 8 KiB
        b"v=0\r\n" + b"a\r\n" * 300,
        SIPP_OFFER + b"a=x\r\n" * 300,  # under 8 KiB, absurd line count
    ],
)
def test_garbage_is_400(garbage: bytes) -> None:
    with pytest.raises(SdpError) as raised:
        answer_offer(garbage, **LOCAL)
    assert type(raised.value) is SdpError  # not NoUsableMedia: this is malformed, not unusable


def test_lf_only_line_endings_are_accepted() -> None:
    params, _ = answer_offer(SIPP_OFFER.replace(b"\r\n", b"\n"), **LOCAL)
    assert params.codec == "PCMA"


def test_make_offer_then_accept_answer() -> None:
    offer = make_offer(local_host="192.0.2.1", local_port=40000, session_id=5, session_version=6)
    lines = answer_lines(offer)
    assert lines[:5] == ["v=0", "o=dialbridge 5 6 IN IP4 192.0.2.1", "s=dialbridge", "c=IN IP4 192.0.2.1", "t=0 0"]
    assert lines[5] == "m=audio 40000 RTP/AVP 0 8 101 13"
    assert {"a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=fmtp:101 0-16", "a=sendrecv"} <= set(lines)
    # Our own offer, answered by our own code, is what the far end would answer: PCMU with events.
    params, answer = answer_offer(offer, local_host="198.51.100.7", local_port=30000, session_id=9, session_version=1)
    assert params.codec == "PCMU" and params.dtmf_payload_type == 101 and params.cn_payload_type == 13
    ours = accept_answer(answer)
    assert ours == AudioParameters(
        codec="PCMU",
        payload_type=0,
        dtmf_payload_type=101,
        cn_payload_type=13,
        ptime_ms=20,
        remote_rtp=("198.51.100.7", 30000),
        remote_rtcp=("198.51.100.7", 30001),
        direction="sendrecv",
    )


def test_accept_answer_direction_and_rejection() -> None:
    base = ["v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "c=IN IP4 1.2.3.4", "t=0 0"]
    assert accept_answer(sdp(*base, "m=audio 5000 RTP/AVP 8", "a=recvonly")).direction == "sendonly"
    with pytest.raises(NoUsableMedia):
        accept_answer(sdp(*base, "m=audio 0 RTP/AVP 0"))
    with pytest.raises(NoUsableMedia):
        accept_answer(sdp(*base, "m=audio 5000 RTP/AVP 18"))


def test_answers_parse_as_offers() -> None:
    # Whatever we write, we (and so any RFC 4566 parser) read back: a cheap grammar check on every answer.
    for offer in (SIPP_OFFER, BARESIP_OFFER, BARESIP_CAPTURED_OFFER, TRUNK_OFFER, hold_offer("a=inactive")):
        _, answer = answer_offer(offer, **LOCAL)
        for line in answer_lines(answer):
            assert line[0] in "vosctma" and line[1] == "="


sdp_line = st.one_of(
    st.sampled_from(
        [
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "c=IN IP4 1.2.3.4",
            "c=IN IP6 ::1",
            "c=IN IP4 0.0.0.0",
            "m=audio 5000 RTP/AVP 0 8 101",
            "m=audio 0 RTP/AVP 0",
            "m=video 5002 RTP/AVP 96",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtpmap:0 PCMU/8000/1",
            "a=ptime:30",
            "a=sendonly",
            "a=inactive",
            "a=rtcp:5001",
            "a=rtcp:5001 IN IP4 9.9.9.9",
        ]
    ),
    st.text(max_size=40).map(lambda text: text.replace("\n", "")),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from("vocmatbkz"), st.text(max_size=30)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(sdp_line, max_size=30), st.sampled_from(["\r\n", "\n"]))
def test_fuzz_structured_offers_raise_only_sdp_error(lines: list[str], newline: str) -> None:
    offer = newline.join(lines).encode()
    try:
        params, answer = answer_offer(offer, **LOCAL)
    except SdpError:
        return
    assert params.codec in ("PCMU", "PCMA")
    assert len(answer) < 4096
    answer_offer(answer, **LOCAL)  # our answer is itself valid SDP with a usable stream or a disabled one


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=9000))
def test_fuzz_bytes_raise_only_sdp_error(data: bytes) -> None:
    for parse in (lambda: answer_offer(data, **LOCAL), lambda: accept_answer(data)):
        with contextlib.suppress(SdpError):
            parse()
