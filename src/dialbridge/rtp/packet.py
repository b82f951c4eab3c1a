"""RTP fixed header (RFC 3550 §5.1), parsed and built, sans-I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

RTP_VERSION: Final = 2
HEADER_BYTES: Final = 12
MAX_PAYLOAD_TYPE: Final = 127

_HEADER: Final = struct.Struct("!BBHII")
_EXTENSION_HEADER: Final = struct.Struct("!HH")


class RtpError(ValueError):
    """The datagram is not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpHeaderExtension:
    """The one header extension RFC 3550 allows: a 16-bit profile tag and whole 32-bit words of data."""

    profile: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpHeaderExtension | None = None
    padding: int = 0  # padding octets to add when built (parsing strips them and records how many there were)

    def to_bytes(self) -> bytes:
        return build_rtp(self)


def is_rtcp(datagram: bytes) -> bool:
    """RFC 5761 §4: RTCP packet types 192-223 sit where RTP's marker+PT byte is; RTP never uses 64-95 as PT."""
    return len(datagram) >= 2 and 192 <= datagram[1] <= 223


def parse_rtp(datagram: bytes) -> RtpPacket:
    length = len(datagram)
    if length < HEADER_BYTES:
        raise RtpError(f"RTP packet of {length} bytes is shorter than the fixed header")
    first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(datagram)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    has_padding = bool(first & 0x20)
    has_extension = bool(first & 0x10)
    csrc_count = first & 0x0F
    offset = HEADER_BYTES + 4 * csrc_count
    if offset > length:
        raise RtpError("CSRC list runs past the end of the packet")
    csrcs = struct.unpack_from(f"!{csrc_count}I", datagram, HEADER_BYTES) if csrc_count else ()
    extension = None
    if has_extension:
        if offset + 4 > length:
            raise RtpError("header extension runs past the end of the packet")
        profile, words = _EXTENSION_HEADER.unpack_from(datagram, offset)
        offset += 4
        if offset + 4 * words > length:
            raise RtpError("header extension runs past the end of the packet")
        extension = RtpHeaderExtension(profile, bytes(datagram[offset : offset + 4 * words]))
        offset += 4 * words
    end = length
    padding = 0
    if has_padding:
        padding = datagram[-1]
        # The count includes itself, so 0 is malformed (RFC 3550 §5.1, and A.1's validity check).
        if padding == 0 or offset + padding > length:
            raise RtpError(f"padding count {padding} does not fit the packet")
        end -= padding
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(datagram[offset:end]),
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
        extension=extension,
        padding=padding,
    )


def build_rtp(packet: RtpPacket) -> bytes:
    if not 0 <= packet.payload_type <= MAX_PAYLOAD_TYPE:
        raise RtpError(f"payload type {packet.payload_type} out of range")
    if len(packet.csrcs) > 15:
        raise RtpError("at most 15 CSRCs")
    if not 0 <= packet.padding <= 255:
        raise RtpError("padding must be 0-255 octets")
    extension = packet.extension
    if extension is not None and (len(extension.data) % 4 or len(extension.data) > 4 * 0xFFFF):
        raise RtpError("header extension data must be whole 32-bit words")
    first = RTP_VERSION << 6 | (0x20 if packet.padding else 0) | (0x10 if extension else 0) | len(packet.csrcs)
    parts = [
        _HEADER.pack(
            first,
            (0x80 if packet.marker else 0) | packet.payload_type,
            packet.sequence_number & 0xFFFF,
            packet.timestamp & 0xFFFFFFFF,
            packet.ssrc & 0xFFFFFFFF,
        )
    ]
    if packet.csrcs:
        parts.append(struct.pack(f"!{len(packet.csrcs)}I", *(c & 0xFFFFFFFF for c in packet.csrcs)))
    if extension is not None:
        parts.append(_EXTENSION_HEADER.pack(extension.profile & 0xFFFF, len(extension.data) // 4))
        parts.append(extension.data)
    parts.append(packet.payload)
    if packet.padding:
        parts.append(bytes(packet.padding - 1) + bytes([packet.padding]))
    return b"".join(parts)
