"""RTP headers (RFC 3550 §5.1) and RTCP compound packets (§6): round trips, wire layout, malformed input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.rtp.packet import RtpError, RtpHeaderExtension, RtpPacket, build_rtp, is_rtcp, parse_rtp
from dialbridge.rtp.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStatistics,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    build_rtcp,
    ntp_from_seconds,
    ntp_middle,
    parse_rtcp,
)


def test_minimal_header_wire_layout() -> None:
    packet = RtpPacket(payload_type=8, sequence_number=0xBEEF, timestamp=0x01020304, ssrc=0xDEADBEEF, payload=b"\xd5")
    wire = build_rtp(packet)
    assert wire == bytes.fromhex("8008beef01020304deadbeef") + b"\xd5"
    assert parse_rtp(wire) == packet


def test_marker_csrc_extension_padding_round_trip() -> None:
    packet = RtpPacket(
        payload_type=101,
        sequence_number=65535,
        timestamp=2**32 - 1,
        ssrc=1,
        payload=b"\x01\x8a\x03\x20",
        marker=True,
        csrcs=(7, 8),
        extension=RtpHeaderExtension(0xBEDE, b"\x10\xff\x00\x00"),
        padding=4,
    )
    wire = build_rtp(packet)
    assert wire[0] == 0x80 | 0x20 | 0x10 | 2 and wire[1] == 0x80 | 101
    assert wire[-1] == 4 and len(wire) == 12 + 8 + 4 + 4 + 4 + 4
    assert parse_rtp(wire) == packet


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x80\x00" + b"\x00" * 9,  # 11 bytes
        b"\x40" + b"\x00" * 11,  # version 1
        b"\x8f" + b"\x00" * 11,  # 15 CSRCs announced, none there
        b"\x90" + b"\x00" * 11,  # extension announced, none there
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05",  # extension longer than the packet
        b"\xa0" + b"\x00" * 11,  # padding count 0
        b"\xa0" + b"\x00" * 12 + b"\x09",  # padding longer than the payload
    ],
)
def test_malformed_rtp_raises_rtp_error(datagram: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(datagram)


def test_rtcp_demultiplexing_by_second_byte() -> None:
    assert is_rtcp(bytes([0x81, 201]))
    assert not is_rtcp(build_rtp(RtpPacket(0, 1, 2, 3, b"x", marker=True)))  # marker + PT 0 = 128


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 127),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
    st.booleans(),
    st.lists(st.integers(0, 2**32 - 1), max_size=15),
    st.integers(0, 255),
)
def test_rtp_round_trip(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool, csrcs: list[int], padding: int
) -> None:
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrcs), None, padding)
    assert parse_rtp(build_rtp(packet)) == packet


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_rtp_parser_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert len(packet.payload) <= len(data)


def test_rtcp_compound_round_trip() -> None:
    block = ReportBlock(
        ssrc=0x11111111,
        fraction_lost=64,
        cumulative_lost=-2,
        highest_sequence=70000,
        jitter=123,
        last_sr=0xABCD1234,
        delay_since_last_sr=65536,
    )
    packets: list[RtcpPacket] = [
        SenderReport(0x22222222, ntp_from_seconds(1000.5), 160000, 50, 8000, (block,)),
        SourceDescription(((0x22222222, "cafe@dialbridge"),)),
        ReceiverReport(0x33333333, ()),
        Bye((0x22222222,), "hangup"),
    ]
    wire = build_rtcp(packets)
    assert len(wire) % 4 == 0
    assert wire[1] == 200 and struct.unpack_from("!H", wire, 2)[0] == (28 + 24) // 4 - 1
    assert parse_rtcp(wire) == packets


def test_rtcp_skips_unknown_packet_types() -> None:
    app = bytes([0x80, 204, 0, 2]) + b"\x00\x00\x00\x01" + b"name"
    rr = build_rtcp([ReceiverReport(5, ())])
    assert parse_rtcp(rr + app) == [ReceiverReport(5, ())]


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x80\xc8",
        bytes([0x40, 201, 0, 1, 0, 0, 0, 1]),  # version 1
        bytes([0x80, 201, 0, 5, 0, 0, 0, 1]),  # length past the end
        bytes([0x81, 201, 0, 1, 0, 0, 0, 1]),  # one report block announced, none present
        bytes([0x80, 200, 0, 1, 0, 0, 0, 1]),  # SR without sender info
        bytes([0x81, 202, 0, 1, 0, 0, 0, 1]),  # SDES chunk without items or terminator
        bytes([0xA0, 201, 0, 1, 0, 0, 0, 0]),  # padding count 0
        build_rtcp([ReceiverReport(1, ())]) + b"\x80",  # trailing bytes
    ],
)
def test_malformed_rtcp_raises_rtcp_error(datagram: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(datagram)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_rtcp_parser_raises_only_rtcp_error(data: bytes) -> None:
    with contextlib.suppress(RtcpError):
        parse_rtcp(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=4, max_size=40).map(lambda b: b[: len(b) // 4 * 4]), max_size=6))
def test_fuzz_rtcp_with_valid_headers(bodies: list[bytes]) -> None:
    # Well-formed common headers around random bodies: reaches the per-type parsers, not just the framing.
    wire = b"".join(
        bytes([0x80 | (len(body) % 32), 200 + i % 4, 0, len(body) // 4]) + body for i, body in enumerate(bodies)
    )
    with contextlib.suppress(RtcpError):
        parse_rtcp(wire)


def test_ntp_middle_bits() -> None:
    ntp = ntp_from_seconds(1.5)
    assert ntp & 0xFFFFFFFF == 1 << 31
    assert ntp_middle(ntp) & 0xFFFF == 0x8000


def test_reception_statistics_loss_and_jitter_from_a_known_pattern() -> None:
    # 100 packets, 20 ms apart, sequence 65500.. wrapping, packets 10-14 lost; arrival alternately 0 and 4 ms late.
    stats = ReceptionStatistics(ssrc=9, sequence_number=65500)
    base_ts = 2**32 - 160 * 50  # the timestamp wraps too
    for index in range(100):
        if 10 <= index < 15:
            continue
        if stats.update_sequence((65500 + index) % 65536):
            stats.update_jitter((base_ts + 160 * index) % 2**32, index * 0.020 + (0.004 if index % 2 else 0.0))
        if index == 2:
            # RFC 3550 A.8 by hand: J1 = 32/16 = 2, J2 = 2 + (32 - 2)/16.
            assert stats.jitter == pytest.approx(2 + 30 / 16)
    assert stats.expected == 100 and stats.received == 95 and stats.lost == 5
    assert stats.extended_highest_sequence == 65536 + (65500 + 99) % 65536
    # |D| is 32 timestamp units (4 ms) for every pair but those around the gap; J converges towards 32.
    assert 28 < stats.jitter <= 32
    block = stats.report_block(last_sr=0, delay_since_last_sr=0)
    assert block.fraction_lost == 5 * 256 // 100 and block.cumulative_lost == 5
    assert stats.report_block(0, 0).fraction_lost == 0  # nothing new since


def test_reception_statistics_accepts_a_restart_after_two_sequential_packets() -> None:
    stats = ReceptionStatistics(ssrc=9, sequence_number=100)
    assert stats.update_sequence(100)
    assert not stats.update_sequence(40000)  # a wild jump: not counted yet
    assert stats.update_sequence(40001)  # confirmed: the sender restarted
    assert stats.expected == 1 and stats.received == 1
