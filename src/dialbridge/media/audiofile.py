"""Audio files (WAV, MP3, anything FFmpeg reads) to the engine's 8 kHz mono int16, through PyAV.

Resampling uses FFmpeg's swresample, whose windowed-sinc filter low-passes before decimating, so
content above 4 kHz does not alias into the band.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Final

import av
import av.error
import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 8000
DEFAULT_MAX_SECONDS: Final = 600.0


class AudioFileError(ValueError):
    """The data is not audio we can decode (unreadable, no audio stream, empty, too long)."""


def load_audio(source: str | bytes | Path, *, max_seconds: float = DEFAULT_MAX_SECONDS) -> npt.NDArray[np.int16]:
    """Decode the audio file at ``source`` (a path) or in ``source`` (bytes) to int16 mono at 8 kHz.

    Any sample rate and channel count; channels are mixed down. Raises ``AudioFileError`` naming the
    problem; decoding stops with an error past ``max_seconds`` of output (a guard against huge files).
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise AudioFileError("empty audio data")
    max_samples = int(max_seconds * SAMPLE_RATE)
    try:
        container = av.open(target, mode="r")
    except FileNotFoundError as exc:
        raise AudioFileError(f"{name}: no such file") from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioFileError(f"{name}: not a readable audio file ({exc})") from exc
    try:
        if not container.streams.audio:
            raise AudioFileError(f"{name}: contains no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks: list[npt.NDArray[np.int16]] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > max_samples:
                    raise AudioFileError(f"{name}: longer than {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        except av.error.FFmpegError as exc:
            raise AudioFileError(f"{name}: cannot decode audio ({exc})") from exc
    finally:
        container.close()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if len(samples) == 0:
        raise AudioFileError(f"{name}: no audio samples")
    return samples


def resample_to_8k(samples: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.int16]:
    """Mono int16 at ``rate`` Hz to 8 kHz, with an anti-aliasing low-pass."""
    if rate == SAMPLE_RATE:
        return np.array(samples, dtype=np.int16)
    if len(samples) == 0:
        return np.zeros(0, dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    outputs = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([out.to_ndarray().reshape(-1) for out in outputs]).astype(np.int16, copy=False)
