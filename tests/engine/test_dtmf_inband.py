"""In-band DTMF: every press reported once, through G.711 and noise; no digits out of speech, music, single tones."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dialbridge.media import g711
from dialbridge.media.dtmf import (
    DTMF_DIGITS,
    HIGH_FREQS,
    LOW_FREQS,
    InbandDtmfBank,
    InbandDtmfDetector,
    detect_rows,
    dtmf_tone,
)
from dialbridge.media.tones import silence, tone

Samples = npt.NDArray[np.int16]


def detect(samples: Samples) -> str:
    return "".join(InbandDtmfDetector().feed_samples(pad(samples)))


def pad(samples: Samples) -> Samples:
    """Trailing silence up to a whole number of frames, plus one frame."""
    missing = -len(samples) % 160 + 160
    return np.concatenate([samples, np.zeros(missing, dtype=np.int16)])


def keyed(digits: str, *, tone_ms: int = 100, gap_ms: int = 100, level_dbfs: float = -10.0, lead: int = 0) -> Samples:
    parts = [np.zeros(lead, dtype=np.int16)]
    for digit in digits:
        parts += [dtmf_tone(digit, tone_ms, level_dbfs), silence(gap_ms)]
    return np.concatenate(parts)


def add_noise(samples: Samples, snr_db: float, tone_power: float, rng: np.random.Generator) -> Samples:
    noisy = samples + rng.normal(0, np.sqrt(tone_power / 10 ** (snr_db / 10)), len(samples))
    return np.clip(np.round(noisy), -32768, 32767).astype(np.int16)


def test_each_digit_is_detected_once() -> None:
    for digit in DTMF_DIGITS:
        assert detect(keyed(digit)) == digit


def test_a_long_press_is_one_digit() -> None:
    assert detect(keyed("5", tone_ms=1500)) == "5"


def test_a_repeated_digit_needs_only_a_short_gap() -> None:
    assert detect(keyed("777", tone_ms=60, gap_ms=40)) == "777"


def test_changing_digit_without_a_gap_counts_both() -> None:
    samples = np.concatenate([dtmf_tone("1", 100), dtmf_tone("9", 100)])
    assert detect(samples) == "19"


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_40ms_presses_through_g711_and_noise_at_any_alignment(codec: str) -> None:
    rng = np.random.default_rng(1234)
    for trial in range(24):
        digits = "".join(rng.choice(list(DTMF_DIGITS), 8))
        level = float(rng.uniform(-24, -6))
        clean = keyed(digits, tone_ms=40, gap_ms=40, level_dbfs=level, lead=int(rng.integers(0, 160)))
        tone_power = float(np.mean(dtmf_tone("5", 40, level).astype(float) ** 2))
        noisy = add_noise(clean, 15.0, tone_power, rng)
        received = g711.decode(codec, g711.encode(codec, noisy))
        assert detect(received) == digits, f"trial {trial}, level {level:.1f} dBFS"


def test_tone_shorter_than_two_frames_is_ignored() -> None:
    for lead in range(0, 160, 20):
        assert detect(keyed("3", tone_ms=20, lead=lead)) == ""


def test_twist_within_limits_is_accepted_beyond_is_rejected() -> None:
    def pair(low_dbfs: float, high_dbfs: float) -> Samples:
        low = tone(LOW_FREQS[1], 100, low_dbfs, fade_ms=2).astype(np.int32)
        high = tone(HIGH_FREQS[1], 100, high_dbfs, fade_ms=2).astype(np.int32)
        return (low + high).astype(np.int16)

    assert detect(pair(-16, -10)) == "5"  # 6 dB normal twist
    assert detect(pair(-10, -16)) == "5"  # 6 dB reverse twist
    assert detect(pair(-22, -10)) == ""
    assert detect(pair(-10, -22)) == ""


@pytest.mark.parametrize("deviation", [-0.01, 0.01])
def test_tones_off_frequency_by_1_percent_are_accepted(deviation: float) -> None:
    for code, digit in enumerate(DTMF_DIGITS):
        freqs = (LOW_FREQS[code // 4] * (1 + deviation), HIGH_FREQS[code % 4] * (1 - deviation))
        assert detect(tone(freqs, 80, -4, fade_ms=2)) == digit


@pytest.mark.parametrize("deviation", [-0.035, 0.035])
def test_tones_off_frequency_by_3_5_percent_are_rejected(deviation: float) -> None:
    for code in range(16):
        freqs = (LOW_FREQS[code // 4] * (1 + deviation), HIGH_FREQS[code % 4] * (1 + deviation))
        assert detect(tone(freqs, 100, -4, fade_ms=2)) == ""


@pytest.mark.parametrize("deviation", [-0.035, -0.025, 0.025, 0.035])
@pytest.mark.parametrize("which", ["low", "high"])
def test_one_tone_off_frequency_by_2_5_percent_or_more_is_rejected(deviation: float, which: str) -> None:
    for code in range(16):
        low, high = LOW_FREQS[code // 4], HIGH_FREQS[code % 4]
        freqs = (low * (1 + deviation), high) if which == "low" else (low, high * (1 + deviation))
        assert detect(tone(freqs, 100, -4, fade_ms=2)) == ""


def test_three_tones_are_not_a_digit() -> None:
    assert detect(tone((697.0, 770.0, 1209.0), 200, -4, fade_ms=2)) == ""
    assert detect(tone((770.0, 1209.0, 1336.0), 200, -4, fade_ms=2)) == ""


def test_note_pairs_with_harmonics_are_not_digits() -> None:
    # The DTMF pair of "5" played by instruments: each note carries its own second harmonic.
    def chord(low_harmonic_db: float | None, high_harmonic_db: float | None) -> Samples:
        t = np.arange(1600) / 8000
        wave: npt.NDArray[np.float64] = np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t)
        if low_harmonic_db is not None:
            wave += 10 ** (low_harmonic_db / 20) * np.sin(2 * np.pi * 1540 * t)
        if high_harmonic_db is not None:
            wave += 10 ** (high_harmonic_db / 20) * np.sin(2 * np.pi * 2672 * t)
        samples: Samples = np.round(wave / np.abs(wave).max() * 16000).astype(np.int16)
        return samples

    assert detect(chord(None, None)) == "5"
    assert detect(chord(-6, None)) == ""
    assert detect(chord(None, -15)) == ""
    assert detect(chord(None, -8)) == ""


def test_too_quiet_is_ignored() -> None:
    assert detect(keyed("8", level_dbfs=-45)) == ""


def test_single_tones_silence_and_noise_are_not_digits() -> None:
    rng = np.random.default_rng(5)
    for freq in [*LOW_FREQS, *HIGH_FREQS, 350.0, 440.0, 1000.0, 2000.0]:
        assert detect(tone(freq, 500, -6)) == "", freq
    assert detect(tone((350.0, 440.0), 1000, -10)) == ""  # dial tone
    assert detect(silence(1000)) == ""
    assert detect(rng.normal(0, 3000, 16000).astype(np.int16)) == ""


def test_speech_is_not_digits() -> None:
    from dialbridge.media.tts import SpeechSynthesizer

    synthesizer = SpeechSynthesizer()
    texts = [
        "Welcome. Please enter the PIN of your meeting, followed by the hash key.",
        "You are the first participant. Please wait for the others to join.",
        "One two three four five six seven eight nine zero, star, hash. Mary had a little lamb.",
        "Eeeeee. Ooooooh. Aaaaah. Hmmmmm.",
    ]
    for language in ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "it-IT", "nl-NL", "pt-BR"]:
        for text in texts:
            speech = synthesizer.synthesize(text, language=language)
            for codec in ("PCMU", "PCMA"):
                assert detect(g711.decode(codec, g711.encode(codec, speech))) == "", (language, text)


def test_music_like_chords_are_not_digits() -> None:
    # Equal-tempered notes C4..C7 with harmonic-rich timbres, one to three at a time, decaying.
    rng = np.random.default_rng(2026)
    notes = 261.63 * 2 ** (np.arange(37) / 12)
    pieces = []
    for _ in range(600):
        t = np.arange(int(rng.integers(800, 3200))) / 8000
        wave = np.zeros_like(t)
        for f in rng.choice(notes, int(rng.integers(1, 4)), replace=False):
            for k in range(1, int(rng.integers(3, 7)) + 1):
                if f * k < 3900:
                    wave += np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi)) / k
        pieces.append(wave * np.exp(-t * rng.uniform(0, 6)))
    music = np.concatenate(pieces)
    music = np.round(music / np.abs(music).max() * 16000).astype(np.int16)
    assert detect(music) == ""


def test_digits_over_quieter_speech_are_detected() -> None:
    from dialbridge.media.tts import SpeechSynthesizer

    speech = SpeechSynthesizer().synthesize("Please enter the PIN of your meeting.", level=-1.0)
    keys = keyed("2580", tone_ms=100, gap_ms=150, level_dbfs=-6)
    n = min(len(speech), len(keys))
    mixed = np.clip(speech[:n].astype(np.int32) // 4 + keys[:n], -32768, 32767).astype(np.int16)
    assert detect(mixed) == "2580"


def test_detect_rows_is_per_row() -> None:
    frames = np.zeros((4, 160), dtype=np.int16)
    frames[1] = dtmf_tone("#", 20)
    frames[3] = dtmf_tone("A", 20)
    frames[2] = tone(1000.0, 20, -6)
    assert detect_rows(frames).tolist() == [-1, DTMF_DIGITS.index("#"), -1, DTMF_DIGITS.index("A")]


def test_bank_streams_are_independent_and_rows_are_reused() -> None:
    bank = InbandDtmfBank(capacity=2)
    for name in ("a", "b", "c"):  # the third add grows the bank
        bank.add(name)
    assert bank.capacity >= 3
    sequences = {"a": keyed("123"), "b": keyed("#", lead=400), "c": keyed("90", lead=80)}
    length = max(len(s) for s in sequences.values()) + 320
    padded = {k: np.concatenate([v, np.zeros(length - len(v), np.int16)]) for k, v in sequences.items()}
    heard: dict[str, str] = {"a": "", "b": "", "c": ""}
    for start in range(0, length - 159, 160):
        for name, samples in padded.items():
            bank.inputs[bank.row(name)] = samples[start : start + 160]
        for stream, digit in bank.detect():
            heard[stream] += digit
    assert heard == {"a": "123", "b": "#", "c": "90"}

    # A removed stream's half-heard press does not leak into the stream that gets its row next.
    row = bank.row("a")
    bank.inputs[row] = dtmf_tone("4", 20)
    bank.detect()
    bank.remove("a")
    assert bank.add("d") == row
    bank.inputs[row] = dtmf_tone("4", 20)
    assert bank.detect() == []
    bank.inputs[row] = dtmf_tone("4", 20)
    assert bank.detect() == [("d", "4")]


def test_bank_rows_not_written_count_as_silence() -> None:
    bank = InbandDtmfBank()
    row = bank.add("s")
    bank.inputs[row] = dtmf_tone("6", 20)
    assert bank.detect() == []
    assert bank.detect() == []  # nothing written: silence, not a repeat of the last frame
    bank.inputs[row] = dtmf_tone("6", 20)
    assert bank.detect() == []


def test_dtmf_tone_has_the_two_frequencies_at_the_level() -> None:
    samples = dtmf_tone("9", 200, -10.0).astype(float)
    spectrum = np.abs(np.fft.rfft(samples)) * 2 / len(samples)
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx([852.0, 1477.0], abs=5)
    t = np.arange(len(samples)) / 8000
    for f in (852.0, 1477.0):
        amplitude = 2 * abs(np.sum(samples * np.exp(-2j * np.pi * f * t))) / len(samples)
        assert 20 * np.log10(amplitude / 32767) == pytest.approx(-10.0, abs=0.3)
    assert len(dtmf_tone("1", 100)) == 800
    with pytest.raises(ValueError):
        dtmf_tone("E")
