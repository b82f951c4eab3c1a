"""RFC 4733 telephone events: the payload, digits reported once from real senders' patterns, and our sender."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.rtp.events import (
    DtmfReceiver,
    DtmfSender,
    EventSlot,
    TelephoneEvent,
    TelephoneEventError,
    digit_to_event,
    event_to_digit,
    parse_telephone_event,
)

SIPP_PCAP_DIR = Path("/usr/share/sip-tester")


def test_payload_wire_layout() -> None:
    event = TelephoneEvent(event=11, end=True, volume=10, duration=2240)
    assert event.to_bytes() == bytes([11, 0x80 | 10]) + struct.pack("!H", 2240)
    assert parse_telephone_event(event.to_bytes() + b"\x00\x00") == event  # trailing bytes (RFC 2198 leftovers)


def test_short_payload_is_an_error() -> None:
    with pytest.raises(TelephoneEventError):
        parse_telephone_event(b"\x01\x8a\x00")


def test_digit_mapping() -> None:
    assert [event_to_digit(code) for code in range(16)] == list("0123456789*#ABCD")
    assert event_to_digit(16) is None  # flash is an event, not a digit
    assert digit_to_event("#") == 11 and digit_to_event("a") == 12
    with pytest.raises(ValueError):
        digit_to_event("E")


# (marker, timestamp, event, end, duration) as SIPp's dtmf_2833_1.pcap sends them: three end packets back to back,
# same timestamp and, in that capture, the same sequence number too.
SIPP_DIGIT_1 = [
    (True, 13280, 1, False, 0),
    *[(False, 13280, 1, False, 320 * n) for n in range(1, 7)],
    (False, 13280, 1, True, 2240),
    (False, 13280, 1, True, 2240),
    (False, 13280, 1, True, 2240),
]


def test_sipp_pattern_reports_the_digit_once() -> None:
    receiver = DtmfReceiver()
    reported = [
        receiver.receive(0x0E05384E, ts, marker, TelephoneEvent(ev, end, 10, dur))
        for marker, ts, ev, end, dur in SIPP_DIGIT_1
    ]
    assert reported == ["1"] + [None] * 9


def read_pcap_rtp(path: Path) -> list[tuple[bool, int, int, bytes]]:
    """(marker, timestamp, SSRC, payload) of each RTP packet in a classic little-endian Ethernet/IPv4/UDP pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    offset = 24
    packets = []
    while offset < len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        ip = frame[14:]
        rtp = ip[(ip[0] & 15) * 4 + 8 :]
        packets.append(
            (bool(rtp[1] & 0x80), struct.unpack_from("!I", rtp, 4)[0], struct.unpack_from("!I", rtp, 8)[0], rtp[12:])
        )
    return packets


@pytest.mark.skipif(not SIPP_PCAP_DIR.is_dir(), reason="SIPp (Debian sip-tester) not installed")
@pytest.mark.parametrize(("name", "digit"), [("1", "1"), ("0", "0"), ("9", "9"), ("star", "*"), ("pound", "#")])
def test_sipp_pcaps_report_their_digit_once(name: str, digit: str) -> None:
    receiver = DtmfReceiver()
    reported = []
    for marker, timestamp, ssrc, payload in read_pcap_rtp(SIPP_PCAP_DIR / f"dtmf_2833_{name}.pcap"):
        result = receiver.receive(ssrc, timestamp, marker, parse_telephone_event(payload))
        if result is not None:
            reported.append(result)
    assert reported == [digit]


def baresip_digit(code: int, timestamp: int) -> list[tuple[bool, int, TelephoneEvent]]:
    # libre's telev: updates every 50 ms (duration += 400), at least 9, then 3 end packets, same timestamp.
    packets = [(n == 1, timestamp, TelephoneEvent(code, False, 10, 400 * n)) for n in range(1, 10)]
    packets += [(False, timestamp, TelephoneEvent(code, True, 10, 3600))] * 3
    return packets


def test_baresip_pattern_two_equal_digits_in_a_row() -> None:
    receiver = DtmfReceiver()
    packets = baresip_digit(5, 8000) + baresip_digit(5, 8000 + 5200)
    reported = [receiver.receive(42, ts, marker, event) for marker, ts, event in packets]
    assert [digit for digit in reported if digit] == ["5", "5"]
    assert reported[0] == "5" and reported[12] == "5"


def test_lost_start_packets_still_report_and_a_late_start_does_not_repeat() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(1, 500, False, TelephoneEvent(7, False, 10, 480)) == "7"  # start and first update lost
    assert receiver.receive(1, 500, True, TelephoneEvent(7, False, 10, 160)) is None  # the start, reordered
    assert receiver.receive(1, 500, False, TelephoneEvent(7, True, 10, 800)) is None
    assert receiver.receive(1, 2000, False, TelephoneEvent(7, True, 10, 800)) == "7"  # only an end packet survived


def test_same_timestamp_different_ssrc_are_different_events() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(1, 500, True, TelephoneEvent(3, False, 10, 160)) == "3"
    assert receiver.receive(2, 500, True, TelephoneEvent(3, False, 10, 160)) == "3"


def test_long_event_segments_are_one_digit() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(1, 1000, True, TelephoneEvent(4, False, 10, 65535)) == "4"
    # RFC 4733 §2.5.1.3: the next segment has a new timestamp and no marker; the key is still held.
    assert receiver.receive(1, 1000 + 65535, False, TelephoneEvent(4, False, 10, 800)) is None
    assert receiver.receive(1, 1000 + 65535, False, TelephoneEvent(4, True, 10, 1600)) is None


def test_non_digit_events_are_ignored() -> None:
    assert DtmfReceiver().receive(1, 1, True, TelephoneEvent(16, False, 10, 160)) is None


def test_receiver_memory_is_bounded() -> None:
    receiver = DtmfReceiver()
    for index in range(10_000):
        receiver.receive(index, index * 1000, True, TelephoneEvent(index % 16, False, 10, 160))
    assert len(receiver._recent) <= 64 and len(receiver._open_event) <= 64


def slots(sender: DtmfSender, count: int) -> list[EventSlot | None]:
    return [sender.next_slot() for _ in range(count)]


def test_sender_schedule_ptime_20() -> None:
    sender = DtmfSender(packet_samples=160)
    sender.queue("1#")
    schedule = slots(sender, 18)
    # Digit 1: five 20 ms packets (100 ms), durations 160..800, marker on the first, the last with E.
    tone = [slot for slot in schedule[:5] if slot is not None]
    assert [(s.event.event, s.event.duration, s.event.end, s.start) for s in tone] == [
        (1, 160, False, True),
        (1, 320, False, False),
        (1, 480, False, False),
        (1, 640, False, False),
        (1, 800, True, False),
    ]
    # Two more end packets (three in all, identical), then audio for the rest of the 50 ms gap.
    assert schedule[5] == schedule[6] == tone[-1]
    assert schedule[7] is None
    assert schedule[8] is not None and schedule[8].start and schedule[8].event.event == 11
    assert schedule[15] is None and not sender.busy
    assert schedule[16:] == [None, None]


def test_sender_schedule_ptime_30() -> None:
    sender = DtmfSender(packet_samples=240)
    sender.queue("9")
    schedule = slots(sender, 8)
    events = [slot.event for slot in schedule if slot is not None]
    # 100 ms in 30 ms packets: four packets (at least the tone asked for), then the end packet twice more.
    assert [e.duration for e in events] == [240, 480, 720, 960, 960, 960]
    assert [e.end for e in events] == [False, False, False, True, True, True]
    assert schedule[6:] == [None, None]


def test_sender_rejects_bad_digits_without_queueing_any() -> None:
    sender = DtmfSender()
    with pytest.raises(ValueError):
        sender.queue("12x")
    assert not sender.busy


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.booleans(), st.binary(max_size=8)), max_size=60)
)
def test_fuzz_receiver(packets: list[tuple[int, int, bool, bytes]]) -> None:
    receiver = DtmfReceiver()
    for ssrc, timestamp, marker, payload in packets:
        try:
            event = parse_telephone_event(payload)
        except TelephoneEventError:
            continue
        digit = receiver.receive(ssrc, timestamp, marker, event)
        assert digit is None or digit in "0123456789*#ABCD"
    assert len(receiver._recent) <= 64
