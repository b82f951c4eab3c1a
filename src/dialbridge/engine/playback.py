"""What a call hears that is not the conference: a prompt or a stream, played frame by frame on the engine clock."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME = 160  # samples in 20 ms at 8 kHz


class Playback:
    """One `talk` or `stream`, looped `loop` times (0: until stopped), cut into 20 ms frames.

    The last frame is padded with silence, so a prompt always ends on a tick boundary and `finished` turns true on
    the tick after its last sample was played.
    """

    __slots__ = ("_frames", "_next", "_plays_left", "playback_id")

    def __init__(self, playback_id: int, samples: npt.NDArray[np.int16], loop: int = 1) -> None:
        padded = -len(samples) % FRAME
        audio = np.concatenate([samples.astype(np.int16, copy=False), np.zeros(padded, np.int16)])
        if not len(audio):
            audio = np.zeros(FRAME, np.int16)
        self._frames = audio.reshape(-1, FRAME)
        self._next = 0
        self._plays_left = loop if loop > 0 else -1
        self.playback_id = playback_id

    @property
    def finished(self) -> bool:
        return self._plays_left == 0

    def next_frame(self) -> npt.NDArray[np.int16] | None:
        """The next 20 ms, or None once every loop has been played."""
        if self._plays_left == 0:
            return None
        frame: npt.NDArray[np.int16] = self._frames[self._next]
        self._next += 1
        if self._next == len(self._frames):
            self._next = 0
            if self._plays_left > 0:
                self._plays_left -= 1
        return frame
