"""RFC 4733 telephone-event payloads: parse and build, a receiver that reports each digit once, and a sender.

What peers send (both observed, both handled):
  SIPp dtmf_2833_*.pcap: marker on the first packet, updates every 20 ms, three end packets back to back with the same
    timestamp *and* the same sequence number; SIPp's play_dtmf uses its own SSRC, separate from the audio's.
  baresip (libre telev): an update every 50 ms (duration += 400), at least 9 of them, then three end packets, each with
    its own sequence number, same timestamp.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

DIGITS: Final = "0123456789*#ABCD"  # event codes 0-15 (RFC 4733 §3.2)
PAYLOAD_BYTES: Final = 4
MAX_DURATION: Final = 0xFFFF
DEFAULT_VOLUME: Final = 10  # -10 dBm0, what SIPp and baresip send
END_PACKETS: Final = 3  # RFC 4733 §2.5.1.4: the final packet is sent three times
_REMEMBERED_EVENTS: Final = 64


class TelephoneEventError(ValueError):
    """Not a telephone-event payload."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int  # 0-255; 0-15 are DTMF
    end: bool
    volume: int  # 0-63, in -dBm0
    duration: int  # in timestamp units, since the event's RTP timestamp

    def to_bytes(self) -> bytes:
        if not (0 <= self.event <= 255 and 0 <= self.volume <= 63 and 0 <= self.duration <= MAX_DURATION):
            raise TelephoneEventError(f"telephone-event field out of range: {self}")
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | self.volume, self.duration)


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """The first event of the payload (RFC 4733 §2.3); more than one event per packet only comes with RFC 2198."""
    if len(payload) < PAYLOAD_BYTES:
        raise TelephoneEventError(f"telephone-event payload of {len(payload)} bytes, need 4")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def event_to_digit(event: int) -> str | None:
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


def digit_to_event(digit: str) -> int:
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"{digit!r} is not a DTMF digit (0-9 * # A-D)")
    return index


class DtmfReceiver:
    """Reports each DTMF digit once, on the first packet of its event that arrives (start, update or end).

    An event is (SSRC, RTP timestamp, event code): its start packet, updates, and end packets all share the timestamp,
    so retransmitted end packets and repeated start packets fall on a remembered key. A new digit always has a new
    timestamp (RFC 4733 §2.5.1.1); keeping the code in the key still reports a digit from a sender that reuses one.
    A long event split into segments (§2.5.1.3: same code, new timestamp, no marker, the previous one not ended)
    is not a new digit.
    """

    __slots__ = ("_open_event", "_recent", "_recent_order")

    def __init__(self) -> None:
        self._recent: set[tuple[int, int, int]] = set()
        self._recent_order: deque[tuple[int, int, int]] = deque()
        self._open_event: dict[int, tuple[int, int]] = {}  # SSRC -> (timestamp, code) of an event not yet ended

    def receive(self, ssrc: int, timestamp: int, marker: bool, event: TelephoneEvent) -> str | None:
        digit = event_to_digit(event.event)
        if digit is None:
            return None  # tones and line events (RFC 4734) are not digits
        key = (ssrc, timestamp, event.event)
        seen = key in self._recent
        if not seen:
            self._remember(key)
        previous = self._open_event.get(ssrc)
        if event.end:
            if previous is not None and previous[0] == timestamp:
                del self._open_event[ssrc]
        elif not seen:
            if len(self._open_event) >= _REMEMBERED_EVENTS:
                self._open_event.clear()
            self._open_event[ssrc] = (timestamp, event.event)
        if seen:
            return None
        if (
            previous is not None
            and not marker
            and previous[1] == event.event
            and 0 < (timestamp - previous[0]) % 2**32 <= MAX_DURATION + 8000
        ):
            return None  # the next segment of a long event
        return digit

    def _remember(self, key: tuple[int, int, int]) -> None:
        self._recent.add(key)
        self._recent_order.append(key)
        if len(self._recent_order) > _REMEMBERED_EVENTS:
            self._recent.discard(self._recent_order.popleft())


@dataclass(frozen=True, slots=True)
class EventSlot:
    """The telephone-event packet to send in one packet slot instead of audio."""

    event: TelephoneEvent
    start: bool  # the first packet of the event: set the marker and take this slot's timestamp as the event's


class DtmfSender:
    """Schedules queued digits onto packet slots: each digit is a tone of whole packets, then a gap.

    Per digit: ceil(tone / ptime) packets with increasing duration (the first with the marker), the last of them with
    the end bit, then that end packet twice more in the next slots (three in all, same timestamp and duration), then
    audio until `gap` has passed since the tone ended. The caller asks once per packet slot.
    """

    __slots__ = ("_gap_ms", "_packet_samples", "_queue", "_slots", "_tone_ms", "_volume")

    def __init__(
        self, *, packet_samples: int = 160, tone_ms: int = 100, gap_ms: int = 50, volume: int = DEFAULT_VOLUME
    ) -> None:
        if packet_samples <= 0 or tone_ms <= 0 or gap_ms < 0:
            raise ValueError("packet size and tone length must be positive, the gap not negative")
        self._packet_samples = packet_samples
        self._tone_ms = tone_ms
        self._gap_ms = gap_ms
        self._volume = volume
        self._queue: deque[int] = deque()
        self._slots: deque[EventSlot | None] = deque()  # the current digit's remaining slots (None: audio in the gap)

    @property
    def busy(self) -> bool:
        return bool(self._queue or self._slots)

    @property
    def packet_samples(self) -> int:
        return self._packet_samples

    @packet_samples.setter
    def packet_samples(self, samples: int) -> None:
        """A new packet time; the digit being sent keeps the old one, the next ones use this."""
        if samples <= 0:
            raise ValueError("packet size must be positive")
        self._packet_samples = samples

    def queue(self, digits: str) -> None:
        codes = [digit_to_event(digit) for digit in digits]  # all or nothing: validate before queueing any
        if len(self._queue) + len(codes) > 1024:
            raise ValueError("too many DTMF digits queued")
        self._queue.extend(codes)

    def clear(self) -> None:
        self._queue.clear()
        self._slots.clear()

    def next_slot(self) -> EventSlot | None:
        """What to send in this packet slot: an event packet, or None for audio."""
        if not self._slots:
            if not self._queue:
                return None
            self._schedule(self._queue.popleft())
        return self._slots.popleft()

    def _schedule(self, code: int) -> None:
        samples = self._packet_samples
        tone_packets = max(1, -(-self._tone_ms * 8 // samples))
        gap_packets = -(-self._gap_ms * 8 // samples)
        for index in range(1, tone_packets + 1):
            duration = min(index * samples, MAX_DURATION)
            event = TelephoneEvent(code, end=index == tone_packets, volume=self._volume, duration=duration)
            self._slots.append(EventSlot(event, start=index == 1))
        for _ in range(END_PACKETS - 1):
            self._slots.append(EventSlot(event, start=False))
        # The end retransmissions already fill part of the gap; audio fills the rest.
        self._slots.extend([None] * max(0, gap_packets - (END_PACKETS - 1)))
