"""RTP for the embedded voice engine, sans-I/O: packets (RFC 3550), RTCP, RFC 4733 events, jitter buffer, session."""

from __future__ import annotations

from dialbridge.rtp.events import DtmfReceiver, DtmfSender, TelephoneEvent, TelephoneEventError
from dialbridge.rtp.jitter import FrameKind, JitterBuffer, JitterStats
from dialbridge.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp, parse_rtp
from dialbridge.rtp.rtcp import RtcpError, build_rtcp, parse_rtcp
from dialbridge.rtp.session import DtmfDigit, DtmfUnavailable, RtpSession, RtpStats

__all__ = [
    "DtmfDigit",
    "DtmfReceiver",
    "DtmfSender",
    "DtmfUnavailable",
    "FrameKind",
    "JitterBuffer",
    "JitterStats",
    "RtcpError",
    "RtpError",
    "RtpPacket",
    "RtpSession",
    "RtpStats",
    "TelephoneEvent",
    "TelephoneEventError",
    "build_rtcp",
    "build_rtp",
    "is_rtcp",
    "parse_rtcp",
    "parse_rtp",
]
