"""Text-to-speech for prompts, with espeak-ng, at the engine's 8 kHz.

espeak-ng (GPL-3.0-or-later) is not linked into dialbridge: the shared library and its voice data
come from the ``espeakng-loader`` wheel and are loaded dynamically with ctypes at the first
synthesis, from the wheel's own paths (no system package, no network).

espeak-ng keeps global state and is not thread-safe: one process-wide lock guards it and it is
initialised once per process, in synchronous mode, delivering 22050 Hz samples to a callback.
``SpeechSynthesizer.synthesize`` can be called from any thread (run it in a worker: a first synthesis
of a sentence costs tens of milliseconds); prompts repeat on every call, so results are cached.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from typing import Final

import numpy as np
import numpy.typing as npt

from dialbridge.media.audiofile import resample_to_8k

#: Vonage ``language`` codes -> espeak-ng voice names.
VOICES: Final[dict[str, str]] = {
    "en-US": "en-us",
    "en-GB": "en",
    "de-DE": "de",
    "fr-FR": "fr",
    "fr-CA": "fr",
    "es-ES": "es",
    "es-MX": "es-419",
    "es-US": "es-419",
    "it-IT": "it",
    "nl-NL": "nl",
    "pt-BR": "pt-br",
    "pt-PT": "pt",
    "da-DK": "da",
    "sv-SE": "sv",
    "nb-NO": "nb",
    "fi-FI": "fi",
    "pl-PL": "pl",
    "cs-CZ": "cs",
    "hu-HU": "hu",
    "ro-RO": "ro",
    "el-GR": "el",
    "tr-TR": "tr",
    "ru-RU": "ru",
    "uk-UA": "uk",
    "ar": "ar",
    "hi-IN": "hi",
    "ja-JP": "ja",
    "ko-KR": "ko",
    "cmn-CN": "cmn",
    "zh-CN": "cmn",
    "yue-CN": "yue",
}

#: Peak of a prompt at ``level=0``; Vonage's level -1..1 moves it by ±9 dB (0 dBFS at level 1).
NOMINAL_PEAK_DBFS: Final = -9.0
LEVEL_RANGE_DB: Final = 9.0
DEFAULT_CACHE_ENTRIES: Final = 128

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_ESPEAK_CHARS_UTF8: Final = 1
_POS_CHARACTER: Final = 1
_EE_OK: Final = 0
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class UnsupportedLanguage(ValueError):
    def __init__(self, language: str) -> None:
        super().__init__(f"unsupported TTS language {language!r}; supported: {', '.join(sorted(VOICES))}")
        self.language = language


class TtsError(RuntimeError):
    """espeak-ng failed (library missing, initialisation or synthesis error)."""


class _Espeak:
    """The process's one espeak-ng instance. Every method must be called with ``_LOCK`` held."""

    def __init__(self) -> None:
        import espeakng_loader  # type: ignore[import-untyped]  # the wheel ships no py.typed

        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise TtsError(f"cannot load libespeak-ng from espeakng-loader: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise TtsError(f"espeak_Initialize failed ({rate}) with data at {data_path.decode()}")
        self.sample_rate = rate
        self._lib = lib
        self._chunks: list[bytes] = []
        # Kept on self: ctypes must not collect the thunk while espeak holds the pointer.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0 = keep going

    def synthesize(self, text: str, voice: str) -> npt.NDArray[np.int16]:
        if voice != self._voice:
            err = self._lib.espeak_SetVoiceByName(voice.encode())
            if err != _EE_OK:
                raise TtsError(f"espeak-ng has no voice {voice!r} (error {err})")
            self._voice = voice
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise TtsError(f"espeak_Synth failed (error {err})")
        pcm = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        self._chunks = []
        return pcm


_NO_SPEECH: Final = np.zeros(0, dtype=np.int16)
_NO_SPEECH.flags.writeable = False
_LOCK = threading.Lock()
_engine: _Espeak | None = None


def _espeak() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def voice_for(language: str) -> str:
    """The espeak-ng voice for a Vonage language code, or ``UnsupportedLanguage``."""
    try:
        return VOICES[language]
    except KeyError:
        raise UnsupportedLanguage(language) from None


class SpeechSynthesizer:
    """Speech for prompt texts, cached (LRU of ``cache_entries`` prompts; arrays are read-only)."""

    def __init__(self, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self._cache: OrderedDict[tuple[str, str, float], npt.NDArray[np.int16]] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_lock = threading.Lock()

    def synthesize(self, text: str, *, language: str = "en-US", level: float = 0.0) -> npt.NDArray[np.int16]:
        """``text`` spoken in ``language``, as int16 at 8 kHz; ``level`` is Vonage's talk level -1..1."""
        voice = voice_for(language)
        if not text.strip():
            return _NO_SPEECH
        level = round(min(1.0, max(-1.0, float(level))), 2)
        key = (text, voice, level)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        with _LOCK:
            engine = _espeak()
            raw = engine.synthesize(text, voice)
            rate = engine.sample_rate
        speech = _to_level(resample_to_8k(raw, rate), level)
        speech.flags.writeable = False
        with self._cache_lock:
            self._cache[key] = speech
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return speech


def _to_level(samples: npt.NDArray[np.int16], level: float) -> npt.NDArray[np.int16]:
    peak = int(np.max(np.abs(samples.astype(np.int32)))) if len(samples) else 0
    if peak == 0:
        return samples.copy()
    target = 32767.0 * 10 ** ((NOMINAL_PEAK_DBFS + LEVEL_RANGE_DB * level) / 20)
    scaled = np.round(samples.astype(np.float32) * (target / peak))
    return np.clip(scaled, -32768, 32767).astype(np.int16)
