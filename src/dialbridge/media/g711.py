"""G.711 µ-law (PCMU) and A-law (PCMA), bit-exact with ITU-T G.711 and with CPython's ``audioop``.

Everything goes through lookup tables built once at import: a 256-entry decode table per law and a
65536-entry encode table per law indexed by the sample's uint16 bit pattern. The two tables of each
direction are stacked so that a whole tick of calls, each with its own codec, is one fancy-index:
``decode_rows`` and ``encode_rows`` take an ``[M, 160]`` matrix and a per-row "is A-law" mask.

µ-law follows the 14-bit algorithm (sample >> 2, bias 33 on that scale, i.e. 0x84 on the 16-bit
scale, magnitude clipped at 8159 = 32635 >> 2); A-law the 13-bit one (sample >> 3) with the even-bit
inversion (XOR 0x55) of the G.711 line format.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt

Codec = Literal["PCMU", "PCMA"]

#: The encoded byte of a zero sample: what a silent frame is filled with.
SILENCE: Final[dict[str, int]] = {"PCMU": 0xFF, "PCMA": 0xD5}

_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    # Index = uint16 bit pattern of the sample, so entry i encodes int16(i).
    linear = np.arange(65536, dtype=np.int32)
    linear = np.where(linear >= 32768, linear - 65536, linear) >> 2
    negative = linear < 0
    magnitude = np.minimum(np.where(negative, -linear, linear), 8159) + (0x84 >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left").astype(np.int32)
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    # The clipped maximum (8159 + 33) lands past the last segment: it takes the largest code.
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    # µ-law transmits every bit inverted; the sign bit is 1 for positive values after inversion.
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    linear = np.arange(65536, dtype=np.int32)
    linear = np.where(linear >= 32768, linear - 65536, linear) >> 3
    negative = linear < 0
    # One's-complement magnitude for negatives: A-law has no zero code, -1 and 0 map symmetrically.
    magnitude = np.where(negative, -linear - 1, linear)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude, side="left").astype(np.int32)
    mantissa = np.where(segment < 2, magnitude >> 1, magnitude >> np.maximum(segment, 1)) & 0x0F
    code = (segment << 4) | mantissa
    return (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + 0x84) << exponent
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    magnitude = ((code & 0x0F) << 4) + 8
    # Segment 0 and 1 share a step size; from segment 1 on a fixed offset of 0x100 is present.
    magnitude = np.where(exponent == 0, magnitude, (magnitude + 0x100) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_ENCODE: Final = _build_ulaw_encode()
ALAW_ENCODE: Final = _build_alaw_encode()
ULAW_DECODE: Final = _build_ulaw_decode()
ALAW_DECODE: Final = _build_alaw_decode()
for _table in (ULAW_ENCODE, ALAW_ENCODE, ULAW_DECODE, ALAW_DECODE):
    _table.flags.writeable = False

# Stacked tables: row offset 0 = µ-law, 256 / 65536 = A-law.
_DECODE_BOTH: Final = np.concatenate([ULAW_DECODE, ALAW_DECODE])
_ENCODE_BOTH: Final = np.concatenate([ULAW_ENCODE, ALAW_ENCODE])


def _is_alaw(codec: str) -> bool:
    if codec == "PCMA":
        return True
    if codec == "PCMU":
        return False
    raise ValueError(f"unknown G.711 codec {codec!r}: expected 'PCMU' or 'PCMA'")


def decode(codec: str, payload: bytes) -> npt.NDArray[np.int16]:
    """Decode one payload of G.711 bytes to int16 samples (one sample per byte)."""
    table = ALAW_DECODE if _is_alaw(codec) else ULAW_DECODE
    return np.take(table, np.frombuffer(payload, dtype=np.uint8))


def encode(codec: str, samples: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 samples to G.711 bytes (one byte per sample)."""
    table = ALAW_ENCODE if _is_alaw(codec) else ULAW_ENCODE
    pcm = np.ascontiguousarray(samples, dtype=np.int16)
    return np.take(table, pcm.view(np.uint16)).tobytes()


def decode_rows(encoded: npt.NDArray[np.uint8], alaw: npt.NDArray[np.bool_]) -> npt.NDArray[np.int16]:
    """Decode a ``[M, N]`` matrix of G.711 bytes; row ``i`` is A-law where ``alaw[i]``, else µ-law."""
    if encoded.ndim != 2 or alaw.shape != (encoded.shape[0],):
        raise ValueError(f"expected encoded [M, N] and alaw [M], got {encoded.shape} and {alaw.shape}")
    # Narrow index types and np.take: about 1.5x faster than fancy indexing with intp.
    index = encoded.astype(np.uint16)
    index |= alaw.astype(np.uint16)[:, None] << 8
    return np.take(_DECODE_BOTH, index)


def encode_rows(samples: npt.NDArray[np.int16], alaw: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """Encode a ``[M, N]`` int16 matrix; row ``i`` is encoded as A-law where ``alaw[i]``, else µ-law."""
    if samples.ndim != 2 or alaw.shape != (samples.shape[0],):
        raise ValueError(f"expected samples [M, N] and alaw [M], got {samples.shape} and {alaw.shape}")
    index = np.ascontiguousarray(samples, dtype=np.int16).view(np.uint16).astype(np.uint32)
    index |= alaw.astype(np.uint32)[:, None] << 16
    return np.take(_ENCODE_BOTH, index)
