"""Conference mixer: each member hears the others of their conference (N-1), never themselves or other rooms."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dialbridge.media.mixer import ConferenceMixer, MixResult
from dialbridge.media.tones import join_tone, leave_tone, silence, tone

FREQS = {"alice": 500.0, "bob": 1000.0, "carol": 1500.0, "dave": 2000.0, "erin": 2500.0}
T = np.arange(160) / 8000


def sine(freq: float, amplitude: float = 3000.0) -> npt.NDArray[np.int16]:
    # 20 ms holds whole periods of each test frequency: no leakage between them in the measurement.
    return np.round(amplitude * np.sin(2 * np.pi * freq * T)).astype(np.int16)


def amplitude_at(frame: npt.NDArray[np.int16], freq: float) -> float:
    return float(2 * abs(np.sum(frame.astype(float) * np.exp(-2j * np.pi * freq * T))) / len(frame))


def heard(mixer: ConferenceMixer, result: MixResult, member: str) -> set[str]:
    """Whose tones (by frequency) are audible, above 1 % of the sent amplitude, in ``member``'s output."""
    frame = result.outputs[mixer.row(member)]
    return {name for name, f in FREQS.items() if amplitude_at(frame, f) > 30.0}


def tick(mixer: ConferenceMixer, talking: dict[str, float] | None = None) -> MixResult:
    for member in talking or {name: 3000.0 for name in FREQS if _is_member(mixer, name)}:
        mixer.inputs[mixer.row(member)] = sine(FREQS[member], (talking or {}).get(member, 3000.0))
    return mixer.mix()


def _is_member(mixer: ConferenceMixer, name: str) -> bool:
    return any(name in mixer.members(c) for c in mixer.conferences())


def test_each_member_hears_the_others_and_not_themselves() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"bob", "carol"}
    assert heard(mixer, result, "bob") == {"alice", "carol"}
    assert heard(mixer, result, "carol") == {"alice", "bob"}
    # Unity gain: each other member arrives at the level they were sent at.
    assert amplitude_at(result.outputs[mixer.row("alice")], FREQS["bob"]) == pytest.approx(3000, abs=2)
    assert result.outputs.dtype == np.int16


def test_sum_saturates_instead_of_wrapping() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    loud = np.full(160, 30000, dtype=np.int16)
    mixer.inputs[mixer.row("alice")] = loud
    mixer.inputs[mixer.row("bob")] = loud
    result = mixer.mix()
    assert (result.outputs[mixer.row("carol")] == 32767).all()
    assert (result.outputs[mixer.row("alice")] == 30000).all()
    mixer.inputs[mixer.row("alice")] = -loud
    mixer.inputs[mixer.row("bob")] = -loud
    assert (mixer.mix().outputs[mixer.row("carol")] == -32768).all()


def test_muted_member_is_not_heard_but_still_hears() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    mixer.set_can_speak("bob", False)
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"carol"}
    assert heard(mixer, result, "carol") == {"alice"}
    assert heard(mixer, result, "bob") == {"alice", "carol"}
    mixer.set_can_speak("bob", True)
    assert heard(mixer, tick(mixer), "alice") == {"bob", "carol"}


def test_muted_at_join() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room")
    mixer.join("bob", "room", can_speak=False)
    result = tick(mixer)
    assert heard(mixer, result, "alice") == set()
    assert heard(mixer, result, "bob") == {"alice"}


def test_earmuffed_member_hears_nothing_but_is_heard() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    mixer.set_can_hear("carol", False)
    mixer.play_to_conference("room", tone(3000.0, 20, -16, fade_ms=0))  # not even conference sounds
    result = tick(mixer)
    assert not result.outputs[mixer.row("carol")].any()
    assert heard(mixer, result, "alice") == {"bob", "carol"}
    mixer.set_can_hear("carol", True)
    assert heard(mixer, tick(mixer), "carol") == {"alice", "bob"}


def test_conferences_are_isolated() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "one")
    mixer.join("bob", "one")
    mixer.join("carol", "two")
    mixer.join("dave", "two")
    mixer.join("erin", "three")
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"bob"}
    assert heard(mixer, result, "carol") == {"dave"}
    assert heard(mixer, result, "erin") == set()
    assert not result.outputs[mixer.row("erin")].any()
    assert sorted(mixer.conferences()) == ["one", "three", "two"]
    assert mixer.members("two") == ["carol", "dave"]


def test_conference_sound_is_heard_by_its_members_only_over_the_next_ticks() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    mixer.join("dave", "elsewhere")
    mixer.join("erin", "elsewhere")
    beep = tone(800.0, 100, -16, fade_ms=0)  # 5 ticks
    mixer.play_to_conference("room", beep)
    beep_amplitude = 32767 * 10 ** (-16 / 20)
    for _ in range(5):
        result = mixer.mix()  # nobody talks: only the beep
        for name in ("alice", "bob", "carol"):
            assert amplitude_at(result.outputs[mixer.row(name)], 800.0) == pytest.approx(beep_amplitude, rel=0.01)
        for name in ("dave", "erin"):
            assert not result.outputs[mixer.row(name)].any()
    assert not mixer.mix().outputs.any()


def test_queued_sounds_play_one_after_the_other() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room")
    mixer.play_to_conference("room", np.full(240, 100, dtype=np.int16))
    mixer.play_to_conference("room", np.full(160, 200, dtype=np.int16))
    row = mixer.row("alice")
    first = mixer.mix().outputs[row].copy()
    second = mixer.mix().outputs[row].copy()
    third = mixer.mix().outputs[row].copy()
    assert (first == 100).all()
    assert (second[:80] == 100).all() and (second[80:] == 200).all()
    assert (third[:80] == 200).all() and (third[80:] == 0).all()
    mixer.play_to_conference("nobody-here", join_tone())  # dropped: no one to hear it
    assert "nobody-here" not in mixer.conferences()


def test_speaking_detection_with_hangover() -> None:
    mixer = ConferenceMixer(speaking_threshold_dbfs=-40.0, speaking_hangover_ticks=3)
    mixer.join("alice", "room")
    mixer.join("bob", "room")
    quiet = sine(500.0, 32767 * 10 ** (-46 / 20))
    loud = sine(500.0, 32767 * 10 ** (-30 / 20))

    mixer.inputs[mixer.row("alice")] = quiet
    result = mixer.mix()
    assert result.speaking == frozenset() and result.speaking_changed == []

    mixer.inputs[mixer.row("alice")] = loud
    result = mixer.mix()
    assert result.speaking == {"alice"} and result.speaking_changed == [("alice", True)]

    # A pause shorter than the hangover does not flicker.
    for _ in range(2):
        result = mixer.mix()
        assert result.speaking == {"alice"} and result.speaking_changed == []
    mixer.inputs[mixer.row("alice")] = loud
    assert mixer.mix().speaking_changed == []

    changes = [mixer.mix().speaking_changed for _ in range(3)]
    assert changes == [[], [], [("alice", False)]]
    assert mixer.mix().speaking == frozenset()


def test_muted_member_is_not_reported_speaking() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room", can_speak=False)
    mixer.inputs[mixer.row("alice")] = sine(500.0, 10000)
    assert mixer.mix().speaking == frozenset()
    mixer.set_can_speak("alice", True)
    mixer.inputs[mixer.row("alice")] = sine(500.0, 10000)
    assert mixer.mix().speaking == {"alice"}
    mixer.set_can_speak("alice", False)  # muting ends it at once, without the hangover
    mixer.inputs[mixer.row("alice")] = sine(500.0, 10000)
    assert mixer.mix().speaking_changed == [("alice", False)]


def test_join_and_leave_tones_rise_and_fall_at_minus_16_dbfs() -> None:
    def pitch(samples: npt.NDArray[np.int16]) -> float:
        spectrum = np.abs(np.fft.rfft(samples.astype(float), 8000))
        return float(np.argmax(spectrum))  # 1 Hz bins

    for sound, rising in ((join_tone(), True), (leave_tone(), False)):
        assert 150 <= len(sound) / 8 <= 250  # ms
        half = len(sound) // 2
        first, second = pitch(sound[:half]), pitch(sound[half:])
        assert (second > first * 1.2) if rising else (first > second * 1.2)
        assert 20 * np.log10(np.abs(sound.astype(float)).max() / 32767) == pytest.approx(-16.0, abs=0.2)
        assert abs(int(sound[0])) < 200 and abs(int(sound[-1])) < 200  # faded: no click
    assert len(silence(60)) == 480 and not silence(60).any()


def test_leaving_while_speaking_reports_the_end() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room")
    mixer.join("bob", "room")
    mixer.inputs[mixer.row("alice")] = sine(500.0, 10000)
    assert mixer.mix().speaking == {"alice"}
    mixer.leave("alice")
    result = mixer.mix()
    assert result.speaking == frozenset()
    assert result.speaking_changed == [("alice", False)]


def test_inputs_not_written_on_a_tick_are_silence() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room")
    mixer.join("bob", "room")
    mixer.inputs[mixer.row("alice")] = sine(500.0)
    assert mixer.mix().outputs[mixer.row("bob")].any()
    assert not mixer.mix().outputs[mixer.row("bob")].any()


def test_capacity_grows_and_every_member_still_mixes() -> None:
    mixer = ConferenceMixer(capacity=2)
    names = [f"m{i}" for i in range(11)]
    for i, name in enumerate(names):
        mixer.join(name, f"c{i % 3}")
    assert mixer.capacity >= 11
    assert len({mixer.row(n) for n in names}) == 11
    for i, name in enumerate(names):
        mixer.inputs[mixer.row(name)] = np.full(160, i + 1, dtype=np.int16)
    outputs = mixer.mix().outputs
    for i, name in enumerate(names):
        others = sum(j + 1 for j in range(11) if j % 3 == i % 3 and j != i)
        assert (outputs[mixer.row(name)] == others).all(), name


def test_leave_and_rejoin_reuses_rows_and_forgets_state() -> None:
    mixer = ConferenceMixer()
    for name in ("alice", "bob", "carol"):
        mixer.join(name, "room")
    bob_row = mixer.row("bob")
    mixer.set_can_speak("bob", False)
    mixer.leave("bob")
    assert mixer.members("room") == ["alice", "carol"]
    with pytest.raises(KeyError):
        mixer.row("bob")
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"carol"}
    assert not result.outputs[bob_row].any()

    mixer.join("dave", "other")
    assert mixer.row("dave") == bob_row  # the free row is reused
    mixer.join("bob", "room")
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"bob", "carol"}  # not muted any more: a new membership
    assert heard(mixer, result, "dave") == set()

    with pytest.raises(ValueError):
        mixer.join("bob", "other")


def test_last_member_leaving_ends_the_conference_and_its_sounds() -> None:
    mixer = ConferenceMixer()
    mixer.join("alice", "room")
    mixer.play_to_conference("room", join_tone())
    mixer.leave("alice")
    assert mixer.conferences() == []
    mixer.join("bob", "room")
    assert not mixer.mix().outputs.any()


def test_many_conferences_of_mixed_sizes_match_a_reference_mix() -> None:
    rng = np.random.default_rng(3)
    mixer = ConferenceMixer(capacity=8)
    membership: dict[str, str] = {}
    heard_by: dict[str, set[str] | None] = {}
    hears: dict[str, set[str] | None] = {}

    def some_members() -> set[str] | None:  # canSpeak/canHear on a fifth of the members, naming up to 6 legs
        return {f"m{int(k)}" for k in rng.integers(0, 120, int(rng.integers(0, 7)))} if rng.random() < 0.2 else None

    for i in range(120):
        member, conference = f"m{i}", f"c{int(rng.integers(0, 25)) ** 2 % 37}"
        heard_by[member], hears[member] = some_members(), some_members()
        mixer.join(
            member,
            conference,
            can_speak=bool(rng.random() > 0.2),
            can_hear=bool(rng.random() > 0.1),
            heard_by=heard_by[member],
            hears=hears[member],
        )
        membership[member] = conference
    for member in list(membership)[::7]:
        mixer.leave(member)
        del membership[member]
    frames = {m: rng.integers(-12000, 12000, 160).astype(np.int16) for m in membership}
    for m, frame in frames.items():
        mixer.inputs[mixer.row(m)] = frame
    speak = {m: bool(mixer._can_speak[mixer.row(m)]) for m in membership}
    hear = {m: bool(mixer._can_hear[mixer.row(m)]) for m in membership}
    outputs = mixer.mix().outputs
    for m, conference in membership.items():
        expected = np.zeros(160, dtype=np.int64)
        if hear[m]:
            for other, other_conference in membership.items():
                listener_hears, speaker_heard_by = hears[m], heard_by[other]
                if (
                    other != m
                    and other_conference == conference
                    and speak[other]
                    and (listener_hears is None or other in listener_hears)
                    and (speaker_heard_by is None or m in speaker_heard_by)
                ):
                    expected += frames[other]
        assert np.array_equal(outputs[mixer.row(m)], np.clip(expected, -32768, 32767)), m


def test_can_speak_and_can_hear_route_who_hears_whom() -> None:
    # NCCO canSpeak: the legs that may hear this one; canHear: the legs this one may hear (Vonage's conversation).
    mixer = ConferenceMixer()
    mixer.join("alice", "room", heard_by=["bob"])
    mixer.join("bob", "room")
    mixer.join("carol", "room", hears=["alice", "bob"])
    mixer.join("dave", "room", heard_by=[])  # heard by nobody
    result = tick(mixer)
    assert heard(mixer, result, "alice") == {"bob", "carol"}
    assert heard(mixer, result, "bob") == {"alice", "carol"}
    assert heard(mixer, result, "carol") == {"bob"}  # alice is for bob's ears only
    assert heard(mixer, result, "dave") == {"bob", "carol"}
    # Someone joining later is routed by the same lists; mute and the conference's sounds still apply.
    mixer.join("erin", "room")
    mixer.set_can_speak("bob", False)
    result = tick(mixer)
    assert heard(mixer, result, "erin") == {"carol"}
    assert heard(mixer, result, "carol") == set()
    assert heard(mixer, result, "alice") == {"carol", "erin"}
    mixer.play_to_conference("room", tone(1000.0, 20))
    result = mixer.mix()
    assert all(amplitude_at(result.outputs[mixer.row(m)], 1000.0) > 1000 for m in mixer.members("room"))
    # Once no routed member is left, the conference is mixed the plain way again.
    for member in ("alice", "carol", "dave"):
        mixer.leave(member)
    mixer.set_can_speak("bob", True)
    result = tick(mixer)
    assert heard(mixer, result, "erin") == {"bob"} and heard(mixer, result, "bob") == {"erin"}
