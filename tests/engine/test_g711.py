"""G.711: bit-exact with ITU-T G.711 (audioop as the reference where it exists), row-vectorised codec choice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dialbridge.media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None  # type: ignore[assignment]

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop (the reference) is gone from this Python")
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@needs_audioop
def test_ulaw_encode_matches_audioop_for_every_int16() -> None:
    assert g711.encode("PCMU", ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)


@needs_audioop
def test_alaw_encode_matches_audioop_for_every_int16() -> None:
    assert g711.encode("PCMA", ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


@needs_audioop
def test_decode_matches_audioop_for_every_code() -> None:
    assert g711.decode("PCMU", ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.decode("PCMA", ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_published_table_values() -> None:
    # G.711 tables (16-bit scale): µ-law peaks at ±8031 << 2, A-law at ±4032 << 3, A-law has no zero.
    ulaw = g711.decode("PCMU", bytes([0x00, 0x80, 0x7F, 0xFF, 0x70, 0xF0]))
    assert ulaw.tolist() == [-32124, 32124, 0, 0, -120, 120]
    alaw = g711.decode("PCMA", bytes([0x2A, 0xAA, 0x55, 0xD5]))
    assert alaw.tolist() == [-32256, 32256, -8, 8]
    extremes = np.array([32767, -32768, 0], dtype=np.int16)
    assert g711.encode("PCMU", extremes) == bytes([0x80, 0x00, 0xFF])
    assert g711.encode("PCMA", extremes) == bytes([0xAA, 0x2A, 0xD5])


def test_silence_byte_is_the_code_of_zero() -> None:
    for codec, byte in g711.SILENCE.items():
        assert g711.encode(codec, np.zeros(1, dtype=np.int16)) == bytes([byte])


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_reconstruction_levels_are_fixed_points(codec: str) -> None:
    levels = g711.decode(codec, ALL_CODES)
    expected = bytearray(ALL_CODES)
    if codec == "PCMU":
        expected[0x7F] = 0xFF  # µ-law's "negative zero" re-encodes as the positive one
    assert g711.encode(codec, levels) == bytes(expected)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_speech_level_sine_survives_with_telephone_snr(codec: str) -> None:
    t = np.arange(8000) / 8000
    sine = np.round(8000 * np.sin(2 * np.pi * 1004 * t)).astype(np.int16)
    decoded = g711.decode(codec, g711.encode(codec, sine)).astype(float)
    noise = decoded - sine
    snr = 10 * np.log10(np.sum(sine.astype(float) ** 2) / np.sum(noise**2))
    assert snr > 35


def test_rows_pick_the_codec_per_row() -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(-32768, 32768, (6, 160)).astype(np.int16)
    alaw = np.array([True, False, False, True, True, False])
    encoded = g711.encode_rows(samples, alaw)
    assert encoded.dtype == np.uint8 and encoded.shape == (6, 160)
    decoded = g711.decode_rows(encoded, alaw)
    assert decoded.dtype == np.int16
    for i, is_alaw in enumerate(alaw):
        codec = "PCMA" if is_alaw else "PCMU"
        assert encoded[i].tobytes() == g711.encode(codec, samples[i])
        assert np.array_equal(decoded[i], g711.decode(codec, encoded[i].tobytes()))


def test_rows_accept_non_contiguous_views() -> None:
    samples = np.arange(-320, 320, dtype=np.int16).reshape(2, 320)[:, ::2]
    alaw = np.array([False, True])
    assert g711.encode_rows(samples, alaw)[1].tobytes() == g711.encode("PCMA", samples[1].copy())


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="PCMU"):
        g711.encode("G722", np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError):
        g711.decode_rows(np.zeros((3, 160), dtype=np.uint8), np.zeros(2, dtype=np.bool_))
    with pytest.raises(ValueError):
        g711.encode_rows(np.zeros(160, dtype=np.int16), np.zeros(1, dtype=np.bool_))
