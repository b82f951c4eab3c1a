"""A jitter buffer for G.711 keyed by RTP timestamp: packets of any size in, exactly one 20 ms frame out per call.

G.711 is one byte per sample, so the buffer is a ring of samples indexed by (extended) RTP timestamp with a
"present" flag per sample: a packet of 160 or 240 samples writes where its timestamp says, and a playout reads the
next 160. Reordering costs nothing, a duplicate (same sequence number) is dropped, a packet whose samples have all
been played is late (dropped, counted).

Delay. The read cursor starts `target` samples behind the first packet. When the frame due is missing and nothing
later has arrived (underrun: a delay spike, or the far end stopped), the cursor waits, which adds a frame of delay;
when the next packet shows the missing ones were lost rather than late, the wait is given back; and when the
least audio left buffered after a playout over the last 2 s exceeds the target, one frame is skipped. A packet
with the marker bit (a talkspurt starts) while nothing is buffered re-anchors the cursor at the target. The target
follows the measured interarrival jitter between `min_delay_ms` and `max_delay_ms`.

Resynchronisation. A new SSRC resets the buffer (a new stream); going back to the SSRC just left takes two packets
in a row from it, so a reordered straggler does not flip the stream twice. A timestamp more than `max_delay_ms`
ahead of the cursor (a talkspurt after silence, the far end restarted) re-anchors at once; one far behind (a restart
that went backwards) does so when a second packet confirms it, so one stray old packet cannot derail the stream.

Concealment. A missing frame repeats the last fully received one, at most twice in a row, then codec silence. After
a comfort-noise packet (RFC 3389) missing frames are silence and neither concealment nor a cause to wait.

Release on arrival (`release_on_arrival=True`, the gateway's SIP leg). When the audio goes on to a receiver with a
jitter buffer of its own (a browser's NetEQ), a second one here only adds delay, and a clocked playout adds up to a
tick more, whose phase against the sender's is chance. Then there is no target delay: `pop_arrived` releases every
frame as soon as the packet completing it arrives, a frame that a later packet shows lost is concealed as above,
and a gap of more than `MAX_CONCEALED_FRAMES` (silence suppression, a sender that paused) re-anchors at the packet
that ends it rather than filling it: the receiver heard that time pass in real time already. A reordered packet
arrives after its frame was released, and is dropped as late.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz, one byte per sample in G.711
SAMPLES_PER_MS: Final = 8
MAX_PACKET_SAMPLES: Final = 960  # 120 ms; larger packets are dropped, which bounds what one packet can write
MAX_CONCEALED_FRAMES: Final = 2
_RING_SAMPLES: Final = 8192  # ~1 s: more than max delay + the largest packet + a frame, so the ring never aliases
_RECENT_SEQUENCES: Final = 128
_SHRINK_WINDOW_FRAMES: Final = 100  # 2 s: slow to give back delay it just needed
_FAR_BEHIND_SAMPLES: Final = 8000  # 1 s behind the cursor: not reordering any more, a sender that jumped back
_MAX_DELAY_MS: Final = 400
_PRESENT: Final = b"\x01" * _RING_SAMPLES  # "present" flags to slice from


class FrameKind(StrEnum):
    RECEIVED = "received"
    CONCEALED = "concealed"
    SILENCE = "silence"


@dataclass(frozen=True, slots=True)
class JitterStats:
    packets_accepted: int
    late_dropped: int
    duplicate_dropped: int
    oversize_dropped: int
    frames_received: int
    frames_concealed: int
    frames_silence: int
    resyncs: int
    target_delay_ms: float
    buffered_ms: float


class JitterBuffer:
    __slots__ = (
        "_comfort_noise_from",
        "_data",
        "_duplicate",
        "_far_behind_run",
        "_frames_concealed",
        "_frames_received",
        "_frames_silence",
        "_highest_extended",
        "_highest_timestamp",
        "_initial_delay",
        "_jitter",
        "_last_good",
        "_last_transit",
        "_late",
        "_max_delay",
        "_min_delay",
        "_missing_run",
        "_newest_end",
        "_oversize",
        "_packet_samples",
        "_packets",
        "_present",
        "_previous_ssrc",
        "_previous_ssrc_seen",
        "_read",
        "_recent_order",
        "_recent_sequences",
        "_release_on_arrival",
        "_resyncs",
        "_shrink_frames",
        "_shrink_minimum",
        "_silence",
        "_ssrc",
        "_stalled",
        "_target",
    )

    def __init__(
        self,
        *,
        silence_byte: int,
        initial_delay_ms: int = 40,
        min_delay_ms: int = 40,
        max_delay_ms: int = 200,
        release_on_arrival: bool = False,
    ) -> None:
        if not 0 < min_delay_ms <= initial_delay_ms <= max_delay_ms <= _MAX_DELAY_MS:
            raise ValueError("need 0 < min_delay_ms <= initial_delay_ms <= max_delay_ms <= 400")
        self._silence = bytes([silence_byte]) * FRAME_SAMPLES
        self._release_on_arrival = release_on_arrival
        self._initial_delay = 0 if release_on_arrival else initial_delay_ms * SAMPLES_PER_MS
        self._min_delay = min_delay_ms * SAMPLES_PER_MS
        self._max_delay = max_delay_ms * SAMPLES_PER_MS
        self._data = bytearray(self._silence[:1] * _RING_SAMPLES)
        self._present = bytearray(_RING_SAMPLES)
        self._recent_sequences: set[int] = set()
        self._recent_order: deque[int] = deque()
        self._ssrc: int | None = None
        self._previous_ssrc: int | None = None
        self._previous_ssrc_seen = False
        self._packets = self._late = self._duplicate = self._oversize = self._resyncs = 0
        self._frames_received = self._frames_concealed = self._frames_silence = 0
        self._forget_stream()

    def _forget_stream(self) -> None:
        self._read: int | None = None  # extended timestamp of the next sample to play; None before the first packet
        self._highest_timestamp = 0
        self._highest_extended = 0
        self._newest_end = 0
        self._target = self._initial_delay
        self._packet_samples = FRAME_SAMPLES
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._last_good: bytes | None = None
        self._missing_run = 0
        self._stalled = 0  # frames waited for in the current underrun
        self._comfort_noise_from: int | None = None
        self._far_behind_run = 0
        self._shrink_frames = 0
        self._shrink_minimum: int | None = None
        self._present[:] = bytes(_RING_SAMPLES)
        self._recent_sequences.clear()
        self._recent_order.clear()

    @property
    def stats(self) -> JitterStats:
        buffered = 0 if self._read is None else max(0, self._newest_end - self._read)
        return JitterStats(
            packets_accepted=self._packets,
            late_dropped=self._late,
            duplicate_dropped=self._duplicate,
            oversize_dropped=self._oversize,
            frames_received=self._frames_received,
            frames_concealed=self._frames_concealed,
            frames_silence=self._frames_silence,
            resyncs=self._resyncs,
            target_delay_ms=self._target / SAMPLES_PER_MS,
            buffered_ms=buffered / SAMPLES_PER_MS,
        )

    def reset(self) -> None:
        """Forget the stream (codec change, hold): the next packet starts a new one."""
        self._ssrc = None
        self._forget_stream()

    # -- input

    def push(
        self, *, ssrc: int, sequence_number: int, timestamp: int, payload: bytes, marker: bool, now: float
    ) -> bool:
        """One audio packet's encoded samples; False when it was dropped (late, duplicate, oversize, old SSRC)."""
        samples = len(payload)
        if samples == 0 or samples > MAX_PACKET_SAMPLES:
            self._oversize += 1
            return False
        start = self._accept(ssrc, sequence_number, timestamp, marker, samples, now)
        if start is None:
            return False
        self._write(start, payload)
        if self._comfort_noise_from is not None and start >= self._comfort_noise_from:
            self._comfort_noise_from = None
        return True

    def push_comfort_noise(self, *, ssrc: int, sequence_number: int, timestamp: int, now: float) -> bool:
        """A comfort-noise packet: from its timestamp on, what is missing is silence, not loss."""
        start = self._accept(ssrc, sequence_number, timestamp, marker=False, samples=0, now=now)
        if start is None:
            return False
        self._comfort_noise_from = start
        return True

    def _accept(self, ssrc: int, sequence: int, timestamp: int, marker: bool, samples: int, now: float) -> int | None:
        """The packet's extended timestamp, after stream bookkeeping; None when it is dropped."""
        if ssrc != self._ssrc:
            if ssrc == self._previous_ssrc and not self._previous_ssrc_seen:
                # A straggler from the stream we just left, or that stream coming back (a PBX ending music on
                # hold): only a second packet in a row from it switches back.
                self._previous_ssrc_seen = True
                self._late += 1
                return None
            if self._ssrc is not None:
                self._resyncs += 1
            self._previous_ssrc = self._ssrc
            self._ssrc = ssrc
            self._forget_stream()
            self._highest_timestamp = timestamp
        self._previous_ssrc_seen = False
        if sequence in self._recent_sequences:
            self._duplicate += 1
            return None
        # Unwrap the 32-bit timestamp around the highest one seen: reordered packets land just below it.
        delta = (timestamp - self._highest_timestamp + 2**31) % 2**32 - 2**31
        extended = self._highest_extended + delta
        if self._read is None:
            self._read = extended - self._target
        ahead = extended - self._read
        resynced = False
        if ahead + max(samples, 1) <= 0:
            if ahead < -_FAR_BEHIND_SAMPLES:
                self._far_behind_run += 1
                if self._far_behind_run < 2:
                    self._late += 1
                    return None
            else:
                self._late += 1
                self._far_behind_run = 0
                return None
            self._resync(extended)  # a second packet far behind: the sender went back in time
            resynced = True
        elif ahead > self._max_delay:
            self._resync(extended)  # far ahead: silence ended, or the sender jumped; we cannot buffer that much
            resynced = True
        elif marker and self._newest_end <= self._read and ahead != self._target:
            self._anchor(extended)  # a talkspurt starts with nothing buffered: play it at the target delay
        elif self._release_on_arrival and ahead > MAX_CONCEALED_FRAMES * FRAME_SAMPLES:
            self._anchor(extended)  # a pause, heard downstream as it passed: not filled after the fact
        elif self._stalled and ahead - self._target >= FRAME_SAMPLES:
            # We waited for packets that this one shows were lost, not late: give the wait back.
            self._skip(min(self._stalled, (ahead - self._target) // FRAME_SAMPLES))
        self._stalled = 0
        self._far_behind_run = 0
        if delta > 0 or resynced:
            self._highest_timestamp = timestamp
            self._highest_extended = extended
        self._track_jitter(extended, now)
        if samples:
            self._packet_samples = samples
        self._remember(sequence)
        self._packets += 1
        return extended

    def _resync(self, extended: int) -> None:
        self._resyncs += 1
        self._last_transit = None
        self._recent_sequences.clear()  # a new timeline: its sequence numbers may repeat old ones
        self._recent_order.clear()
        self._anchor(extended)

    def _anchor(self, extended: int) -> None:
        self._present[:] = bytes(_RING_SAMPLES)
        self._read = extended - self._target
        self._newest_end = extended
        self._comfort_noise_from = None
        self._stalled = 0
        self._shrink_frames = 0
        self._shrink_minimum = None

    def _remember(self, sequence: int) -> None:
        self._recent_sequences.add(sequence)
        self._recent_order.append(sequence)
        if len(self._recent_order) > _RECENT_SEQUENCES:
            self._recent_sequences.discard(self._recent_order.popleft())

    def _track_jitter(self, extended: int, now: float) -> None:
        # RFC 3550 interarrival jitter, in samples; it sets how much delay the target keeps.
        transit = now * 8000 - extended
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16
        self._last_transit = transit
        if self._release_on_arrival:
            return  # no target delay to set
        wanted = FRAME_SAMPLES + self._packet_samples + 3 * int(self._jitter)
        self._target = max(self._min_delay, min(self._max_delay, wanted))

    def _write(self, start: int, payload: bytes) -> None:
        assert self._read is not None
        length = len(payload)
        index = start % _RING_SAMPLES
        if start >= self._read and index + length <= _RING_SAMPLES:  # whole and not wrapping: nearly every packet
            self._data[index : index + length] = payload
            self._present[index : index + length] = _PRESENT[:length]
            self._newest_end = max(self._newest_end, start + length)
            return
        skip = max(0, self._read - start)  # the part of a partly late packet that is already past
        position = start + skip
        chunk = memoryview(payload)[skip:]
        while chunk:
            index = position % _RING_SAMPLES
            length = min(len(chunk), _RING_SAMPLES - index)
            self._data[index : index + length] = chunk[:length]
            self._present[index : index + length] = _PRESENT[:length]
            chunk = chunk[length:]
            position += length
        self._newest_end = max(self._newest_end, start + len(payload))

    # -- output

    def pop(self, now: float) -> tuple[bytes, FrameKind]:
        """The next 160 samples to play, and whether they were received, concealed, or are silence."""
        if self._read is None:
            self._frames_silence += 1
            return self._silence, FrameKind.SILENCE
        start = self._read
        index = start % _RING_SAMPLES
        if index + FRAME_SAMPLES <= _RING_SAMPLES:
            frame = bytes(self._data[index : index + FRAME_SAMPLES])
            present = bytes(self._present[index : index + FRAME_SAMPLES])
        else:
            tail = _RING_SAMPLES - index
            frame = bytes(self._data[index:]) + bytes(self._data[: FRAME_SAMPLES - tail])
            present = bytes(self._present[index:]) + bytes(self._present[: FRAME_SAMPLES - tail])
        received = present.count(1)
        if received == FRAME_SAMPLES:
            self._consume(start)
            self._last_good = frame
            self._missing_run = 0
            self._frames_received += 1
            self._maybe_shrink()
            return frame, FrameKind.RECEIVED
        if self._comfort_noise_from is not None and start + FRAME_SAMPLES > self._comfort_noise_from:
            # The far end is in a silence period: play silence in real time, and forget the talk before it.
            self._consume(start)
            self._last_good = None
            self._missing_run = 0
            self._frames_silence += 1
            return self._silence, FrameKind.SILENCE
        if received == 0 and self._newest_end <= start + FRAME_SAMPLES:
            self._stalled += 1  # underrun: nothing later has arrived either; wait here, which adds a frame of delay
        else:
            self._consume(start)  # lost (something later is here already), or partly received
        self._missing_run += 1
        if self._last_good is None or self._missing_run > MAX_CONCEALED_FRAMES:
            if received == 0:
                self._frames_silence += 1
                return self._silence, FrameKind.SILENCE
            filler = self._silence
        else:
            filler = self._last_good
        self._frames_concealed += 1
        if received == 0:
            return filler, FrameKind.CONCEALED
        # Partly received (a lost 30 ms packet covers part of this frame): keep the samples we have, copied run by
        # run (a prefix or a suffix, nearly always), not sample by sample in Python.
        mixed = bytearray(filler)
        position = 0
        while (begin := present.find(1, position)) >= 0:
            end = present.find(0, begin)
            end = FRAME_SAMPLES if end < 0 else end
            mixed[begin:end] = frame[begin:end]
            position = end
        return bytes(mixed), FrameKind.CONCEALED

    def pop_arrived(self, now: float) -> list[tuple[bytes, FrameKind]]:
        """Release on arrival: every frame the packets so far complete (or show lost), in order; none may wait."""
        frames: list[tuple[bytes, FrameKind]] = []
        while self._read is not None and self._newest_end - self._read >= FRAME_SAMPLES:
            before = self._read
            frames.append(self.pop(now))
            if self._read == before:  # cannot happen with data past the frame, but a loop must not spin on it
                break
        return frames

    def _skip(self, frames: int) -> None:
        assert self._read is not None
        for _ in range(frames):
            self._consume(self._read)

    def _consume(self, start: int) -> None:
        index = start % _RING_SAMPLES
        end = index + FRAME_SAMPLES
        if end <= _RING_SAMPLES:
            self._present[index:end] = bytes(FRAME_SAMPLES)
        else:
            self._present[index:] = bytes(_RING_SAMPLES - index)
            self._present[: end - _RING_SAMPLES] = bytes(end - _RING_SAMPLES)
        self._read = start + FRAME_SAMPLES

    def _maybe_shrink(self) -> None:
        assert self._read is not None
        if self._release_on_arrival:
            return  # what is left after a release is part of a frame still arriving, not delay
        buffered = self._newest_end - self._read
        if self._shrink_minimum is None or buffered < self._shrink_minimum:
            self._shrink_minimum = buffered
        self._shrink_frames += 1
        if self._shrink_frames < _SHRINK_WINDOW_FRAMES:
            return
        if self._shrink_minimum > self._target:
            # Even at its emptiest in this window the buffer held more than the target after a playout: drop a frame.
            self._skip(1)
        self._shrink_frames = 0
        self._shrink_minimum = None
