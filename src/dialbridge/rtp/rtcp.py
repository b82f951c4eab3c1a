"""RTCP compound packets (RFC 3550 §6): SR, RR, SDES (CNAME), BYE; and the receiver statistics behind report blocks.

Other packet types (APP, RTPFB/PSFB, XR) are skipped when parsing: we only need loss, jitter and round-trip time.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
SDES_END: Final = 0
SDES_CNAME: Final = 1
MAX_REPORT_BLOCKS: Final = 31  # the 5-bit count field

_COMMON: Final = struct.Struct("!BBH")
_SENDER_INFO: Final = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packet count, octet count
_REPORT_BLOCK: Final = struct.Struct("!IIIIII")
NTP_UNIX_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class RtcpError(ValueError):
    """The datagram is not a well-formed RTCP compound packet."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int  # the source this block reports on
    fraction_lost: int  # 0-255: lost/expected since the previous report, in 1/256
    cumulative_lost: int  # signed 24-bit (duplicates can make it negative)
    highest_sequence: int  # extended highest sequence number received
    jitter: int  # interarrival jitter, in timestamp units
    last_sr: int  # middle 32 bits of the NTP timestamp of the last SR received from that source, 0 if none
    delay_since_last_sr: int  # in 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP: seconds << 32 | fraction
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[tuple[int, str], ...]  # (SSRC, CNAME); other SDES items are skipped


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str | None = None


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye


def ntp_from_seconds(seconds: float) -> int:
    """A 64-bit NTP timestamp for `seconds` since 1970 (or since any origin: only differences matter for RTT)."""
    whole = int(seconds)
    fraction = int((seconds - whole) * (1 << 32)) & 0xFFFFFFFF
    return ((whole + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32 | fraction


def ntp_middle(ntp_timestamp: int) -> int:
    """The middle 32 bits, as LSR carries them (16.16 fixed point seconds)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def _parse_report_blocks(data: bytes, offset: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if offset + count * _REPORT_BLOCK.size > end:
        raise RtcpError("report blocks run past the packet")
    blocks = []
    for index in range(count):
        ssrc, loss, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset + index * _REPORT_BLOCK.size)
        cumulative = loss & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        blocks.append(ReportBlock(ssrc, loss >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sdes(data: bytes, offset: int, count: int, end: int) -> SourceDescription:
    chunks = []
    for _ in range(count):
        if offset + 4 > end:
            raise RtcpError("SDES chunk runs past the packet")
        (ssrc,) = struct.unpack_from("!I", data, offset)
        offset += 4
        cname = None
        while True:
            if offset >= end:
                raise RtcpError("SDES items run past the packet")
            item_type = data[offset]
            if item_type == SDES_END:
                offset = (offset + 4) & ~3  # the null item, then padding to the next 32-bit boundary
                break
            if offset + 2 > end or offset + 2 + data[offset + 1] > end:
                raise RtcpError("SDES item runs past the packet")
            length = data[offset + 1]
            if item_type == SDES_CNAME:
                cname = data[offset + 2 : offset + 2 + length].decode("utf-8", "replace")
            offset += 2 + length
        if cname is not None:
            chunks.append((ssrc, cname))
    return SourceDescription(tuple(chunks))


def _parse_bye(data: bytes, offset: int, count: int, end: int) -> Bye:
    if offset + 4 * count > end:
        raise RtcpError("BYE SSRC list runs past the packet")
    ssrcs = struct.unpack_from(f"!{count}I", data, offset)
    offset += 4 * count
    reason = None
    if offset < end:
        length = data[offset]
        if offset + 1 + length > end:
            raise RtcpError("BYE reason runs past the packet")
        reason = data[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
    return Bye(tuple(ssrcs), reason)


def parse_rtcp(datagram: bytes) -> list[RtcpPacket]:
    """Every SR, RR, SDES and BYE in a compound packet, in order; other types are skipped after a length check."""
    packets: list[RtcpPacket] = []
    offset = 0
    total = len(datagram)
    if total < 4:
        raise RtcpError("RTCP packet shorter than its header")
    while offset < total:
        if offset + 4 > total:
            raise RtcpError("trailing bytes after the last RTCP packet")
        first, packet_type, words = _COMMON.unpack_from(datagram, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > total:
            raise RtcpError("RTCP length field runs past the datagram")
        if first & 0x20:  # padding: only meaningful on the last packet, and the count must fit
            padding = datagram[end - 1]
            if padding == 0 or padding > 4 * words:
                raise RtcpError("bad RTCP padding")
            body_end = end - padding
        else:
            body_end = end
        count = first & 0x1F
        body = offset + 4
        if packet_type == RTCP_SR:
            if body + _SENDER_INFO.size > body_end:
                raise RtcpError("SR shorter than its sender info")
            ssrc, ntp, rtp_ts, packet_count, octet_count = _SENDER_INFO.unpack_from(datagram, body)
            blocks = _parse_report_blocks(datagram, body + _SENDER_INFO.size, count, body_end)
            packets.append(SenderReport(ssrc, ntp, rtp_ts, packet_count, octet_count, blocks))
        elif packet_type == RTCP_RR:
            if body + 4 > body_end:
                raise RtcpError("RR shorter than its SSRC")
            (ssrc,) = struct.unpack_from("!I", datagram, body)
            packets.append(ReceiverReport(ssrc, _parse_report_blocks(datagram, body + 4, count, body_end)))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(datagram, body, count, body_end))
        elif packet_type == RTCP_BYE:
            packets.append(_parse_bye(datagram, body, count, body_end))
        offset = end
    return packets


def _header(count: int, packet_type: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP body must be whole 32-bit words")
    return _COMMON.pack(0x80 | count, packet_type, len(body) // 4) + body


def _report_blocks(blocks: tuple[ReportBlock, ...]) -> bytes:
    if len(blocks) > MAX_REPORT_BLOCKS:
        raise RtcpError("at most 31 report blocks per packet")
    out = []
    for block in blocks:
        cumulative = max(-(1 << 23), min((1 << 23) - 1, block.cumulative_lost)) & 0xFFFFFF
        out.append(
            _REPORT_BLOCK.pack(
                block.ssrc & 0xFFFFFFFF,
                (max(0, min(255, block.fraction_lost)) << 24) | cumulative,
                block.highest_sequence & 0xFFFFFFFF,
                block.jitter & 0xFFFFFFFF,
                block.last_sr & 0xFFFFFFFF,
                block.delay_since_last_sr & 0xFFFFFFFF,
            )
        )
    return b"".join(out)


def build_rtcp(packets: Sequence[RtcpPacket]) -> bytes:
    """A compound packet. RFC 3550 §6.1 wants an SR or RR first and an SDES CNAME in it; callers order them."""
    out = []
    for packet in packets:
        if isinstance(packet, SenderReport):
            body = _SENDER_INFO.pack(
                packet.ssrc & 0xFFFFFFFF,
                packet.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
                packet.rtp_timestamp & 0xFFFFFFFF,
                packet.packet_count & 0xFFFFFFFF,
                packet.octet_count & 0xFFFFFFFF,
            )
            out.append(_header(len(packet.reports), RTCP_SR, body + _report_blocks(packet.reports)))
        elif isinstance(packet, ReceiverReport):
            body = struct.pack("!I", packet.ssrc & 0xFFFFFFFF) + _report_blocks(packet.reports)
            out.append(_header(len(packet.reports), RTCP_RR, body))
        elif isinstance(packet, SourceDescription):
            if len(packet.chunks) > 31:
                raise RtcpError("at most 31 SDES chunks per packet")
            chunks = []
            for ssrc, cname in packet.chunks:
                text = cname.encode()
                if len(text) > 255:
                    raise RtcpError("CNAME longer than 255 octets")
                chunk = struct.pack("!IBB", ssrc & 0xFFFFFFFF, SDES_CNAME, len(text)) + text
                chunk += bytes(4 - len(chunk) % 4)  # the null item plus padding to a 32-bit boundary
                chunks.append(chunk)
            out.append(_header(len(packet.chunks), RTCP_SDES, b"".join(chunks)))
        else:
            if len(packet.ssrcs) > 31:
                raise RtcpError("at most 31 SSRCs per BYE")
            body = struct.pack(f"!{len(packet.ssrcs)}I", *(s & 0xFFFFFFFF for s in packet.ssrcs))
            if packet.reason is not None:
                text = packet.reason.encode()[:255]
                body += bytes([len(text)]) + text
                body += bytes(-len(body) % 4)
            out.append(_header(len(packet.ssrcs), RTCP_BYE, body))
    return b"".join(out)


# RFC 3550 Appendix A.1 constants.
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100
SEQ_MOD: Final = 1 << 16


class ReceptionStatistics:
    """What we know about one remote source, for report blocks and stats (RFC 3550 A.1, A.3, A.8).

    No probation: the first packet is accepted at once (we have latched on it already); a sequence jump is
    accepted when the next packet follows it, as A.1 does for a restarted sender.
    """

    __slots__ = (
        "_bad_sequence",
        "_base_sequence",
        "_cycles",
        "_expected_prior",
        "_highest_sequence",
        "_jitter",
        "_last_transit",
        "_received",
        "_received_prior",
        "clock_rate",
        "ssrc",
    )

    def __init__(self, ssrc: int, sequence_number: int, clock_rate: int = 8000) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._base_sequence = sequence_number
        self._highest_sequence = sequence_number
        self._cycles = 0
        self._bad_sequence = SEQ_MOD + 1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._last_transit: float | None = None

    def update_sequence(self, sequence_number: int) -> bool:
        """Count one packet; False when it was dropped as a wild jump (not yet confirmed by a successor)."""
        delta = (sequence_number - self._highest_sequence) % SEQ_MOD
        if delta < MAX_DROPOUT:
            if sequence_number < self._highest_sequence:
                self._cycles += SEQ_MOD
            self._highest_sequence = sequence_number
        elif delta <= SEQ_MOD - MAX_MISORDER:
            if sequence_number == self._bad_sequence:
                # Two sequential packets after a jump: the sender restarted; start counting again from here.
                self._base_sequence = sequence_number
                self._highest_sequence = sequence_number
                self._cycles = 0
                self._received = 0
                self._expected_prior = 0
                self._received_prior = 0
                self._bad_sequence = SEQ_MOD + 1
            else:
                self._bad_sequence = (sequence_number + 1) % SEQ_MOD
                return False
        # else: a duplicate or a reordered packet; counted as received, as A.1 does.
        self._received += 1
        return True

    def update_jitter(self, timestamp: int, arrival: float) -> None:
        """RFC 3550 §6.4.1 / A.8: J += (|D| - J) / 16, in timestamp units, from the arrival time in seconds."""
        transit = arrival * self.clock_rate - timestamp
        if self._last_transit is not None:
            difference = transit - self._last_transit
            # Timestamps wrap at 2^32: fold the difference so a wrap is not read as a 2^32 jump.
            difference = (difference + 2**31) % 2**32 - 2**31
            self._jitter += (abs(difference) - self._jitter) / 16
        self._last_transit = transit

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._highest_sequence

    @property
    def expected(self) -> int:
        return self.extended_highest_sequence - self._base_sequence + 1

    @property
    def received(self) -> int:
        return self._received

    @property
    def lost(self) -> int:
        return self.expected - self._received

    @property
    def jitter(self) -> float:
        """In timestamp units."""
        return self._jitter

    def report_block(self, last_sr: int, delay_since_last_sr: int) -> ReportBlock:
        """A report block, and start the next interval for the fraction lost."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            cumulative_lost=self.lost,
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=int(self._jitter),
            last_sr=last_sr,
            delay_since_last_sr=delay_since_last_sr,
        )
