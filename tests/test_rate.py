"""SourceRate: a sliding window per source, bounded in memory whatever the flood."""

from __future__ import annotations

import pytest

from dialbridge.rate import SourceRate


def test_each_source_gets_its_limit_per_window_and_is_told_when_to_come_back() -> None:
    rate: SourceRate[str] = SourceRate(limit=3, window_s=60)
    assert [rate.allow("a", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert rate.allow("b", 3)  # another source is not held to a's count
    assert rate.retry_after("a", 3) == pytest.approx(57)
    assert not rate.allow("a", 59.9)
    assert rate.allow("a", 60.1)  # the first event has left the window
    assert rate.retry_after("b", 5) == 0


def test_a_flood_of_sources_keeps_memory_bounded_and_never_locks_a_new_source_out() -> None:
    rate: SourceRate[int] = SourceRate(limit=2, window_s=60, max_sources=100)
    for spoofed in range(10_000):
        rate.allow(spoofed, 1.0)
    assert rate.sources == 100
    assert rate.allow(-1, 1.0)  # a real caller after the flood


def test_the_least_recently_heard_source_is_forgotten_first() -> None:
    rate: SourceRate[str] = SourceRate(limit=1, window_s=60, max_sources=2)
    assert rate.allow("busy", 0) and rate.allow("other", 1)
    assert not rate.allow("busy", 2)  # refused, but heard from: now the most recent
    assert rate.allow("new", 3)  # "other" goes, not "busy"
    assert not rate.allow("busy", 4)
    assert rate.allow("other", 5)  # forgotten, so counted afresh


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SourceRate(limit=0, window_s=60)


def test_a_source_silent_for_a_window_is_forgotten_so_a_flood_leaves_nothing_behind() -> None:
    rate: SourceRate[int] = SourceRate(limit=5, window_s=1.0)
    for spoofed in range(1000):
        rate.allow(spoofed, 10.0)
    assert rate.allow(-1, 10.5)
    rate.forget_idle(10.9)
    assert rate.sources == 1001  # nobody has been silent for a whole window yet
    rate.forget_idle(11.0)
    assert rate.sources == 1  # the flood's sources are gone; -1 was heard from half a second later
    rate.forget_idle(11.5)
    assert rate.sources == 0
    assert rate.allow(0, 11.6)  # counted afresh
