"""The media layer of the embedded engine: 8 kHz mono int16 audio in 20 ms frames of 160 samples.

G.711 coding (``g711``), in-band DTMF (``dtmf``), tones (``tones``), text-to-speech (``tts``), audio
files (``audiofile``) and the conference mixer (``mixer``). Everything here is pure computation on
numpy arrays: no sockets, no event loop, no clock.
"""

from __future__ import annotations

FRAME_SAMPLES = 160
SAMPLE_RATE = 8000
