"""The RTP session as a peer sees it: latching, what we send (audio, ptime 30, hold, DTMF), RTCP, stats."""

from __future__ import annotations

import dataclasses
import itertools
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.rtp.events import TelephoneEvent, parse_telephone_event
from dialbridge.rtp.jitter import FrameKind
from dialbridge.rtp.packet import RtpHeaderExtension, RtpPacket, build_rtp, parse_rtp
from dialbridge.rtp.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    SourceDescription,
    build_rtcp,
    ntp_from_seconds,
    ntp_middle,
    parse_rtcp,
)
from dialbridge.rtp.session import LEARNING_PACKETS, DtmfDigit, DtmfUnavailable, RtpSession
from dialbridge.sdp import AudioParameters

SDP_ADDRESS = ("203.0.113.5", 4000)
SDP_RTCP = ("203.0.113.5", 4001)
NAT_ADDRESS = ("198.51.100.9", 61000)
ATTACKER = ("192.0.2.66", 4000)
THEIR_SSRC = 0xCAFE
OUR_SSRC = 0x5151

PARAMS = AudioParameters(
    codec="PCMU",
    payload_type=0,
    dtmf_payload_type=101,
    cn_payload_type=13,
    ptime_ms=20,
    remote_rtp=SDP_ADDRESS,
    remote_rtcp=(SDP_ADDRESS[0], SDP_ADDRESS[1] + 1),
    direction="sendrecv",
)


def session(params: AudioParameters = PARAMS, seed: int = 1) -> RtpSession:
    return RtpSession(params, ssrc=OUR_SSRC, now=0.0, random=random.Random(seed))


def audio(seq: int, ts: int, payload: bytes = b"\x10" * 160, *, ssrc: int = THEIR_SSRC, pt: int = 0) -> bytes:
    return build_rtp(RtpPacket(pt, seq % 65536, ts % 2**32, ssrc, payload))


def frame(value: int) -> bytes:
    return bytes([value]) * 160


def learn(rtp: RtpSession, source: tuple[str, int], now: float = 0.0) -> None:
    """A caller behind NAT: the run of in-sequence packets that latches an address other than the SDP's."""
    for index in range(1, LEARNING_PACKETS + 1):
        rtp.receive(audio(index, 160 * index, frame(index)), source, now + 0.02 * index)


# -- latching


def test_sends_to_the_sdp_address_until_a_packet_latches_it() -> None:
    rtp = session()
    assert rtp.destination == SDP_ADDRESS and rtp.rtcp_destination == (SDP_ADDRESS[0], SDP_ADDRESS[1] + 1)
    learn(rtp, NAT_ADDRESS)  # the NAT rewrote the source: that is where replies must go
    assert rtp.destination == NAT_ADDRESS
    assert rtp.stats.latched == NAT_ADDRESS


def test_after_latching_other_sources_are_ignored() -> None:
    rtp = session()
    learn(rtp, NAT_ADDRESS)
    for index in range(LEARNING_PACKETS + 1, 10):
        rtp.receive(audio(index, 160 * index, frame(index)), NAT_ADDRESS, 0.02 * index)
    # Someone else sends audio and a digit to our port: neither is played nor reported, nor moves the stream.
    rtp.receive(audio(50, 8000, frame(99), ssrc=0xBAD), ATTACKER, 0.2)
    dtmf = build_rtp(RtpPacket(101, 51, 9000, 0xBAD, TelephoneEvent(5, False, 10, 160).to_bytes(), marker=True))
    assert rtp.receive(dtmf, ATTACKER, 0.21) == []
    assert rtp.destination == NAT_ADDRESS
    assert rtp.stats.foreign_dropped == LEARNING_PACKETS - 1 + 2  # the run that latched, before it did; theirs
    played = [rtp.playout(0.2 + 0.02 * tick) for tick in range(10)]
    assert all(payload != frame(99) for payload, _ in played)


def test_packets_of_payload_types_not_negotiated_do_not_latch() -> None:
    rtp = session()
    for index in range(LEARNING_PACKETS):
        rtp.receive(audio(index, 160 * index, pt=97), NAT_ADDRESS, 0.02 * index)  # e.g. SIPp's PT 97 filler
    assert rtp.destination == SDP_ADDRESS and rtp.stats.unknown_payload_dropped == LEARNING_PACKETS
    learn(rtp, NAT_ADDRESS, 0.1)
    assert rtp.destination == NAT_ADDRESS


def test_a_new_sdp_address_re_latches_the_same_one_does_not() -> None:
    rtp = session()
    learn(rtp, NAT_ADDRESS)
    rtp.update(dataclasses.replace(PARAMS, ptime_ms=30), 1.0)  # session refresh, same address
    assert rtp.destination == NAT_ADDRESS
    moved = dataclasses.replace(PARAMS, remote_rtp=("203.0.113.77", 5000), remote_rtcp=("203.0.113.77", 5001))
    rtp.update(moved, 2.0)
    assert rtp.destination == ("203.0.113.77", 5000)
    learn(rtp, ("198.51.100.10", 62000), 2.1)
    assert rtp.destination == ("198.51.100.10", 62000)


def test_malformed_datagrams_are_dropped_and_counted() -> None:
    rtp = session()
    assert rtp.receive(b"\x00" * 20, NAT_ADDRESS, 0.0) == []
    assert rtp.destination == SDP_ADDRESS and rtp.stats.malformed_dropped == 1


# -- sending


def test_audio_packets_ptime_20() -> None:
    rtp = session()
    packets = [parse_rtp(datagram) for tick in range(5) for datagram in rtp.send(frame(tick), tick * 0.02)]
    assert len(packets) == 5
    first = packets[0]
    assert [p.marker for p in packets] == [True, False, False, False, False]  # the talkspurt starts once
    assert all(p.ssrc == OUR_SSRC and p.payload_type == 0 for p in packets)
    assert [(p.sequence_number - first.sequence_number) % 65536 for p in packets] == [0, 1, 2, 3, 4]
    assert [(p.timestamp - first.timestamp) % 2**32 for p in packets] == [0, 160, 320, 480, 640]
    assert [p.payload for p in packets] == [frame(tick) for tick in range(5)]
    assert rtp.stats.packets_out == 5 and rtp.stats.bytes_out == 5 * 172


def test_initial_sequence_and_timestamp_are_random() -> None:
    firsts = {parse_rtp(session(seed=seed).send(frame(0), 0.0)[0]).timestamp for seed in range(5)}
    assert len(firsts) == 5


def test_ptime_30_sends_two_packets_per_three_ticks() -> None:
    rtp = session(dataclasses.replace(PARAMS, ptime_ms=30))
    per_tick = [rtp.send(frame(tick), tick * 0.02) for tick in range(6)]
    assert [len(datagrams) for datagrams in per_tick] == [0, 1, 1, 0, 1, 1]
    packets = [parse_rtp(d) for datagrams in per_tick for d in datagrams]
    assert [len(p.payload) for p in packets] == [240] * 4
    assert [(p.timestamp - packets[0].timestamp) % 2**32 for p in packets] == [0, 240, 480, 720]
    assert b"".join(p.payload for p in packets) == b"".join(frame(tick) for tick in range(6))


def test_hold_sends_nothing_and_resuming_marks_a_talkspurt_with_the_clock_moved_on() -> None:
    rtp = session()
    before = parse_rtp(rtp.send(frame(0), 0.0)[0])
    for held in (dataclasses.replace(PARAMS, direction="recvonly"), dataclasses.replace(PARAMS, remote_rtp=None)):
        rtp.update(held, 0.01)
        assert [rtp.send(frame(1), 0.02 + 0.02 * tick) for tick in range(10)] == [[]] * 10
    rtp.update(PARAMS, 0.5)
    after = parse_rtp(rtp.send(frame(2), 0.5)[0])
    assert after.marker
    assert (after.timestamp - before.timestamp) % 2**32 == 21 * 160  # the audio clock ran through the hold
    assert (after.sequence_number - before.sequence_number) % 65536 == 1  # sequence numbers have no gaps


def test_sendonly_still_sends_and_a_bad_frame_is_refused() -> None:
    rtp = session(dataclasses.replace(PARAMS, direction="sendonly"))
    assert len(rtp.send(frame(0), 0.0)) == 1
    with pytest.raises(ValueError):
        rtp.send(b"\x00" * 100, 0.02)


def test_dtmf_replaces_audio_with_rfc_4733_packets() -> None:
    rtp = session()
    rtp.send(frame(0), 0.0)
    rtp.send_dtmf("5", 0.01)
    packets = [parse_rtp(d) for tick in range(1, 12) for d in rtp.send(frame(tick), tick * 0.02)]
    events = [p for p in packets if p.payload_type == 101]
    assert len(events) == 5 + 2  # 100 ms in 20 ms updates, the last with E, then two more end packets
    assert events[0].marker and not any(p.marker for p in events[1:])
    assert len({p.timestamp for p in events}) == 1
    payloads = [parse_telephone_event(p.payload) for p in events]
    assert [e.duration for e in payloads] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in payloads] == [False] * 4 + [True] * 3
    assert {e.event for e in payloads} == {5}
    # Every packet has its own sequence number; audio resumes on the running clock after the event.
    sequences = [p.sequence_number for p in packets]
    assert sequences == [(sequences[0] + i) % 65536 for i in range(len(packets))]
    resumed = packets[len(events)]
    assert resumed.payload_type == 0
    assert (resumed.timestamp - events[0].timestamp) % 2**32 == 7 * 160


def test_dtmf_needs_telephone_event() -> None:
    rtp = session(dataclasses.replace(PARAMS, dtmf_payload_type=None))
    with pytest.raises(DtmfUnavailable):
        rtp.send_dtmf("1", 0.0)


# -- receiving


def test_received_audio_plays_out() -> None:
    rtp = session()
    out = []
    for index in range(10):
        rtp.receive(audio(100 + index, 8000 + 160 * index, frame(index + 1)), SDP_ADDRESS, index * 0.02)
        out.append(rtp.playout(index * 0.02 + 0.01))
    assert out[2] == (frame(1), FrameKind.RECEIVED)
    assert rtp.stats.packets_in == 10 and rtp.stats.bytes_in == 10 * 172


def test_headers_with_csrcs_extension_and_padding_play_out_like_plain_ones() -> None:
    # A mixer or SBC on the path adds CSRCs, an extension (RFC 8285) or padding (SRTP-ready senders): the plain
    # header takes a quicker path, these the general parser, and both must yield the same audio and statistics.
    plain, dressed = session(), session()
    extension = RtpHeaderExtension(0xBEDE, b"\x10\x01\x00\x00")
    out = []
    for index in range(10):
        seq, ts, payload, now = 100 + index, 8000 + 160 * index, frame(index + 1), index * 0.02
        plain.receive(audio(seq, ts, payload), SDP_ADDRESS, now)
        packet = RtpPacket(0, seq, ts, THEIR_SSRC, payload, csrcs=(7, 8), extension=extension, padding=index % 2 * 4)
        dressed.receive(build_rtp(packet), SDP_ADDRESS, now)
        out.append(dressed.playout(now + 0.01))
        assert out[-1] == plain.playout(now + 0.01)
    assert out[2] == (frame(1), FrameKind.RECEIVED) and out[9] == (frame(8), FrameKind.RECEIVED)
    assert dressed.stats.packets_in == plain.stats.packets_in == 10
    assert dressed.stats.packets_lost == plain.stats.packets_lost == 0


def read_pcap_rtp(path: Path) -> list[bytes]:
    data = path.read_bytes()
    offset, out = 24, []
    while offset < len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        ip = data[offset + 16 + 14 : offset + 16 + length]
        offset += 16 + length
        out.append(ip[(ip[0] & 15) * 4 + 8 :])
    return out


@pytest.mark.skipif(not Path("/usr/share/sip-tester").is_dir(), reason="SIPp (Debian sip-tester) not installed")
def test_sipp_dtmf_pcap_from_its_own_ssrc_alongside_audio() -> None:
    rtp = session()
    for index in range(20):
        rtp.receive(audio(index, 160 * index), SDP_ADDRESS, index * 0.02)
    digits = []
    for name in ("1", "pound"):
        for datagram in read_pcap_rtp(Path(f"/usr/share/sip-tester/dtmf_2833_{name}.pcap")):
            digits += rtp.receive(datagram, SDP_ADDRESS, 0.5)
    assert digits == [DtmfDigit("1"), DtmfDigit("#")]
    assert rtp.stats.packets_lost == 0  # SIPp's repeated end packets are not the audio stream's


def test_baresip_style_dtmf_in_the_audio_stream() -> None:
    rtp = session()
    digits = []
    seq = 1
    for digit_index, code in enumerate((1, 2, 1)):
        timestamp = 10_000 + digit_index * 8000
        packets = [TelephoneEvent(code, False, 10, 400 * n) for n in range(1, 10)] + [
            TelephoneEvent(code, True, 10, 3600)
        ] * 3
        for n, event in enumerate(packets):
            datagram = build_rtp(RtpPacket(101, seq, timestamp, THEIR_SSRC, event.to_bytes(), marker=n == 0))
            seq += 1
            digits += rtp.receive(datagram, SDP_ADDRESS, seq * 0.05)
    assert [d.digit for d in digits] == ["1", "2", "1"]
    assert rtp.stats.packets_lost == 0


def test_comfort_noise_in_is_silence_not_loss() -> None:
    rtp = session()
    for index in range(5):
        rtp.receive(audio(index, 160 * index), SDP_ADDRESS, index * 0.02)
    rtp.receive(audio(5, 800, b"\x40", pt=13), SDP_ADDRESS, 0.1)
    kinds = [rtp.playout(0.01 + 0.02 * tick)[1] for tick in range(20)]
    assert FrameKind.CONCEALED not in kinds and kinds[-1] is FrameKind.SILENCE
    assert rtp.stats.packets_lost == 0


def test_loss_and_jitter_stats_from_a_known_arrival_pattern() -> None:
    rtp = session()
    for index in range(100):
        if index in (30, 31, 70):
            continue
        late = 0.002 if index % 2 else 0.0  # every other packet 2 ms late: |D| = 16 timestamp units = 2 ms
        rtp.receive(audio(65_500 + index, 2**32 - 4000 + 160 * index), SDP_ADDRESS, index * 0.02 + late)
    stats = rtp.stats
    assert stats.packets_lost == 3 and stats.packets_in == 97
    assert 1.7 < stats.jitter_ms <= 2.0


# -- RTCP


def test_rtcp_schedule_is_randomised_around_5_s() -> None:
    times = []
    rtp = session(seed=7)
    for step in range(4000):
        now = step * 0.01
        if rtp.rtcp_due(now) is not None:
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 1.0 <= times[0] <= 3.1  # the first report after half the minimum interval, randomised
    assert all(2.0 <= gap <= 6.2 for gap in gaps)
    assert 3.0 < sum(gaps) / len(gaps) < 5.3


def first_report(rtp: RtpSession, until: float = 10.0) -> tuple[float, bytes]:
    now = 0.0
    while now < until:
        report = rtp.rtcp_due(now)
        if report is not None:
            return now, report
        now += 0.01
    raise AssertionError("no RTCP report")


def test_receiver_report_tells_them_what_we_lost() -> None:
    rtp = session(dataclasses.replace(PARAMS, direction="recvonly"))
    for index in range(50):
        if index != 10:
            rtp.receive(audio(index, 160 * index), SDP_ADDRESS, index * 0.02)
    _, report = first_report(rtp)
    rr, sdes = parse_rtcp(report)
    assert isinstance(rr, ReceiverReport) and rr.ssrc == OUR_SSRC
    (block,) = rr.reports
    assert block.ssrc == THEIR_SSRC and block.cumulative_lost == 1 and block.highest_sequence == 49
    assert block.fraction_lost == 256 // 50
    assert sdes == SourceDescription(((OUR_SSRC, f"{OUR_SSRC:08x}@dialbridge"),))


def test_sender_report_counts_what_we_sent() -> None:
    rtp = session()
    for tick in range(10):
        rtp.send(frame(tick), tick * 0.02)
    now, report = first_report(rtp)
    sr = parse_rtcp(report)[0]
    assert isinstance(sr, SenderReport)
    assert (sr.ssrc, sr.packet_count, sr.octet_count) == (OUR_SSRC, 10, 1600)
    assert sr.ntp_timestamp == ntp_from_seconds(now)


def test_round_trip_time_and_their_view_of_our_stream() -> None:
    rtp = session()
    for tick in range(10):
        rtp.send(frame(tick), tick * 0.02)
    sent_at, report = first_report(rtp)
    our_sr = parse_rtcp(report)[0]
    assert isinstance(our_sr, SenderReport)
    # They hold our SR for 250 ms, and their RR reaches us 100 ms of network after it left: RTT 100 ms.
    block = ReportBlock(
        ssrc=OUR_SSRC,
        fraction_lost=64,
        cumulative_lost=3,
        highest_sequence=1000,
        jitter=40,
        last_sr=ntp_middle(our_sr.ntp_timestamp),
        delay_since_last_sr=int(0.25 * 65536),
    )
    rtp.receive_rtcp(build_rtcp([ReceiverReport(THEIR_SSRC, (block,))]), SDP_RTCP, sent_at + 0.35)
    stats = rtp.stats
    assert stats.round_trip_ms is not None and abs(stats.round_trip_ms - 100) < 0.1
    assert stats.remote_fraction_lost == 0.25 and stats.remote_packets_lost == 3 and stats.remote_jitter_ms == 5.0
    assert rtp.rtcp_destination == SDP_RTCP


def test_their_sender_report_is_echoed_in_our_next_report() -> None:
    rtp = session(dataclasses.replace(PARAMS, direction="recvonly"))
    rtp.receive(audio(1, 160), SDP_ADDRESS, 0.0)
    their_ntp = ntp_from_seconds(12345.5)
    rtp.receive_rtcp(build_rtcp([SenderReport(THEIR_SSRC, their_ntp, 160, 1, 160)]), SDP_ADDRESS, 0.5)
    now, report = first_report(rtp)
    (block,) = parse_rtcp(report)[0].reports  # type: ignore[union-attr]
    assert block.last_sr == ntp_middle(their_ntp)
    assert abs(block.delay_since_last_sr / 65536 - (now - 0.5)) < 0.001


def test_rtcp_from_another_address_after_latching_is_ignored() -> None:
    rtp = session()
    rtcp = build_rtcp([ReceiverReport(THEIR_SSRC, (ReportBlock(OUR_SSRC, 0, 0, 0, 0, 0, 0),))])
    rtp.receive_rtcp(rtcp, SDP_RTCP, 0.0)
    bogus = build_rtcp([ReceiverReport(0xBAD, (ReportBlock(OUR_SSRC, 255, 999, 0, 0, 0, 0),))])
    rtp.receive_rtcp(bogus, ATTACKER, 0.1)
    assert rtp.stats.remote_fraction_lost == 0 and rtp.stats.foreign_dropped == 1


def test_bye() -> None:
    rtp = session()
    packets = parse_rtcp(rtp.rtcp_bye(1.0, "hangup"))
    assert packets[-1].ssrcs == (OUR_SSRC,)  # type: ignore[union-attr]
    other = session()
    other.receive_rtcp(rtp.rtcp_bye(1.0), SDP_RTCP, 1.0)
    assert other.bye_received


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.sampled_from([NAT_ADDRESS, ATTACKER])), max_size=40)
)
def test_fuzz_session_input(datagrams: list[tuple[bool, bytes, tuple[str, int]]]) -> None:
    rtp = session()
    now = 0.0
    for is_rtcp, data, source in datagrams:
        now += 0.01
        if is_rtcp:
            rtp.receive_rtcp(data, source, now)
        else:
            for digit in rtp.receive(data, source, now):
                assert digit.digit in "0123456789*#ABCD"
        payload, _ = rtp.playout(now)
        assert len(payload) == 160
        rtp.rtcp_due(now)
    rtp.stats  # noqa: B018 - computing stats from whatever arrived must not fail


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 13, 101]), st.integers(0, 65535), st.integers(0, 2**32 - 1), st.binary(max_size=400)
        ),
        max_size=60,
    )
)
def test_fuzz_session_with_valid_headers(packets: list[tuple[int, int, int, bytes]]) -> None:
    rtp = session()
    for step, (pt, seq, ts, payload) in enumerate(packets):
        rtp.receive(build_rtp(RtpPacket(pt, seq, ts, THEIR_SSRC, payload)), SDP_ADDRESS, step * 0.02)
        assert len(rtp.playout(step * 0.02)[0]) == 160
    assert rtp.stats.packets_lost >= 0


@pytest.mark.parametrize("event_ms", [140, 600])
def test_audio_after_in_stream_dtmf_plays_at_the_target_delay(event_ms: int) -> None:
    # A phone replaces its audio packets with telephone-event packets for the digit, then audio resumes on the
    # same clock: the buffer must not keep the wait it did while no audio came.
    rtp = session()
    seq, now = 0, 0.0
    for index in range(20):
        rtp.receive(audio(seq, 160 * index, frame(1)), SDP_ADDRESS, now)
        rtp.playout(now + 0.01)
        seq, now = seq + 1, now + 0.02
    event_packets = event_ms // 20
    for n in range(event_packets):
        event = TelephoneEvent(3, n == event_packets - 1, 10, 160 * (n + 1))
        rtp.receive(
            build_rtp(RtpPacket(101, seq, 160 * 20, THEIR_SSRC, event.to_bytes(), marker=n == 0)), SDP_ADDRESS, now
        )
        rtp.playout(now + 0.01)
        seq, now = seq + 1, now + 0.02
    first_after = 20 + event_packets
    out = []
    for index in range(first_after, first_after + 10):
        rtp.receive(audio(seq, 160 * index, frame(2)), SDP_ADDRESS, now)
        out.append(rtp.playout(now + 0.01))
        seq, now = seq + 1, now + 0.02
    assert [kind for _, kind in out[2:]] == [FrameKind.RECEIVED] * 8
    assert out[2][0] == frame(2)
    assert rtp.stats.packets_lost == 0


def test_rtcp_multiplexed_on_the_rtp_port_is_read_as_rtcp() -> None:
    rtp = session()
    block = ReportBlock(OUR_SSRC, 128, 7, 0, 0, 0, 0)
    assert rtp.receive(build_rtcp([ReceiverReport(THEIR_SSRC, (block,))]), SDP_ADDRESS, 0.0) == []
    assert rtp.stats.remote_fraction_lost == 0.5 and rtp.stats.packets_in == 0


def read_pcap_timed(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    offset, out = 24, []
    while offset < len(data):
        seconds, micros, length = struct.unpack_from("<III", data, offset)
        ip = data[offset + 16 + 14 : offset + 16 + length]
        offset += 16 + length
        out.append((seconds + micros / 1e6, ip[(ip[0] & 15) * 4 + 8 :]))
    return out


@pytest.mark.skipif(not Path("/usr/share/sip-tester").is_dir(), reason="SIPp (Debian sip-tester) not installed")
def test_sipp_g711a_pcap_at_its_captured_timing_plays_every_sample() -> None:
    # SIPp's uac_pcap plays g711a.pcap: PCMA in 30 ms packets, with the capture's own jitter (25-35 ms gaps).
    params = dataclasses.replace(PARAMS, codec="PCMA", payload_type=8, cn_payload_type=None, ptime_ms=30)
    rtp = session(params)
    packets = read_pcap_timed(Path("/usr/share/sip-tester/g711a.pcap"))
    start = packets[0][0]
    events = [(when - start, 0, datagram) for when, datagram in packets]
    ticks = int((packets[-1][0] - start) / 0.02) + 10
    events += [(0.005 + 0.02 * tick, 1, b"") for tick in range(ticks)]
    played = []
    for now, kind, datagram in sorted(events):
        if kind == 0:
            rtp.receive(datagram, SDP_ADDRESS, now)
        else:
            played.append(rtp.playout(now))
    audio_sent = b"".join(parse_rtp(datagram).payload for _, datagram in packets)
    first = [kind for _, kind in played].index(FrameKind.RECEIVED)
    received = played[first : first + len(audio_sent) // 160]
    assert [kind for _, kind in received] == [FrameKind.RECEIVED] * (len(audio_sent) // 160)
    assert b"".join(frame for frame, _ in received) == audio_sent[: len(received) * 160]
    assert rtp.stats.packets_lost == 0 and rtp.stats.late_dropped == 0
    assert rtp.stats.jitter_ms < 3
