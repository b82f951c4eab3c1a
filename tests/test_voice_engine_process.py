"""`serve` keeps its voice engine running: a process that dies is started again (later each time it keeps dying
young), and one that is stopped is not. Real processes stand in for the engine (a Python one-liner)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dialbridge.server.supervised import SupervisedProcess
from tests.helpers import wait_until


def engine_counting_starts(tmp_path: Path, body: str = "import time; time.sleep(60)") -> list[str]:
    starts = tmp_path / "starts"
    return [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('x'); {body}"]


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text()) if path.exists() else 0


def test_an_engine_that_is_killed_is_started_again_and_the_log_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SupervisedProcess(engine_counting_starts(tmp_path), first_delay_s=0.1)
    engine.start()
    try:
        wait_until(lambda: starts(tmp_path) == 1, 10, "start 1")
        first = engine.pid
        assert first is not None
        with caplog.at_level(logging.ERROR, logger="dialbridge"):
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: starts(tmp_path) == 2, 10, "start 2")
        assert engine.pid != first and engine.restarts == 1
        assert "the voice engine stopped (killed by SIGKILL)" in caplog.text
        assert "starting it again" in caplog.text
    finally:
        engine.stop()


def test_an_engine_that_keeps_dying_young_is_started_again_later_each_time(tmp_path: Path) -> None:
    engine = SupervisedProcess(
        engine_counting_starts(tmp_path, "raise SystemExit(1)"), first_delay_s=0.2, stop_notice_s=0.0
    )
    engine.start()
    try:
        time.sleep(1.7)  # starts at 0, 0.2, 0.6 (+0.4), 1.4 (+0.8): four; without the back-off, about eight
    finally:
        engine.stop()
    assert 3 <= starts(tmp_path) <= 5


def test_a_stopped_engine_gets_sigterm_and_is_not_started_again(tmp_path: Path) -> None:
    engine = SupervisedProcess(
        engine_counting_starts(
            tmp_path,
            "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)",
        ),
        first_delay_s=0.05,
    )
    engine.start()
    wait_until(lambda: starts(tmp_path) == 1, 10, "start 1")
    time.sleep(0.2)  # its SIGTERM handler is in place
    stopped_at = time.monotonic()
    engine.stop(grace_s=5)
    assert time.monotonic() - stopped_at < 2, "the engine was killed after the grace, not stopped by SIGTERM"
    time.sleep(0.3)
    assert starts(tmp_path) == 1


def test_an_engine_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    engine = SupervisedProcess(
        engine_counting_starts(
            tmp_path, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        ),
    )
    engine.start()
    wait_until(lambda: starts(tmp_path) == 1, 10, "start 1")
    time.sleep(0.2)
    stopped_at = time.monotonic()
    engine.stop(grace_s=0.5)
    assert 0.4 < time.monotonic() - stopped_at < 3
    time.sleep(0.3)
    assert starts(tmp_path) == 1
