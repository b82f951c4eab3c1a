from __future__ import annotations

import random

import pytest

from dialbridge.conference.pins import PinPolicy


@pytest.mark.parametrize("rooms", [0, 1, 9_999, 10_000, 99_999, 1_000_000, 10**7])
def test_pin_space_stays_at_most_one_percent_full(rooms: int) -> None:
    policy = PinPolicy(min_length=6, max_fill=0.01)
    length = policy.length_for(rooms)
    assert length >= 6
    assert (rooms + 1) / 10**length <= 0.01
    # and no longer than needed
    assert length == 6 or (rooms + 1) / 10 ** (length - 1) > 0.01


def test_pins_are_zero_padded_digits_of_the_asked_length() -> None:
    rng = random.Random(7)
    for length in (6, 8, 12):
        for _ in range(200):
            pin = PinPolicy.draw(length, rng.randrange)
            assert len(pin) == length and pin.isdigit()
    assert PinPolicy.draw(6, lambda _n: 42) == "000042"


def test_default_source_is_the_os_csprng() -> None:
    draws = {PinPolicy.draw(8) for _ in range(50)}
    assert len(draws) > 45
