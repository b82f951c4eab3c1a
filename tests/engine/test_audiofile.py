"""Audio files to 8 kHz mono int16: WAV and MP3 at any rate and channel count, clear errors for bad data."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from dialbridge.media.audiofile import AudioFileError, load_audio, resample_to_8k


def sine(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def wav_bytes(channels: list[npt.NDArray[np.int16]], rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.stack(channels, axis=1).astype("<i2").tobytes())
    return buffer.getvalue()


def mp3_bytes(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        frame_size = 1152
        for start in range(0, len(samples), frame_size):
            chunk = samples[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def amplitude_at(samples: npt.NDArray[np.int16], freq: float) -> float:
    core = samples[800:-800].astype(float)  # away from resampler / codec edges
    t = np.arange(len(core)) / 8000
    return float(2 * abs(np.sum(core * np.exp(-2j * np.pi * freq * t))) / len(core))


def test_wav_at_8khz_mono_comes_back_unchanged(tmp_path: Path) -> None:
    samples = sine(440.0, 8000, 0.5)
    path = tmp_path / "prompt.wav"
    path.write_bytes(wav_bytes([samples], 8000))
    loaded = load_audio(path)
    assert loaded.dtype == np.int16
    assert np.array_equal(loaded, samples)
    assert np.array_equal(load_audio(str(path)), samples)


def test_stereo_44k1_wav_is_resampled_and_mixed_down() -> None:
    left = sine(1000.0, 44100, 1.0)
    right = sine(2000.0, 44100, 1.0)
    loaded = load_audio(wav_bytes([left, right], 44100))
    assert abs(len(loaded) - 8000) <= 16
    # Both channels present, each at about half level (FFmpeg's downmix), nothing elsewhere.
    assert amplitude_at(loaded, 1000.0) == pytest.approx(amplitude_at(loaded, 2000.0), rel=0.05)
    assert amplitude_at(loaded, 1000.0) > 3000
    assert amplitude_at(loaded, 1500.0) < 50


def test_mp3_decodes() -> None:
    samples = sine(800.0, 22050, 1.5)
    loaded = load_audio(mp3_bytes(samples, 22050))
    # MP3 adds encoder delay and padding (a frame or two) around the audio.
    assert 1.5 * 8000 <= len(loaded) <= 1.5 * 8000 + 1000
    assert amplitude_at(loaded, 800.0) == pytest.approx(10000, rel=0.1)


def test_garbage_empty_and_missing_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="empty"):
        load_audio(b"")
    with pytest.raises(AudioFileError, match="not a readable audio file"):
        load_audio(b"this is not audio at all, just some text " * 50)
    with pytest.raises(AudioFileError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    assert issubclass(AudioFileError, ValueError)


def test_file_without_audio_samples_is_an_error() -> None:
    with pytest.raises(AudioFileError):
        load_audio(wav_bytes([np.zeros(0, dtype=np.int16)], 8000))


def test_too_long_is_an_error() -> None:
    with pytest.raises(AudioFileError, match="longer than"):
        load_audio(wav_bytes([sine(440.0, 8000, 3.0)], 8000), max_seconds=1.0)


def test_resampling_low_passes_instead_of_aliasing() -> None:
    in_band = resample_to_8k(sine(1000.0, 22050, 1.0), 22050)
    assert amplitude_at(in_band, 1000.0) == pytest.approx(10000, rel=0.02)
    # 5 kHz would fold to 3 kHz if merely decimated.
    above = resample_to_8k(sine(5000.0, 22050, 1.0), 22050)
    assert np.abs(above[800:-800]).max() < 10
    assert len(resample_to_8k(np.zeros(0, dtype=np.int16), 44100)) == 0
