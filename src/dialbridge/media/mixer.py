"""N-1 conference mixing for every conference of the engine in one vectorised step per tick.

Each member owns a row of ``inputs`` and ``outputs`` (``[capacity, 160]`` int16). On a tick the engine
writes every member's decoded frame into its row of ``inputs`` and calls ``mix()``: each row of
``outputs`` is then the sum of the *other* speaking-allowed members of that member's conference, plus
any sound queued for the conference, saturated to int16 (what that member should be sent).

How: per-conference sums in int32, then each member's output is its conference's sum minus its own
input (N-1 by subtraction), clipped. The sums are computed from a plan rebuilt only when membership
changes: members are grouped by conference and conferences by size, so a tick is one gather-and-sum
per distinct conference size (``x[rows].sum(axis=1)``), never a Python loop over members.

Routes (NCCO ``canSpeak``/``canHear``: the legs that may hear a member, the legs a member may hear) make a
conference *routed*: its members' outputs are a 0/1 matrix (who hears whom) times their inputs, plus the
conference's sounds. Only routed conferences pay for that product; the rest stay on the subtraction.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

DEFAULT_HANGOVER_TICKS: Final = 10  # 200 ms: a speaker's short pauses between words do not flicker


@dataclass(frozen=True, slots=True)
class MixResult:
    #: ``[capacity, frame_samples]`` int16, row ``mixer.row(member)`` = what that member hears. The mixer
    #: reuses this buffer: it is valid until the next ``mix()``.
    outputs: npt.NDArray[np.int16]
    #: Members currently speaking (input above the threshold, or within the hangover after it).
    speaking: frozenset[str]
    #: ``(member, now_speaking)`` for each member whose speaking state changed on this tick.
    speaking_changed: list[tuple[str, bool]] = field(default_factory=list)


@dataclass(slots=True)
class _SizeGroup:
    conference_ids: npt.NDArray[np.intp]  # [c]
    rows: npt.NDArray[np.intp]  # [c, size]: the member rows of each of those conferences


@dataclass(slots=True)
class _RoutedConference:
    conference_id: int
    rows: npt.NDArray[np.intp]  # [m]: its members' rows
    hears: npt.NDArray[np.int32]  # [m, m]: hears[i, j] = 1 when member i hears member j


@dataclass(slots=True)
class _Plan:
    groups: list[_SizeGroup]
    routed: list[_RoutedConference]
    conference_of_row: npt.NDArray[np.intp]  # [used]; free rows point at the always-zero extra sum
    muted_rows: npt.NDArray[np.intp]  # rows whose input must not reach anyone
    deaf_rows: npt.NDArray[np.intp]  # rows whose output is silence (earmuffed or free)
    speaking_allowed: npt.NDArray[np.bool_]  # [used]


class ConferenceMixer:
    """All conferences of the engine; see the module docstring for the tick protocol.

    ``inputs`` is cleared by ``mix()``: a member whose frame was not written on a tick contributes
    silence. When the capacity is exhausted it doubles and ``inputs`` becomes a new array, so read the
    attribute on each tick rather than keeping a reference.
    """

    def __init__(
        self,
        *,
        capacity: int = 64,
        frame_samples: int = 160,
        speaking_threshold_dbfs: float = -40.0,
        speaking_hangover_ticks: int = DEFAULT_HANGOVER_TICKS,
    ) -> None:
        if capacity < 1 or frame_samples < 1:
            raise ValueError("capacity and frame_samples must be positive")
        self.frame_samples = frame_samples
        self.inputs: npt.NDArray[np.int16] = np.zeros((capacity, frame_samples), dtype=np.int16)
        self._outputs = np.zeros((capacity, frame_samples), dtype=np.int16)
        # Mean square of a sine at the threshold level (0 dBFS = full-scale sine).
        self._threshold_mean_square = float((32767.0 * 10 ** (speaking_threshold_dbfs / 20)) ** 2 / 2)
        self._hangover_ticks = speaking_hangover_ticks

        self._row_member: list[str | None] = [None] * capacity
        self._conference_id_of_row = np.full(capacity, -1, dtype=np.intp)
        self._can_speak = np.zeros(capacity, dtype=np.bool_)
        self._can_hear = np.zeros(capacity, dtype=np.bool_)
        self._hangover = np.zeros(capacity, dtype=np.int16)
        self._speaking_rows = np.zeros(capacity, dtype=np.bool_)
        self._free_rows: list[int] = list(range(capacity - 1, -1, -1))  # popped from the end: lowest first
        self._used = 0  # every member's row is below this

        self._rows: dict[str, int] = {}
        # member -> (the members who may hear it, the members it may hear); None for "everyone"
        self._routes: dict[str, tuple[frozenset[str] | None, frozenset[str] | None]] = {}
        self._conference_of: dict[str, str] = {}
        self._members: dict[str, dict[str, None]] = {}  # conference -> members in join order
        self._conference_ids: dict[str, int] = {}
        self._free_conference_ids: list[int] = []
        self._conference_id_limit = 0
        self._sounds: dict[str, npt.NDArray[np.int16]] = {}  # conference -> samples still to play
        self._speaking: set[str] = set()
        self._pending_events: list[tuple[str, bool]] = []
        self._plan: _Plan | None = None

    # -- membership ---------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return len(self._row_member)

    def join(
        self,
        member: str,
        conference: str,
        *,
        can_speak: bool = True,
        can_hear: bool = True,
        heard_by: Collection[str] | None = None,
        hears: Collection[str] | None = None,
    ) -> None:
        """Add ``member`` to ``conference`` (created on first join). A member is in one conference at a time.

        ``heard_by``/``hears`` limit whom the member is heard by and whom it hears to those members (None: all);
        members named that are not in the conference (yet) are simply not heard."""
        if member in self._rows:
            raise ValueError(f"member {member!r} is already in conference {self._conference_of[member]!r}")
        if not self._free_rows:
            self._grow()
        row = self._free_rows.pop()
        if conference not in self._conference_ids:
            if self._free_conference_ids:
                conference_id = self._free_conference_ids.pop()
            else:
                conference_id = self._conference_id_limit
                self._conference_id_limit += 1
            self._conference_ids[conference] = conference_id
            self._members[conference] = {}
        self._members[conference][member] = None
        self._rows[member] = row
        if heard_by is not None or hears is not None:
            self._routes[member] = (
                None if heard_by is None else frozenset(heard_by),
                None if hears is None else frozenset(hears),
            )
        self._conference_of[member] = conference
        self._row_member[row] = member
        self._conference_id_of_row[row] = self._conference_ids[conference]
        self._can_speak[row] = can_speak
        self._can_hear[row] = can_hear
        self._hangover[row] = 0
        self._speaking_rows[row] = False
        self.inputs[row] = 0
        self._used = max(self._used, row + 1)
        self._plan = None

    def leave(self, member: str) -> None:
        row = self._rows.pop(member)
        self._routes.pop(member, None)
        conference = self._conference_of.pop(member)
        del self._members[conference][member]
        if not self._members[conference]:
            del self._members[conference]
            self._free_conference_ids.append(self._conference_ids.pop(conference))
            self._sounds.pop(conference, None)
        if member in self._speaking:
            self._speaking.discard(member)
            self._pending_events.append((member, False))
        self._row_member[row] = None
        self._conference_id_of_row[row] = -1
        self._can_speak[row] = self._can_hear[row] = self._speaking_rows[row] = False
        self._hangover[row] = 0
        self.inputs[row] = 0
        self._outputs[row] = 0
        self._free_rows.append(row)
        self._free_rows.sort(reverse=True)
        while self._used and self._row_member[self._used - 1] is None:
            self._used -= 1
        self._plan = None

    def set_can_speak(self, member: str, value: bool) -> None:
        """Mute (False) or unmute: a muted member's input reaches nobody; they still hear the others."""
        self._can_speak[self._rows[member]] = value
        self._plan = None

    def set_can_hear(self, member: str, value: bool) -> None:
        """Earmuff (False) or not: an earmuffed member is sent silence; the others still hear them."""
        self._can_hear[self._rows[member]] = value
        self._plan = None

    def members(self, conference: str) -> list[str]:
        return list(self._members.get(conference, ()))

    def conferences(self) -> list[str]:
        return list(self._members)

    def conference_of(self, member: str) -> str:
        return self._conference_of[member]

    def row(self, member: str) -> int:
        """The member's row in ``inputs`` and in ``MixResult.outputs`` (stable while they are a member)."""
        return self._rows[member]

    def play_to_conference(self, conference: str, samples: npt.NDArray[np.int16]) -> None:
        """Queue ``samples`` for every member of ``conference`` (after anything already queued).

        A conference without members has no one to hear it: the sound is dropped.
        """
        if conference not in self._members or len(samples) == 0:
            return
        pending = self._sounds.get(conference)
        sound = np.asarray(samples, dtype=np.int16)
        self._sounds[conference] = sound.copy() if pending is None else np.concatenate([pending, sound])

    # -- the tick -----------------------------------------------------------------------------------

    def mix(self) -> MixResult:
        plan = self._plan if self._plan is not None else self._build_plan()
        used = self._used
        n = self.frame_samples
        x = self.inputs[:used]
        if len(plan.muted_rows):
            x[plan.muted_rows] = 0

        # One extra, always-zero sum row for the free rows of [0, used).
        sums = np.zeros((self._conference_id_limit + 1, n), dtype=np.int32)
        for group in plan.groups:
            if group.rows.shape[1] == 1:
                sums[group.conference_ids] = x[group.rows[:, 0]]
            else:
                sums[group.conference_ids] = np.take(x, group.rows, axis=0).sum(axis=1, dtype=np.int32)
        if self._sounds:
            self._add_sounds(sums)

        mixed = np.take(sums, plan.conference_of_row, axis=0)
        np.subtract(mixed, x, out=mixed)
        for routed in plan.routed:
            member_inputs = x[routed.rows].astype(np.int32)
            sounds = sums[routed.conference_id] - member_inputs.sum(axis=0)  # what the conference plays to all
            mixed[routed.rows] = routed.hears @ member_inputs + sounds
        outputs = self._outputs
        # Saturate and narrow to int16 in one pass (values are in range once clipped).
        np.clip(mixed, -32768, 32767, out=outputs[:used], casting="unsafe")
        if len(plan.deaf_rows):
            outputs[plan.deaf_rows] = 0

        changed = self._detect_speaking(x, plan.speaking_allowed)
        x[:] = 0
        return MixResult(outputs=outputs, speaking=frozenset(self._speaking), speaking_changed=changed)

    def _add_sounds(self, sums: npt.NDArray[np.int32]) -> None:
        n = self.frame_samples
        for conference, sound in list(self._sounds.items()):
            chunk = sound[:n]
            sums[self._conference_ids[conference], : len(chunk)] += chunk
            if len(sound) > n:
                self._sounds[conference] = sound[n:]
            else:
                del self._sounds[conference]

    def _detect_speaking(self, x: npt.NDArray[np.int16], allowed: npt.NDArray[np.bool_]) -> list[tuple[str, bool]]:
        used = len(x)
        events, self._pending_events = self._pending_events, []
        if used == 0:
            return events
        xf = x.astype(np.float32)
        mean_square = np.einsum("ij,ij->i", xf, xf) / self.frame_samples
        loud = allowed & (mean_square >= self._threshold_mean_square)
        hangover = self._hangover[:used]
        # A muted member stops "speaking" at once; others keep it through the hangover.
        hangover[:] = np.where(loud, self._hangover_ticks, np.where(allowed, np.maximum(hangover - 1, 0), 0))
        now = hangover > 0
        previous = self._speaking_rows[:used]
        for row in np.flatnonzero(now != previous):
            member = self._row_member[row]
            if member is None:
                continue
            if now[row]:
                self._speaking.add(member)
            else:
                self._speaking.discard(member)
            events.append((member, bool(now[row])))
        previous[:] = now
        return events

    # -- bookkeeping --------------------------------------------------------------------------------

    def _build_plan(self) -> _Plan:
        used = self._used
        conference_ids = self._conference_id_of_row[:used]
        in_use = conference_ids >= 0
        rows = np.flatnonzero(in_use)
        order = np.argsort(conference_ids[rows], kind="stable")
        sorted_rows = rows[order]
        sorted_ids = conference_ids[sorted_rows]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if len(rows) else rows
        sizes = np.diff(np.r_[starts, len(rows)])
        groups = []
        for size in np.unique(sizes):
            group_starts = starts[sizes == size]
            member_rows = sorted_rows[group_starts[:, None] + np.arange(size)]
            groups.append(_SizeGroup(conference_ids=sorted_ids[group_starts], rows=member_rows))
        speaking_allowed = in_use & self._can_speak[:used]
        plan = _Plan(
            groups=groups,
            routed=self._routed_conferences(),
            conference_of_row=np.where(in_use, conference_ids, self._conference_id_limit),
            muted_rows=np.flatnonzero(in_use & ~self._can_speak[:used]),
            deaf_rows=np.flatnonzero(~(in_use & self._can_hear[:used])),
            speaking_allowed=speaking_allowed,
        )
        self._plan = plan
        return plan

    def _routed_conferences(self) -> list[_RoutedConference]:
        routed = []
        for conference in {self._conference_of[member] for member in self._routes}:
            members = list(self._members[conference])
            hears = np.zeros((len(members), len(members)), dtype=np.int32)
            for i, listener in enumerate(members):
                listener_hears = self._routes.get(listener, (None, None))[1]
                for j, speaker in enumerate(members):
                    speaker_heard_by = self._routes.get(speaker, (None, None))[0]
                    hears[i, j] = (
                        i != j
                        and (listener_hears is None or speaker in listener_hears)
                        and (speaker_heard_by is None or listener in speaker_heard_by)
                    )
            rows = np.array([self._rows[member] for member in members], dtype=np.intp)
            routed.append(_RoutedConference(self._conference_ids[conference], rows, hears))
        return routed

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        self.inputs = _grown(self.inputs, new, 0)
        self._outputs = _grown(self._outputs, new, 0)
        self._conference_id_of_row = _grown(self._conference_id_of_row, new, -1)
        self._can_speak = _grown(self._can_speak, new, False)
        self._can_hear = _grown(self._can_hear, new, False)
        self._hangover = _grown(self._hangover, new, 0)
        self._speaking_rows = _grown(self._speaking_rows, new, False)
        self._row_member.extend([None] * old)
        self._free_rows = list(range(new - 1, old - 1, -1))
        self._plan = None


_Scalar = TypeVar("_Scalar", bound=np.generic)


def _grown(array: npt.NDArray[_Scalar], rows: int, fill: int | bool) -> npt.NDArray[_Scalar]:
    extended: npt.NDArray[_Scalar] = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    extended[: len(array)] = array
    return extended
