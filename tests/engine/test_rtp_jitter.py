"""The jitter buffer, driven on a fake clock: a packet every ptime, a playout every 20 ms, 10 ms out of phase."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from dialbridge.rtp.jitter import _RING_SAMPLES, FrameKind, JitterBuffer

SILENCE = 0xFF
RECEIVED, CONCEALED, SILENT = FrameKind.RECEIVED, FrameKind.CONCEALED, FrameKind.SILENCE


def samples(start: int, count: int) -> bytes:
    """Audio whose every byte says where it is in the stream (mod 251, never the silence byte)."""
    return bytes((start + i) % 251 for i in range(count))


@dataclass
class Stream:
    ssrc: int = 0x1234
    first_sequence: int = 1000
    first_timestamp: int = 50_000
    packet_samples: int = 160

    def push(self, buffer: JitterBuffer, index: int, now: float, *, marker: bool = False) -> bool:
        return buffer.push(
            ssrc=self.ssrc,
            sequence_number=(self.first_sequence + index) % 65536,
            timestamp=(self.first_timestamp + index * self.packet_samples) % 2**32,
            payload=samples(index * self.packet_samples, self.packet_samples),
            marker=marker,
            now=now,
        )


def run(
    buffer: JitterBuffer,
    stream: Stream,
    packets: int,
    *,
    skip: frozenset[int] = frozenset(),
    arrival: dict[int, float] | None = None,
    ticks: int | None = None,
) -> list[tuple[bytes, FrameKind]]:
    """Packets at their send time (or `arrival`), playouts every 20 ms at +10 ms; events in time order."""
    period = stream.packet_samples / 8000
    events: list[tuple[float, int, int]] = []
    for index in range(packets):
        if index not in skip:
            events.append(((arrival or {}).get(index, index * period), 0, index))
    ticks = ticks if ticks is not None else int(packets * period / 0.020) + 4
    events += [(0.010 + 0.020 * tick, 1, tick) for tick in range(ticks)]
    out = []
    for now, kind, index in sorted(events):
        if kind == 0:
            stream.push(buffer, index, now)
        else:
            out.append(buffer.pop(now))
    return out


def kinds(frames: list[tuple[bytes, FrameKind]]) -> list[FrameKind]:
    return [kind for _, kind in frames]


def test_in_order_stream_plays_every_sample_after_the_initial_delay() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    frames = run(buffer, Stream(), 50)
    assert kinds(frames[:2]) == [SILENT, SILENT]  # 40 ms initial delay
    assert all(len(frame) == 160 for frame, _ in frames)
    played = b"".join(frame for frame, kind in frames[2:52])
    assert kinds(frames[2:52]) == [RECEIVED] * 50
    assert played == samples(0, 50 * 160)


def test_reordered_packets_play_in_timestamp_order() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    frames = run(buffer, Stream(), 30, arrival={5: 0.125, 6: 0.119})  # 6 before 5, both in time
    assert b"".join(frame for frame, _ in frames[2:32]) == samples(0, 30 * 160)
    assert buffer.stats.late_dropped == 0


def test_duplicates_are_dropped_and_counted() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream()
    assert stream.push(buffer, 0, 0.0)
    assert not stream.push(buffer, 0, 0.001)
    assert buffer.stats.duplicate_dropped == 1 and buffer.stats.packets_accepted == 1


def test_loss_repeats_the_last_frame_twice_then_silence() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    frames = run(buffer, Stream(), 40, skip=frozenset({10, 20, 21, 22}), ticks=42)
    # Output frame k + 2 is packet k.
    assert frames[12] == (samples(9 * 160, 160), CONCEALED)
    assert frames[13] == (samples(11 * 160, 160), RECEIVED)
    assert kinds(frames[22:26]) == [CONCEALED, CONCEALED, SILENT, RECEIVED]
    assert frames[22][0] == frames[23][0] == samples(19 * 160, 160)
    assert frames[24][0] == bytes([SILENCE]) * 160
    assert buffer.stats.frames_concealed == 3


def test_late_packet_is_dropped_and_counted() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    frames = run(buffer, Stream(), 40, arrival={30: 0.660})  # due at 0.650 (frame 32), arrives after it
    assert frames[32] == (samples(29 * 160, 160), CONCEALED)
    assert buffer.stats.late_dropped == 1
    assert kinds(frames[33:42]) == [RECEIVED] * 9


def test_ptime_30_packets_play_as_contiguous_20_ms_frames() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream(packet_samples=240)
    frames = run(buffer, stream, 40)  # 1.2 s of audio in 240-sample packets
    start = kinds(frames).index(RECEIVED)
    played = frames[start : start + 55]
    assert kinds(played) == [RECEIVED] * 55
    assert b"".join(frame for frame, _ in played) == samples(0, 55 * 160)


def test_ptime_30_loss_conceals_only_the_missing_samples() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    frames = run(buffer, Stream(packet_samples=240), 40, skip=frozenset({10}))  # samples 2400-2639 missing
    played = b"".join(frame for frame, _ in frames[kinds(frames).index(RECEIVED) :])
    # Frames 15 (2400-2559) and 16 (2560-2719): 15 is all missing, 16 partly; the rest is exact.
    assert played[:2400] == samples(0, 2400)
    assert played[2640:6000] == samples(2640, 6000 - 2640)
    start = kinds(frames).index(RECEIVED)
    assert kinds(frames[start : start + 58]).count(CONCEALED) == 2


def test_new_ssrc_resets_and_plays_the_new_stream() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    first = Stream()
    for index in range(10):
        first.push(buffer, index, index * 0.02)
        buffer.pop(index * 0.02 + 0.01)
    second = Stream(ssrc=0x9999, first_sequence=7, first_timestamp=3_000_000_000)
    out = []
    for index in range(10):
        now = 0.2 + index * 0.02
        second.push(buffer, index, now)
        out.append(buffer.pop(now + 0.01))
    assert kinds(out[:2]) == [CONCEALED, CONCEALED] or kinds(out[:2])[0] != RECEIVED
    assert out[2] == (samples(0, 160), RECEIVED)  # the new stream at the initial delay
    assert buffer.stats.resyncs == 1
    # A straggler from the old stream does not flip it back; that stream really coming back does.
    assert not first.push(buffer, 10, 0.41)
    assert second.push(buffer, 10, 0.42)
    assert not first.push(buffer, 11, 0.43)
    assert first.push(buffer, 12, 0.44)
    assert buffer.stats.resyncs == 2


def test_forward_timestamp_jump_resyncs() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream()
    for index in range(10):
        stream.push(buffer, index, index * 0.02)
        buffer.pop(index * 0.02 + 0.01)
    jumped = Stream(first_timestamp=stream.first_timestamp + 80_000, first_sequence=1010)
    out = []
    for index in range(6):
        now = 0.2 + index * 0.02
        jumped.push(buffer, index, now)
        out.append(buffer.pop(now + 0.01))
    assert buffer.stats.resyncs == 1
    assert (samples(0, 160), RECEIVED) in out[:3]
    assert kinds(out[3:]) == [RECEIVED] * 3


def test_one_stray_old_packet_does_not_resync_but_a_stream_that_went_back_does() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream(first_timestamp=500_000)
    for index in range(10):
        stream.push(buffer, index, index * 0.02)
        buffer.pop(index * 0.02 + 0.01)
    back = Stream(first_timestamp=100_000, first_sequence=2000)
    assert not back.push(buffer, 0, 0.201)  # 50 s in the past: late
    assert stream.push(buffer, 10, 0.202)  # the real stream goes on
    assert buffer.stats.resyncs == 0
    assert not back.push(buffer, 1, 0.203)
    assert back.push(buffer, 2, 0.204)  # a second one in a row: the sender really restarted
    assert buffer.stats.resyncs == 1


def test_sequence_and_timestamp_wrap() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream(first_sequence=65530, first_timestamp=2**32 - 800)
    frames = run(buffer, stream, 30)
    assert kinds(frames[2:32]) == [RECEIVED] * 30
    assert b"".join(frame for frame, _ in frames[2:32]) == samples(0, 30 * 160)


def test_comfort_noise_is_silence_not_loss() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream()
    out = []
    for index in range(10):
        stream.push(buffer, index, index * 0.02)
        out.append(buffer.pop(index * 0.02 + 0.01))
    buffer.push_comfort_noise(ssrc=stream.ssrc, sequence_number=1010, timestamp=50_000 + 1600, now=0.2)
    for tick in range(10, 40):
        out.append(buffer.pop(tick * 0.02 + 0.01))
    # Talk resumes 30 ticks later with the marker bit, 600 ms of timestamps on.
    resumed = Stream(first_sequence=1011, first_timestamp=50_000 + 1600 + 4800)
    for index in range(6):
        now = 0.8 + index * 0.02
        resumed.push(buffer, index, now, marker=index == 0)
        out.append(buffer.pop(now + 0.01))
    assert kinds(out[2:12]) == [RECEIVED] * 10
    assert set(kinds(out[12:40])) == {SILENT}
    assert buffer.stats.frames_concealed == 0
    assert out[42] == (samples(0, 160), RECEIVED)  # played at the target delay after the talkspurt's start


def test_underrun_waits_then_a_marked_talkspurt_re_anchors() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream()
    out = []
    for index in range(10):
        stream.push(buffer, index, index * 0.02)
        out.append(buffer.pop(index * 0.02 + 0.01))
    for tick in range(10, 20):  # the far end goes quiet without CN (no DTX signalling)
        out.append(buffer.pop(tick * 0.02 + 0.01))
    assert kinds(out[10:16]) == [RECEIVED, RECEIVED, CONCEALED, CONCEALED, SILENT, SILENT]
    resumed = Stream(first_sequence=1010, first_timestamp=50_000 + 1600 + 800)  # 100 ms of timestamps later
    for index in range(5):
        now = 0.4 + index * 0.02
        resumed.push(buffer, index, now, marker=index == 0)
        out.append(buffer.pop(now + 0.01))
    assert out[22] == (samples(0, 160), RECEIVED)  # at the target delay again, not 200 ms late
    assert buffer.stats.buffered_ms <= 60


def test_delay_spike_grows_the_delay_then_it_shrinks_back() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    stream = Stream()
    # Packets 50-54 are held up and arrive together 100 ms late, as a congested link does.
    arrival = {index: 1.100 for index in range(50, 55)}
    frames = run(buffer, stream, 400, arrival=arrival, ticks=400)  # no ticks past the end: nothing drains it
    assert buffer.stats.late_dropped == 0  # the buffer waited instead of dropping them
    played = b"".join(frame for frame, kind in frames if kind is RECEIVED)
    assert samples(50 * 160, 5 * 160) in played
    # The extra ~100 ms went again, a frame per window, once the link was steady: back within a frame of the target.
    assert buffer.stats.buffered_ms <= buffer.stats.target_delay_ms + 20
    assert buffer.stats.target_delay_ms <= 60


def test_packet_too_big_is_dropped() -> None:
    buffer = JitterBuffer(silence_byte=SILENCE)
    assert not buffer.push(ssrc=1, sequence_number=1, timestamp=0, payload=bytes(2000), marker=False, now=0.0)
    assert not buffer.push(ssrc=1, sequence_number=2, timestamp=0, payload=b"", marker=False, now=0.0)
    assert buffer.stats.oversize_dropped == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("push"),
                st.integers(0, 2),
                st.integers(0, 65535),
                st.integers(0, 2**32 - 1),
                st.integers(0, 1000),
                st.booleans(),
            ),
            st.tuples(st.just("cn"), st.integers(0, 2), st.integers(0, 65535), st.integers(0, 2**32 - 1)),
            st.just(("pop",)),
        ),
        max_size=150,
    )
)
def test_fuzz_anything_in_exactly_a_frame_out_bounded(operations: list[tuple[object, ...]]) -> None:
    buffer = JitterBuffer(silence_byte=0xD5)
    now = 0.0
    for operation in operations:
        now += 0.005
        if operation[0] == "push":
            _, ssrc, seq, ts, size, marker = operation
            assert isinstance(ssrc, int) and isinstance(seq, int) and isinstance(ts, int) and isinstance(size, int)
            buffer.push(
                ssrc=ssrc, sequence_number=seq, timestamp=ts, payload=bytes([1]) * size, marker=bool(marker), now=now
            )
        elif operation[0] == "cn":
            _, ssrc, seq, ts = operation
            assert isinstance(ssrc, int) and isinstance(seq, int) and isinstance(ts, int)
            buffer.push_comfort_noise(ssrc=ssrc, sequence_number=seq, timestamp=ts, now=now)
        else:
            frame, kind = buffer.pop(now)
            assert len(frame) == 160 and kind in FrameKind
    assert len(buffer._data) == len(buffer._present) == _RING_SAMPLES
    assert len(buffer._recent_sequences) <= 128
    assert buffer.stats.buffered_ms <= 200 + 120 + 20


# -- release on arrival (the gateway's SIP leg: the browser's jitter buffer is the one on the path) ------------------


def arrival_run(
    stream: Stream, packets: int, *, skip: frozenset[int] = frozenset(), order: list[int] | None = None
) -> list[list[tuple[bytes, FrameKind]]]:
    """Each packet pushed in `order` (default: sent order), then what that arrival released."""
    buffer = JitterBuffer(silence_byte=SILENCE, release_on_arrival=True)
    released = []
    for step, index in enumerate(order if order is not None else range(packets)):
        if index in skip:
            continue
        stream.push(buffer, index, step * stream.packet_samples / 8000)
        released.append(buffer.pop_arrived(step * stream.packet_samples / 8000))
    return released


def test_on_arrival_each_packet_releases_its_frame_at_once_with_no_delay_ever_added() -> None:
    released = arrival_run(Stream(), 600)  # 12 s: longer than any window that would give delay back
    assert [len(frames) for frames in released] == [1] * 600
    assert b"".join(frame for frames in released for frame, _ in frames) == samples(0, 600 * 160)


def test_on_arrival_ptime_30_releases_each_whole_frame_the_packet_completes_and_never_skips() -> None:
    released = arrival_run(Stream(packet_samples=240), 400)  # 12 s of 30 ms packets
    assert [len(frames) for frames in released[:6]] == [1, 2, 1, 2, 1, 2]
    played = b"".join(frame for frames in released for frame, _ in frames)
    assert played == samples(0, 400 * 240)  # the 80 samples left over after a packet wait for the next one


def test_on_arrival_a_loss_is_concealed_when_the_next_packet_proves_it_and_a_pause_re_anchors() -> None:
    lost = {10, 20, 21, 30, 31, 32}
    released = arrival_run(Stream(), 60, skip=frozenset(lost))
    by_packet = dict(zip(sorted(set(range(60)) - lost), released, strict=True))
    assert by_packet[11] == [(samples(9 * 160, 160), CONCEALED), (samples(11 * 160, 160), RECEIVED)]
    assert kinds(by_packet[22]) == [CONCEALED, CONCEALED, RECEIVED]
    # Three frames missing: a pause, heard downstream as it passed; nothing is released to fill it.
    assert by_packet[33] == [(samples(33 * 160, 160), RECEIVED)]


def test_on_arrival_a_reordered_packet_costs_its_frame_and_a_comfort_noise_pause_releases_nothing() -> None:
    released = arrival_run(Stream(), 12, order=[0, 1, 2, 4, 3, 5])
    assert kinds(released[3]) == [CONCEALED, RECEIVED]  # 4 proves 3 missing: there is no waiting for it
    assert released[4] == []  # 3, late
    buffer = JitterBuffer(silence_byte=SILENCE, release_on_arrival=True)
    stream = Stream()
    stream.push(buffer, 0, 0.0)
    assert len(buffer.pop_arrived(0.0)) == 1
    assert buffer.push_comfort_noise(ssrc=stream.ssrc, sequence_number=1001, timestamp=50_160, now=0.02)
    assert buffer.pop_arrived(0.02) == []
    assert buffer.stats.target_delay_ms == 0


def test_on_arrival_part_of_a_frame_left_over_after_every_packet_is_never_skipped_as_delay() -> None:
    # A first packet of 80 samples, then 160-sample ones: half a frame waits after each release, for 12 s.
    buffer = JitterBuffer(silence_byte=SILENCE, release_on_arrival=True)
    played = bytearray()
    for index in range(601):
        start, size = (0, 80) if index == 0 else (80 + (index - 1) * 160, 160)
        buffer.push(
            ssrc=7, sequence_number=index, timestamp=start, payload=samples(start, size), marker=False, now=index / 50
        )
        played += b"".join(frame for frame, _ in buffer.pop_arrived(index / 50))
    assert played == samples(0, 600 * 160)
