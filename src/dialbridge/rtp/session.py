"""One call's RTP/RTCP session, sans-I/O: datagrams and the time in, audio frames, digits and datagrams out.

Nothing is sent to an address the peer merely names: a caller's SDP can name anyone's, and a forged INVITE would
then aim the call's media at that third party (reflection, ~540 times the INVITE's size until the 200 gives up on
its ACK). A session created unconfirmed (a call we answer) sends neither RTP nor RTCP until the SIP dialog is
confirmed (`confirm`: the ACK arrived, from the peer that named the address) or the peer's own RTP arrived and the
session latched to its source — whichever comes first. The audio of the time before is not sent later: the clock
runs on, as on hold.

Symmetric RTP with strict latching (RFC 4961 style, for phones behind NAT; Asterisk's `strictrtp`): until we latch
we send to the address in the SDP. A packet of a negotiated payload type from that address latches at once. From any
other address (a NAT rewrote the caller's) only a run of LEARNING_PACKETS in-sequence packets (one SSRC, each
sequence number the last one plus one) latches; until then its packets are dropped (counted as foreign), so one
spoofed packet at a ringing call's port can neither take its audio nor speak its digits. The SDP's address still
outranks a source learned that way: a forger's run before the caller's first packet is overruled by that packet.
Once latched, packets from any other address are dropped; we re-latch on traffic only in that one case, or when a new
SDP (`update`) changes the remote address: anyone who can send to our port, or who sees the stream on the path, could
otherwise take the call's audio over.
RTCP latches separately (its port mapping through a NAT is its own), but only to the SDP's RTCP address or to a port
on the host the RTP latched to: a stranger's report never redirects ours.

`now` is seconds on any monotonic clock the caller keeps; RTCP's NTP timestamps are built from it, which is all the
round-trip time computation needs (it only ever subtracts our own timestamps).
"""

from __future__ import annotations

import random as random_module
import struct
from dataclasses import dataclass
from typing import Final, NamedTuple

from dialbridge.rtp.events import DtmfReceiver, DtmfSender, TelephoneEventError, parse_telephone_event
from dialbridge.rtp.jitter import FRAME_SAMPLES, FrameKind, JitterBuffer
from dialbridge.rtp.packet import HEADER_BYTES, RtpError, is_rtcp, parse_rtp
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
from dialbridge.sdp import AudioParameters

__all__ = ["LEARNING_PACKETS", "DtmfDigit", "DtmfUnavailable", "FrameKind", "RtpSession", "RtpStats"]

SAMPLE_RATE: Final = 8000
RTCP_MIN_INTERVAL: Final = 5.0  # seconds, RFC 3550 §6.2's Tmin
_RTCP_COMPENSATION: Final = 2.718281828459045 - 1.5  # RFC 3550 §6.3.1: randomisation would otherwise shorten it
_SENDING_DIRECTIONS: Final = frozenset({"sendrecv", "sendonly"})
_RECEIVING_DIRECTIONS: Final = frozenset({"sendrecv", "recvonly"})
_RTP_HEADER: Final = struct.Struct("!BBHII")
LEARNING_PACKETS: Final = 4  # in-sequence packets that latch an address other than the SDP's (80 ms of audio)


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str
    source: str = "rfc4733"


class _LearningRun(NamedTuple):
    """In-sequence packets from one address other than the SDP's, before latching: LEARNING_PACKETS of them latch."""

    source: tuple[str, int]
    ssrc: int
    sequence_number: int  # the last one's
    packets: int


class DtmfUnavailable(RuntimeError):
    """send_dtmf on a session where telephone-event was not negotiated."""


@dataclass(frozen=True, slots=True)
class RtpStats:
    packets_in: int  # RTP packets accepted (from the latched source, with a negotiated payload type)
    packets_out: int
    bytes_in: int  # RTP datagram bytes (headers included) of those packets
    bytes_out: int
    packets_lost: int  # RFC 3550: expected (from the extended highest sequence number) minus received, >= 0
    late_dropped: int  # arrived after their audio was played
    duplicate_dropped: int
    foreign_dropped: int  # RTP or RTCP from an address other than the latched one, or (before latching) not yet shown
    malformed_dropped: int  # not parseable as RTP/RTCP/telephone-event
    unknown_payload_dropped: int  # a payload type we did not negotiate
    frames_received: int  # playout frames, by FrameKind
    frames_concealed: int
    frames_silence: int
    jitter_ms: float  # RFC 3550 interarrival jitter of what we receive
    remote_fraction_lost: float | None  # 0-1, from the last report block the far end sent about us
    remote_packets_lost: int | None
    remote_jitter_ms: float | None
    round_trip_ms: float | None  # from LSR/DLSR in their report blocks
    latched: tuple[str, int] | None


class RtpSession:
    def __init__(
        self,
        params: AudioParameters,
        *,
        ssrc: int,
        now: float,
        random: random_module.Random | None = None,
        release_on_arrival: bool = False,
        confirmed: bool = True,
    ) -> None:
        """`release_on_arrival`: the received audio is taken with `arrived` as packets complete frames, not played
        out once a tick with `playout` (the jitter buffer's two modes; see `rtp.jitter`). `confirmed`: whether the
        SDP's address may be sent to from the start, as for a call we placed (the peer is the one we chose to
        call); False for a call we answer, until `confirm` or the peer's first packet (see the module doc)."""
        self._release_on_arrival = release_on_arrival
        self._confirmed = confirmed
        #: When the peer's RTP or RTCP last arrived (from the address it proved), or the session began or was
        #: renegotiated: what a media timeout measures from.
        self.heard_at = now
        self._random = random if random is not None else random_module.SystemRandom()
        self._params = params
        self._ssrc = ssrc & 0xFFFFFFFF
        self._cname = f"{self._ssrc:08x}@dialbridge"
        # Outgoing: random initial sequence number and timestamp (RFC 3550 §5.1), one audio clock for all we send.
        self._sequence = self._random.getrandbits(16)
        self._timestamp = self._random.getrandbits(32)  # the timestamp of the next sample the engine hands us
        self._pending = bytearray()  # samples waiting to fill a packet (ptime 30: 240 samples from 20 ms frames)
        self._marker_due = True
        self._event_timestamp = 0
        self._packets_out = self._bytes_out = self._octets_out = 0
        self._packets_out_at_report = 0
        # Incoming.
        self._latched: tuple[str, int] | None = None
        self._learning: _LearningRun | None = None
        self._rtcp_latched: tuple[str, int] | None = None
        self._jitter = self._new_jitter_buffer(params)
        self._source: ReceptionStatistics | None = None
        self._dtmf_in = DtmfReceiver()
        self._dtmf_out = (
            DtmfSender(packet_samples=self._packet_samples) if params.dtmf_payload_type is not None else None
        )
        self._packets_in = self._bytes_in = 0
        self._foreign = self._malformed = self._unknown_payload = 0
        # RTCP.
        self._last_sr: int = 0  # middle 32 bits of the NTP timestamp of their last SR
        self._last_sr_at = 0.0
        self._remote_block: ReportBlock | None = None
        self._round_trip: float | None = None
        self._bye_received = False
        self._next_rtcp = now + self._rtcp_interval(initial=True)

    def _new_jitter_buffer(self, params: AudioParameters) -> JitterBuffer:
        return JitterBuffer(silence_byte=params.silence_byte, release_on_arrival=self._release_on_arrival)

    @property
    def _packet_samples(self) -> int:
        return self._params.ptime_ms * SAMPLE_RATE // 1000

    @property
    def params(self) -> AudioParameters:
        return self._params

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def bye_received(self) -> bool:
        return self._bye_received

    @property
    def destination(self) -> tuple[str, int] | None:
        """Where to send RTP now: the latched source once latched, else the SDP's address; None on hold, and None
        while the peer has proven no address (neither confirmed nor latched)."""
        if self._params.remote_rtp is None or not self._proven:
            return None
        return self._latched or self._params.remote_rtp

    @property
    def rtcp_destination(self) -> tuple[str, int] | None:
        if self._params.remote_rtp is None or not self._proven:
            return None
        return self._rtcp_latched or self._params.remote_rtcp

    @property
    def _proven(self) -> bool:
        """Whether media may go out: the dialog is confirmed, or the peer's own RTP showed where it is."""
        return self._confirmed or self._latched is not None

    def confirm(self) -> None:
        """The SIP dialog is confirmed (the ACK to our 200 came): the SDP's addresses may be sent to from now on."""
        self._confirmed = True

    @property
    def expects_media(self) -> bool:
        """Whether the peer should be sending us RTP (it has not put the stream on hold or made it inactive)."""
        return self._params.direction in _RECEIVING_DIRECTIONS

    def update(self, params: AudioParameters, now: float) -> None:
        """A new negotiation (re-INVITE): new address, hold/resume, new ptime, even a new codec."""
        old = self._params
        self._params = params
        self.heard_at = now  # a new negotiation starts the media timeout again (a resume: RTP takes a moment)
        if params.remote_rtp != old.remote_rtp:
            self._latched = None  # a new SDP is the one thing allowed to move the stream (see the module doc)
            self._learning = None
            self._rtcp_latched = None
        if params.codec != old.codec or params.payload_type != old.payload_type:
            self._jitter = self._new_jitter_buffer(params)
        if params.dtmf_payload_type is None:
            self._dtmf_out = None
        elif self._dtmf_out is None:
            self._dtmf_out = DtmfSender(packet_samples=self._packet_samples)
        else:
            self._dtmf_out.packet_samples = self._packet_samples

    @property
    def _sending(self) -> bool:
        return self._params.direction in _SENDING_DIRECTIONS and self.destination is not None

    # -- receiving

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> list[DtmfDigit]:
        """One RTP datagram: audio goes into the jitter buffer; returns the DTMF digits it completes (0 or 1).

        Accepted whatever the negotiated direction: a phone that put us on hold may still send music or digits.
        """
        if is_rtcp(data):
            # RTCP on the RTP port (RFC 5761 multiplexing, which some peers do unasked): read it as RTCP.
            self.receive_rtcp(data, source, now)
            return []
        if len(data) > HEADER_BYTES and data[0] == 0x80:
            # The plain header (version 2; no padding, extension or CSRC), as nearly every packet has: unpacked here.
            # parse_rtp's dataclass and its checks for the rest cost as much again, 50 times a second per caller.
            _first, second, sequence_number, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
            payload = data[HEADER_BYTES:]
        else:
            try:
                packet = parse_rtp(data)
            except RtpError:
                self._malformed += 1
                return []
            second = packet.payload_type | (0x80 if packet.marker else 0)
            sequence_number, timestamp, ssrc, payload = (
                packet.sequence_number, packet.timestamp, packet.ssrc, packet.payload
            )  # fmt: skip
        params = self._params
        payload_type = second & 0x7F
        if payload_type not in (params.payload_type, params.dtmf_payload_type, params.cn_payload_type):
            self._unknown_payload += 1  # never latch on these: SIPp's PT 97 fillers, stray traffic
            return []
        if source != self._latched and not self._admits(source, ssrc, sequence_number):
            self._foreign += 1
            return []
        self._packets_in += 1
        self._bytes_in += len(data)
        self.heard_at = now
        if payload_type == params.payload_type:
            self._count(ssrc, sequence_number, timestamp, now)
            self._jitter.push(
                ssrc=ssrc,
                sequence_number=sequence_number,
                timestamp=timestamp,
                payload=payload,
                marker=second > 0x7F,
                now=now,
            )
            return []
        if payload_type == params.cn_payload_type:
            self._count(ssrc, sequence_number, timestamp, now)
            self._jitter.push_comfort_noise(ssrc=ssrc, sequence_number=sequence_number, timestamp=timestamp, now=now)
            return []
        # telephone-event. Its packets share the audio's sequence space when the SSRC is the audio's; SIPp sends
        # them from an SSRC of their own, which is not the audio stream and stays out of its statistics.
        if self._source is not None and self._source.ssrc == ssrc:
            self._source.update_sequence(sequence_number)
        try:
            event = parse_telephone_event(payload)
        except TelephoneEventError:
            self._malformed += 1
            return []
        digit = self._dtmf_in.receive(ssrc, timestamp, second > 0x7F, event)
        return [DtmfDigit(digit)] if digit is not None else []

    def _admits(self, source: tuple[str, int], ssrc: int, sequence_number: int) -> bool:
        """A packet from an address we have not latched to: whether it is the caller's, latching to it if so."""
        if source == self._params.remote_rtp:
            self._latch(source)  # where the SDP said: at once, and over a source learned from traffic
            return True
        if self._latched is not None:
            return False
        run = self._learning
        if (
            run is not None
            and run.source == source
            and run.ssrc == ssrc
            and sequence_number == (run.sequence_number + 1) & 0xFFFF
        ):
            run = _LearningRun(source, ssrc, sequence_number, run.packets + 1)
        else:
            run = _LearningRun(source, ssrc, sequence_number, 1)  # another source, or a gap: a run starts again
        self._learning = run
        if run.packets < LEARNING_PACKETS:
            return False
        self._latch(source)
        return True

    def _latch(self, source: tuple[str, int]) -> None:
        self._latched = source
        self._learning = None
        if self._rtcp_latched is not None and self._rtcp_latched[0] != source[0]:
            self._rtcp_latched = None  # RTCP follows the RTP to its host

    def _count(self, ssrc: int, sequence_number: int, timestamp: int, now: float) -> None:
        """An audio or comfort-noise packet, in the source's statistics (loss, and jitter: RFC 3550 A.8)."""
        source = self._source
        if source is None or source.ssrc != ssrc:
            source = self._source = ReceptionStatistics(ssrc, sequence_number, SAMPLE_RATE)
        if source.update_sequence(sequence_number):
            source.update_jitter(timestamp, now)

    def playout(self, now: float) -> tuple[bytes, FrameKind]:
        """Once per 20 ms tick: the next 160 encoded bytes to play, and what they are."""
        return self._jitter.pop(now)

    def arrived(self, now: float) -> list[tuple[bytes, FrameKind]]:
        """Released on arrival: the frames of 160 encoded bytes the packets received so far complete, in order."""
        return self._jitter.pop_arrived(now)

    # -- sending

    def send(self, frame: bytes, now: float) -> list[bytes]:
        """One tick's 160 encoded bytes in; the RTP datagrams due now out (none while we do not send)."""
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"a frame is {FRAME_SAMPLES} encoded bytes, got {len(frame)}")
        if not self._sending:
            # The clock runs on through hold, so timestamps after it still say how much time passed.
            self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
            self._pending.clear()
            self._marker_due = True
            return []
        self._pending += frame
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        samples = self._packet_samples
        datagrams = []
        while len(self._pending) >= samples:
            slot_timestamp = (self._timestamp - len(self._pending)) & 0xFFFFFFFF
            chunk = bytes(self._pending[:samples])
            del self._pending[:samples]
            slot = self._dtmf_out.next_slot() if self._dtmf_out is not None else None
            if slot is not None and self._params.dtmf_payload_type is not None:
                if slot.start:
                    self._event_timestamp = slot_timestamp  # RFC 4733: the event's timestamp is where it began
                datagrams.append(
                    self._packet(
                        self._params.dtmf_payload_type, self._event_timestamp, slot.start, slot.event.to_bytes()
                    )
                )
            else:
                datagrams.append(self._packet(self._params.payload_type, slot_timestamp, self._marker_due, chunk))
            self._marker_due = False
        return datagrams

    def _packet(self, payload_type: int, timestamp: int, marker: bool, payload: bytes) -> bytes:
        # The plain 12-byte header (no CSRC, extension or padding) packed directly: this runs for every call every
        # tick, and build_rtp's generality costs a dataclass and its checks each time.
        header = _RTP_HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, self._sequence, timestamp, self._ssrc)
        datagram = header + payload
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._packets_out += 1
        self._bytes_out += len(datagram)
        self._octets_out += len(payload)
        return datagram

    def send_dtmf(self, digits: str, now: float) -> None:
        """Queue RFC 4733 digits (0-9 * # A-D); they replace audio packets from the next send on."""
        if self._dtmf_out is None:
            raise DtmfUnavailable("telephone-event was not negotiated for this call")
        self._dtmf_out.queue(digits)

    # -- RTCP

    def receive_rtcp(self, data: bytes, source: tuple[str, int], now: float) -> None:
        if source != self._rtcp_latched and not self._admits_rtcp(source):
            self._foreign += 1
            return
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self._malformed += 1
            return
        self._rtcp_latched = source
        self.heard_at = now
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._last_sr = ntp_middle(packet.ntp_timestamp)
                self._last_sr_at = now
                self._read_blocks(packet.reports, now)
            elif isinstance(packet, ReceiverReport):
                self._read_blocks(packet.reports, now)
            elif isinstance(packet, Bye):
                self._bye_received = True

    def _admits_rtcp(self, source: tuple[str, int]) -> bool:
        """Before RTCP latches: from the SDP's RTCP or RTP address (RFC 5761 multiplexing), or from any port (a NAT
        maps RTCP to one of its own) of the host the RTP latched to. Never from a stranger: its reports would
        redirect ours."""
        if self._rtcp_latched is not None:
            return False
        if source == self._params.remote_rtcp or source == self._params.remote_rtp:
            return True
        return self._latched is not None and source[0] == self._latched[0]

    def _read_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        for block in blocks:
            if block.ssrc != self._ssrc:
                continue
            self._remote_block = block
            if block.last_sr:
                # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s of our own NTP clock.
                units = (ntp_middle(ntp_from_seconds(now)) - block.last_sr - block.delay_since_last_sr) % 2**32
                if units < 2**31:  # a negative result (clock step, bogus block) wraps around: ignore it
                    self._round_trip = units / 65536

    def _rtcp_interval(self, *, initial: bool = False) -> float:
        minimum = RTCP_MIN_INTERVAL / 2 if initial else RTCP_MIN_INTERVAL  # RFC 3550 §6.2: half for the first
        return minimum * self._random.uniform(0.5, 1.5) / _RTCP_COMPENSATION

    def _report(self, now: float) -> list[RtcpPacket]:
        blocks: tuple[ReportBlock, ...] = ()
        if self._source is not None and self._source.received:
            delay = int((now - self._last_sr_at) * 65536) if self._last_sr else 0
            blocks = (self._source.report_block(self._last_sr, delay & 0xFFFFFFFF),)
        report: RtcpPacket
        if self._packets_out > self._packets_out_at_report:
            # We sent since the last report: a sender report, its RTP timestamp the one of "now" on our clock.
            report = SenderReport(
                self._ssrc, ntp_from_seconds(now), self._timestamp, self._packets_out, self._octets_out, blocks
            )
        else:
            report = ReceiverReport(self._ssrc, blocks)
        self._packets_out_at_report = self._packets_out
        return [report, SourceDescription(((self._ssrc, self._cname),))]

    @property
    def rtcp_at(self) -> float:
        """When `rtcp_due` has a report next (UNIX time)."""
        return self._next_rtcp

    def rtcp_due(self, now: float) -> bytes | None:
        """Our SR or RR (with SDES CNAME) when its randomised RFC 3550 interval has passed, else None."""
        if now < self._next_rtcp:
            return None
        self._next_rtcp = now + self._rtcp_interval()
        if self.rtcp_destination is None:
            return None
        return build_rtcp(self._report(now))

    def rtcp_bye(self, now: float, reason: str | None = None) -> bytes:
        """The compound packet to send when the call ends: a last report, CNAME and BYE."""
        return build_rtcp([*self._report(now), Bye((self._ssrc,), reason)])

    @property
    def stats(self) -> RtpStats:
        jitter = self._jitter.stats
        source = self._source
        remote = self._remote_block
        return RtpStats(
            packets_in=self._packets_in,
            packets_out=self._packets_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            packets_lost=max(0, source.lost) if source is not None else 0,
            late_dropped=jitter.late_dropped,
            duplicate_dropped=jitter.duplicate_dropped,
            foreign_dropped=self._foreign,
            malformed_dropped=self._malformed,
            unknown_payload_dropped=self._unknown_payload,
            frames_received=jitter.frames_received,
            frames_concealed=jitter.frames_concealed,
            frames_silence=jitter.frames_silence,
            jitter_ms=source.jitter / (SAMPLE_RATE / 1000) if source is not None else 0.0,
            remote_fraction_lost=remote.fraction_lost / 256 if remote is not None else None,
            remote_packets_lost=remote.cumulative_lost if remote is not None else None,
            remote_jitter_ms=remote.jitter / (SAMPLE_RATE / 1000) if remote is not None else None,
            round_trip_ms=self._round_trip * 1000 if self._round_trip is not None else None,
            latched=self._latched,
        )
