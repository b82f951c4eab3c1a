"""bench/gateway.py's instrument: bursts found in RTP timelines at the time they crossed the wire, to the millisecond.

Synthetic streams with known delays stand in for the gateway: if the timing convention, the burst detection or the
matching drifted, every latency figure of the benchmark would drift with it, silently."""

from __future__ import annotations

import struct

import numpy as np

from bench import gateway  # needs the bench extra, which `make test` installs
from dialbridge.media import g711

RATE = gateway.PHONE_RATE
FRAME = 160
START = 1_700_000_000.0  # a wall-clock time, as the kernel's timestamps are


def talker_signal(seconds: float, first_burst_s: float, hz: float) -> tuple[np.ndarray, list[int]]:
    """Low noise with a burst every period from `first_burst_s` (not on a packet boundary); the bursts' samples."""
    rng = np.random.default_rng(7)
    signal = rng.normal(0, 30, int(seconds * RATE))
    starts = list(range(int(first_burst_s * RATE), signal.size - RATE, int(gateway.BURST_PERIOD_S * RATE)))
    template = gateway.burst(hz, RATE)
    for at in starts:
        signal[at : at + template.size] += template
    return np.clip(signal, -32768, 32767).astype(np.int16), starts


def packets(signal: np.ndarray, first_sent: float, delay_s: float, src: int, dst: int) -> list[gateway.Datagram]:
    """PCMA packets of 20 ms, each leaving once full (from `first_sent`), arriving `delay_s` later, in a shuffled
    order of capture (the timeline orders them by RTP timestamp, not by arrival)."""
    found = []
    for k in range(signal.size // FRAME):
        header = struct.pack("!BBHII", 0x80, 8, k & 0xFFFF, (123_456 + k * FRAME) & 0xFFFFFFFF, 0xABCD)
        payload = header + g711.encode("PCMA", signal[k * FRAME : (k + 1) * FRAME])
        found.append(gateway.Datagram(first_sent + k * 0.020 + delay_s, src, dst, payload))
    rng = np.random.default_rng(3)
    order = rng.permutation(len(found))
    return [found[i] for i in order]


def test_a_known_delay_is_measured_to_the_millisecond_whatever_the_burst_s_place_in_its_packet() -> None:
    signal, starts = talker_signal(8.0, 0.513, gateway.TALKER_HZ)
    sent = gateway.g711_timeline(packets(signal, START, 0.0, 46000, 30000))
    heard = gateway.g711_timeline(packets(signal, START, 0.0573, 30004, 46010))

    sent_at = gateway.burst_times(sent, gateway.TALKER_HZ, 0.8)
    delays = gateway.delays_ms(sent_at, gateway.burst_times(heard, gateway.TALKER_HZ, 0.4))

    assert len(sent_at) == len(starts)
    # A sample's time is its packet's less the samples after it: a burst is timed as it was sent, wherever it falls.
    expected = [START + (s // FRAME) * 0.020 - (FRAME - 1 - s % FRAME) / RATE for s in starts]
    assert np.max(np.abs(sent_at - np.array(expected))) < 2 / RATE  # seconds since 1970: no relative tolerance
    assert len(delays) == len(starts)
    assert max(abs(d - 57.3) for d in delays) < 1.0, delays


def test_a_hop_is_timed_between_its_two_ends_and_other_bursts_are_not_taken_for_ours() -> None:
    talker, _ = talker_signal(8.0, 0.5, gateway.TALKER_HZ)
    browser, _ = talker_signal(8.0, 0.7, gateway.BROWSER_HZ)  # the other direction's bursts, mixed in at the phone
    sent = gateway.g711_timeline(packets(talker, START, 0.0, 46000, 30000))
    at_gateway = gateway.g711_timeline(packets(talker, START, 0.030, 30000, 40000))
    mixed = np.clip(talker.astype(np.int32) + browser, -32768, 32767).astype(np.int16)
    at_listener = gateway.g711_timeline(packets(mixed, START, 0.045, 30004, 46010))

    talker_bursts = gateway.burst_times(sent, gateway.TALKER_HZ, 0.8)
    hop = gateway.hop_ms(
        talker_bursts,
        gateway.burst_times(at_gateway, gateway.TALKER_HZ, 0.4),
        gateway.burst_times(at_listener, gateway.TALKER_HZ, 0.4),
    )

    assert len(hop) == len(talker_bursts) > 10
    assert max(abs(d - 15.0) for d in hop) < 1.0, hop


def test_silence_and_a_lost_burst_give_no_figure_rather_than_a_wrong_one() -> None:
    signal, starts = talker_signal(6.0, 0.5, gateway.TALKER_HZ)
    received = signal.copy()
    lost = starts[3]
    received[lost - 80 : lost + 160] = 0  # one burst's packets lost, played as silence
    sent = gateway.burst_times(gateway.g711_timeline(packets(signal, START, 0.0, 1, 2)), gateway.TALKER_HZ, 0.8)
    heard = gateway.burst_times(gateway.g711_timeline(packets(received, START, 0.1, 3, 4)), gateway.TALKER_HZ, 0.4)

    delays = gateway.delays_ms(sent, heard)

    assert len(delays) == len(starts) - 1
    assert max(abs(d - 100.0) for d in delays) < 1.0, delays
