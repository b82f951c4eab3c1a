"""Synthetic sounds at 8 kHz: generic tones, silence, and the conference join / leave beeps.

Levels are peak levels in dBFS (0 dBFS = a full-scale sine, peak 32767): the components of a
multi-frequency tone share the peak equally, so a tone never clips whatever its frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 8000
FULL_SCALE: Final = 32767.0
_FADE_MS: Final = 5.0
JOIN_LEAVE_LEVEL_DBFS: Final = -16.0


def samples_for_ms(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


def silence(ms: float) -> npt.NDArray[np.int16]:
    """``ms`` milliseconds of digital silence."""
    return np.zeros(samples_for_ms(ms), dtype=np.int16)


def tone(
    freqs: Sequence[float] | float, duration_ms: float, level_dbfs: float = -16.0, *, fade_ms: float = _FADE_MS
) -> npt.NDArray[np.int16]:
    """The sum of equal-amplitude sines at ``freqs`` for ``duration_ms``, peaking at ``level_dbfs``.

    A raised-cosine fade in and out of ``fade_ms`` (clamped to a quarter of the tone) keeps the
    edges from clicking; pass ``fade_ms=0`` for hard edges (DTMF detectors timing tests).
    """
    frequencies = [float(freqs)] if isinstance(freqs, int | float) else [float(f) for f in freqs]
    n = samples_for_ms(duration_ms)
    if not frequencies or n == 0:
        return np.zeros(n, dtype=np.int16)
    if any(not 0 < f < SAMPLE_RATE / 2 for f in frequencies):
        raise ValueError(f"tone frequencies must lie in (0, {SAMPLE_RATE // 2}) Hz, got {frequencies}")
    t = np.arange(n) / SAMPLE_RATE
    wave: npt.NDArray[np.float64] = np.sum([np.sin(2 * np.pi * f * t) for f in frequencies], axis=0)
    wave *= FULL_SCALE * 10 ** (level_dbfs / 20) / len(frequencies)
    fade = min(samples_for_ms(fade_ms), n // 4)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return np.clip(np.round(wave), -32768, 32767).astype(np.int16)


def join_tone(level_dbfs: float = JOIN_LEAVE_LEVEL_DBFS) -> npt.NDArray[np.int16]:
    """Rising two-note beep (E5 then A5, 200 ms): someone joined the conference."""
    return np.concatenate([tone(659.3, 90, level_dbfs), silence(20), tone(880.0, 90, level_dbfs)])


def leave_tone(level_dbfs: float = JOIN_LEAVE_LEVEL_DBFS) -> npt.NDArray[np.int16]:
    """Falling two-note beep (A5 then E5, 200 ms): someone left the conference."""
    return np.concatenate([tone(880.0, 90, level_dbfs), silence(20), tone(659.3, 90, level_dbfs)])
