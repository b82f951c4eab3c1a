"""Text-to-speech through espeak-ng from the wheel: 8 kHz prompts, Vonage languages and levels, cache, threads."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from dialbridge.media.tts import VOICES, SpeechSynthesizer, UnsupportedLanguage

WELCOME = "Welcome. Please enter the PIN of your meeting, followed by the hash key."


def peak_dbfs(samples: npt.NDArray[np.int16]) -> float:
    return float(20 * np.log10(np.abs(samples.astype(np.int32)).max() / 32767))


def band_fraction(samples: npt.NDArray[np.int16], low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


def test_prompt_is_speech_at_8khz() -> None:
    speech = SpeechSynthesizer().synthesize(WELCOME)
    assert speech.dtype == np.int16 and speech.ndim == 1
    # ~12 words at espeak's 175 words per minute, with the sentence pauses.
    assert 2.5 < len(speech) / 8000 < 6.5
    assert peak_dbfs(speech) == pytest.approx(-9.0, abs=0.2)
    # Voice lives in the telephone band; pauses between words exist.
    assert band_fraction(speech, 100, 3400) > 0.95
    frames = speech[: len(speech) // 160 * 160].reshape(-1, 160).astype(float)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert (rms < 30).sum() >= 3 and (rms > 1000).sum() >= 20


def test_level_is_a_gain_of_9_db_per_unit() -> None:
    synthesizer = SpeechSynthesizer()
    assert peak_dbfs(synthesizer.synthesize("Hello.", level=1.0)) == pytest.approx(0.0, abs=0.2)
    assert peak_dbfs(synthesizer.synthesize("Hello.", level=-1.0)) == pytest.approx(-18.0, abs=0.2)
    assert peak_dbfs(synthesizer.synthesize("Hello.", level=0.5)) == pytest.approx(-4.5, abs=0.2)
    assert peak_dbfs(synthesizer.synthesize("Hello.", level=7.0)) == pytest.approx(0.0, abs=0.2)  # clamped


def test_every_mapped_language_has_a_voice() -> None:
    synthesizer = SpeechSynthesizer()
    for language in VOICES:
        speech = synthesizer.synthesize("1 2 3", language=language)
        assert len(speech) > 2000, language


def test_languages_sound_different() -> None:
    synthesizer = SpeechSynthesizer()
    english = synthesizer.synthesize("Bonjour", language="en-US")
    french = synthesizer.synthesize("Bonjour", language="fr-FR")
    assert len(english) != len(french) or not np.array_equal(english, french)


def test_unsupported_language_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedLanguage) as caught:
        SpeechSynthesizer().synthesize("Hello", language="xx-XX")
    assert isinstance(caught.value, ValueError)
    assert "xx-XX" in str(caught.value) and "en-US" in str(caught.value) and "de-DE" in str(caught.value)


def test_prompts_are_cached_read_only_and_bounded() -> None:
    synthesizer = SpeechSynthesizer(cache_entries=2)
    one = synthesizer.synthesize("one")
    assert synthesizer.synthesize("one") is one
    assert not one.flags.writeable
    assert synthesizer.synthesize("one", level=0.5) is not one  # level is part of the key
    assert synthesizer.synthesize("one", language="en-GB") is not one  # and so is the voice
    one = synthesizer.synthesize("one")
    two = synthesizer.synthesize("two")
    assert synthesizer.synthesize("one") is one  # "one" is now the most recently used...
    synthesizer.synthesize("three")  # ...so "two" is evicted
    assert synthesizer.synthesize("one") is one
    again = synthesizer.synthesize("two")
    # Synthesised afresh (espeak-ng's voicing jitter makes each synthesis differ by a few samples).
    assert again is not two and abs(len(again) - len(two)) < 0.05 * len(two)


def test_empty_text_is_no_audio() -> None:
    assert len(SpeechSynthesizer().synthesize("")) == 0


def test_synthesis_from_worker_threads_is_safe() -> None:
    texts = ["Hi.", "Hello there.", "You are now muted.", WELCOME, "Goodbye.", "You are the first participant."]
    expected = [len(SpeechSynthesizer().synthesize(t)) for t in texts]
    results: dict[int, npt.NDArray[np.int16]] = {}

    def work(i: int) -> None:
        results[i] = SpeechSynthesizer().synthesize(texts[i % 6], language="en-US")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each thread got its own text's speech, whole: never another's samples or an interleaving of two.
    for i in range(12):
        assert abs(len(results[i]) - expected[i % 6]) < 0.03 * expected[i % 6], i
        assert peak_dbfs(results[i]) == pytest.approx(-9.0, abs=0.2)
