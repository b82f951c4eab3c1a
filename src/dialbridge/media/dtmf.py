"""In-band DTMF: detection of key presses in decoded 8 kHz audio, and generation of the tones.

Detection works on the engine's 20 ms frames (160 samples). Each frame is projected on a DFT basis
at the 8 DTMF frequencies (the Goertzel value, computed for many rows at once as one matrix
product). A frame is a *candidate* for a digit when

* the strongest low-group and high-group bins together hold at least 30 % of the frame's energy and
  each tone is above -36 dBFS (a tone filling half the frame gives 50 %, so a 40 ms press yields two
  consecutive candidate frames whatever its alignment to the frame clock),
* each of the two dominates the other bins of its group by 6 dB (three-tone signals, chords),
* the twist (high minus low level) lies within ±8 dB.

A candidate frame is *strong* when, in addition (computed only for the few candidate rows),

* the pair holds at least 60 % of the energy (a 40 ms press fills one frame completely; espeak-ng
  speech in 8 languages never exceeded 46 % in a tone-like frame),
* the second harmonic of the high tone is 18 dB down and that of the low tone 8 dB down (a keypad
  generates none; instruments and voices do; the low check is lenient because 2 x 697 .. 2 x 852 lie
  close to the high tones),
* each tone is nearer its nominal frequency than probes 3.4 % either side: deviations up to about
  ±1.5 % are accepted, ±2.5 % rejected (Q.24 asks ±1.5 % accepted, ±3.5 % rejected).

A digit is reported once, when it has been the candidate for 2 consecutive frames (40 ms) at least
one of which is strong; it is reported again only after at least one frame without any candidate
(a different digit counts at once).

``InbandDtmfBank`` runs this for every caller of the engine in one step per tick;
``InbandDtmfDetector`` is the same for one stream.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from dialbridge.media.tones import tone

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160

LOW_FREQS: Final = (697.0, 770.0, 852.0, 941.0)
HIGH_FREQS: Final = (1209.0, 1336.0, 1477.0, 1633.0)
#: Digit of code ``4 * low_index + high_index``; ``detect_rows`` returns these codes (-1: none).
DTMF_DIGITS: Final = "123A456B789C*0#D"
NO_DIGIT: Final = -1

MIN_PAIR_ENERGY_FRACTION: Final = 0.30
MIN_STRONG_ENERGY_FRACTION: Final = 0.60
MIN_GROUP_DOMINANCE_DB: Final = 6.0
MAX_TWIST_DB: Final = 8.0
MIN_TONE_DBFS: Final = -36.0
MIN_HIGH_HARMONIC_REJECTION_DB: Final = 18.0
MIN_LOW_HARMONIC_REJECTION_DB: Final = 8.0
MIN_FRAMES: Final = 2
FREQUENCY_PROBE: Final = 0.034


def _basis(freqs: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """``[160, 2F]``: cosines then sines, so ``x @ basis`` is the DFT of each row at each frequency."""
    phase = 2 * np.pi * np.outer(np.arange(FRAME_SAMPLES), freqs) / SAMPLE_RATE
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)


def _power(x: npt.NDArray[np.float32], basis: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    projection = x @ basis
    half = basis.shape[1] // 2
    power: npt.NDArray[np.float32] = projection[:, :half] ** 2 + projection[:, half:] ** 2
    return power


_TONES: Final = np.array([*LOW_FREQS, *HIGH_FREQS])
# The 8 tones, for every row; the rest only for the few rows that pass the first screen.
_TONE_BASIS: Final = _basis(_TONES)
_DETAIL_BASIS: Final = _basis(
    np.concatenate([2 * _TONES, _TONES * (1 - FREQUENCY_PROBE), _TONES * (1 + FREQUENCY_PROBE)])
)
_MIN_TONE_POWER: Final = (32767.0 * 10 ** (MIN_TONE_DBFS / 20) * FRAME_SAMPLES / 2) ** 2


def _db(value: float) -> float:
    return float(10 ** (value / 10))


def detect_rows(frames: npt.NDArray[np.int16]) -> npt.NDArray[np.int8]:
    """Per-row DTMF candidate of a ``[M, 160]`` frame matrix: a code into ``DTMF_DIGITS`` or -1.

    Stateless: one frame says "looks like digit X"; ``InbandDtmfBank`` turns candidates into presses.
    """
    return classify_rows(frames)[0]


def classify_rows(frames: npt.NDArray[np.int16]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """``detect_rows`` plus, per row, whether the frame is *strong* (may complete a press, see above)."""
    if frames.ndim != 2 or frames.shape[1] != FRAME_SAMPLES:
        raise ValueError(f"expected frames [M, {FRAME_SAMPLES}], got {frames.shape}")
    codes = np.full(len(frames), NO_DIGIT, dtype=np.int8)
    strong = np.zeros(len(frames), dtype=np.bool_)
    x = frames.astype(np.float32)
    power = _power(x, _TONE_BASIS)
    energy = np.einsum("ij,ij->i", x, x)
    # |X|^2 of a sine of peak A over N samples is (A N / 2)^2 and its energy A^2 N / 2: the fraction of
    # the frame's energy in the two bins is 2 (P_lo + P_hi) / (N E).
    p_lo = power[:, :4].max(axis=1)
    p_hi = power[:, 4:].max(axis=1)
    pair_energy = (p_lo + p_hi) * (2.0 / FRAME_SAMPLES)
    screened = np.flatnonzero(
        (pair_energy >= MIN_PAIR_ENERGY_FRACTION * energy) & (np.minimum(p_lo, p_hi) >= _MIN_TONE_POWER)
    )
    if len(screened) == 0:
        return codes, strong

    power, p_lo, p_hi = power[screened], p_lo[screened], p_hi[screened]
    pair_fraction = pair_energy[screened] / energy[screened]
    detail = _power(x[screened], _DETAIL_BASIS)
    rows = np.arange(len(screened))
    lo = np.argmax(power[:, :4], axis=1)
    hi = np.argmax(power[:, 4:], axis=1) + 4
    low_others = np.where(np.arange(4) == lo[:, None], 0.0, power[:, :4]).max(axis=1)
    high_others = np.where(np.arange(4, 8) == hi[:, None], 0.0, power[:, 4:]).max(axis=1)
    harmonic_lo, harmonic_hi = detail[rows, lo], detail[rows, hi]
    probes_lo = np.maximum(detail[rows, 8 + lo], detail[rows, 16 + lo])
    probes_hi = np.maximum(detail[rows, 8 + hi], detail[rows, 16 + hi])
    ok = (
        (p_lo >= _db(MIN_GROUP_DOMINANCE_DB) * low_others)
        & (p_hi >= _db(MIN_GROUP_DOMINANCE_DB) * high_others)
        & (p_hi <= _db(MAX_TWIST_DB) * p_lo)
        & (p_lo <= _db(MAX_TWIST_DB) * p_hi)
    )
    is_strong = (
        ok
        & (pair_fraction >= MIN_STRONG_ENERGY_FRACTION)
        & (harmonic_hi * _db(MIN_HIGH_HARMONIC_REJECTION_DB) <= p_hi)
        & (harmonic_lo * _db(MIN_LOW_HARMONIC_REJECTION_DB) <= p_lo)
        # Each tone nearer its nominal frequency than the probes either side: within about ±1.5 %.
        & (probes_lo < p_lo)
        & (probes_hi < p_hi)
    )
    codes[screened] = np.where(ok, 4 * lo + (hi - 4), NO_DIGIT)
    strong[screened] = is_strong
    return codes, strong


class InbandDtmfBank:
    """Key-press detection for many streams, one vectorised step per tick.

    Each stream gets a row of ``inputs`` (``[capacity, 160]`` int16); before ``detect()`` the engine
    writes each stream's decoded frame into its row. ``detect()`` clears ``inputs`` afterwards, so a
    row not written on a tick counts as silence. Rows of removed streams are reused; the capacity
    doubles when full (``inputs`` is then a new array: read the attribute each tick).
    """

    def __init__(self, *, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.inputs: npt.NDArray[np.int16] = np.zeros((capacity, FRAME_SAMPLES), dtype=np.int16)
        self._previous = np.full(capacity, NO_DIGIT, dtype=np.int8)
        self._run = np.zeros(capacity, dtype=np.int16)
        self._run_strong = np.zeros(capacity, dtype=np.bool_)
        self._latched = np.full(capacity, NO_DIGIT, dtype=np.int8)
        self._row_stream: list[str | None] = [None] * capacity
        self._rows: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._used = 0  # rows [0, _used) hold every stream: detect() looks at no more

    @property
    def capacity(self) -> int:
        return len(self._row_stream)

    def streams(self) -> list[str]:
        return list(self._rows)

    def row(self, stream: str) -> int:
        return self._rows[stream]

    def add(self, stream: str) -> int:
        """Start detecting on ``stream``; returns its row in ``inputs``."""
        if stream in self._rows:
            raise ValueError(f"stream {stream!r} is already in the bank")
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._rows[stream] = row
        self._row_stream[row] = stream
        self._reset(row)
        self._used = max(self._used, row + 1)
        return row

    def remove(self, stream: str) -> None:
        row = self._rows.pop(stream)
        self._row_stream[row] = None
        self._reset(row)
        self._free.append(row)
        # Keep the lowest rows in use first so the scanned prefix stays short.
        self._free.sort(reverse=True)
        while self._used and self._row_stream[self._used - 1] is None:
            self._used -= 1

    def detect(self) -> list[tuple[str, str]]:
        """Consume this tick's ``inputs``; returns ``(stream, digit)`` for each press recognised now."""
        used = self._used
        if used == 0:
            return []
        candidate, strong = classify_rows(self.inputs[:used])
        fired = self._advance(candidate, strong, used)
        self.inputs[:used] = 0
        events: list[tuple[str, str]] = []
        for row in np.flatnonzero(fired):
            stream = self._row_stream[row]
            if stream is not None:
                events.append((stream, DTMF_DIGITS[candidate[row]]))
        return events

    def _advance(
        self, candidate: npt.NDArray[np.int8], strong: npt.NDArray[np.bool_], used: int
    ) -> npt.NDArray[np.bool_]:
        previous, run, latched = self._previous[:used], self._run[:used], self._latched[:used]
        run_strong = self._run_strong[:used]
        same = candidate == previous
        run[:] = np.where(same, np.minimum(run + 1, MIN_FRAMES), 1)
        run_strong[:] = (run_strong & same) | strong
        previous[:] = candidate
        pressed: npt.NDArray[np.bool_] = (candidate != NO_DIGIT) & (run >= MIN_FRAMES) & run_strong
        fired: npt.NDArray[np.bool_] = pressed & (latched != candidate)
        latched[fired] = candidate[fired]
        latched[candidate == NO_DIGIT] = NO_DIGIT
        return fired

    def _reset(self, row: int) -> None:
        self.inputs[row] = 0
        self._previous[row] = NO_DIGIT
        self._run[row] = 0
        self._run_strong[row] = False
        self._latched[row] = NO_DIGIT

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        inputs = np.zeros((new, FRAME_SAMPLES), dtype=np.int16)
        inputs[:old] = self.inputs
        self.inputs = inputs
        self._previous = np.concatenate([self._previous, np.full(old, NO_DIGIT, dtype=np.int8)])
        self._run = np.concatenate([self._run, np.zeros(old, dtype=np.int16)])
        self._run_strong = np.concatenate([self._run_strong, np.zeros(old, dtype=np.bool_)])
        self._latched = np.concatenate([self._latched, np.full(old, NO_DIGIT, dtype=np.int8)])
        self._row_stream.extend([None] * old)
        self._free = list(range(new - 1, old - 1, -1))


class InbandDtmfDetector:
    """Key-press detection for one stream, fed one 160-sample frame at a time."""

    def __init__(self) -> None:
        self._bank = InbandDtmfBank(capacity=1)
        self._bank.add("stream")

    def feed(self, frame: npt.NDArray[np.int16]) -> str | None:
        """The digit whose press is recognised with this frame, else None (each press reported once)."""
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected one frame of {FRAME_SAMPLES} samples, got shape {frame.shape}")
        self._bank.inputs[0] = frame
        events = self._bank.detect()
        return events[0][1] if events else None

    def feed_samples(self, samples: npt.NDArray[np.int16]) -> list[str]:
        """Feed a whole recording (its length a multiple of 160 samples; a tail is ignored)."""
        digits: list[str] = []
        for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            digit = self.feed(samples[start : start + FRAME_SAMPLES])
            if digit is not None:
                digits.append(digit)
        return digits


def dtmf_tone(digit: str, duration_ms: int = 100, level_dbfs: float = -10.0) -> npt.NDArray[np.int16]:
    """The DTMF tone pair of ``digit`` (``0-9 * # A-D``), each of the two tones at ``level_dbfs`` peak."""
    code = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r} (expected one of {DTMF_DIGITS})")
    low, high = LOW_FREQS[code // 4], HIGH_FREQS[code % 4]
    # tone() shares the peak between components; ask for twice the per-tone amplitude.
    return tone((low, high), duration_ms, level_dbfs + 20 * np.log10(2), fade_ms=2.0)
