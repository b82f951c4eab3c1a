"""RTP for the embedded voice engine, sans-I/O: packets (RFC 3550), RTCP, RFC 4733 events, jitter buffer, session."""

from __future__ import annotations

from dialbridge.engine.rtp.events import DtmfReceiver, DtmfSender, TelephoneEvent, TelephoneEventError
from dialbridge.engine.rtp.jitter import FrameKind, JitterBuffer, JitterStats
from dialbridge.engine.rtp.packet import RtpError, RtpPacket, build_rtp, is_rtcp, parse_rtp
from dialbridge.engine.rtp.rtcp import RtcpError, build_rtcp, parse_rtcp
from dialbridge.engine.rtp.session import DtmfDigit, DtmfUnavailable, RtpSession, RtpStats

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
