"""The engine's stats line (SIGUSR1), which bench/voice.py reads: the clock, the media, and where the time went."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.engine.stack import NccoApp, voice_engine
from tests.engine.test_voice_sip_edges import CONFERENCE, Peer, RawCall
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def stats_line(log: Path) -> dict[str, object] | None:
    lines = [line for line in log.read_text().splitlines() if "voice engine stats " in line]
    return json.loads(lines[-1].split("voice engine stats ", 1)[1]) if lines else None


def test_the_stats_line_splits_the_engines_time_by_stage_within_its_cpu_time(tmp_path: Path) -> None:
    with NccoApp(CONFERENCE) as app, voice_engine(tmp_path, **app.env) as engine:
        peer = Peer(engine.sip_port)
        call = RawCall.place(peer)
        call.send_rtp(100)  # 2 s of audio in; the conference's audio out
        os.kill(engine.process.pid, signal.SIGUSR1)
        wait_until(lambda: stats_line(engine.log) is not None, 5, "the stats line")
        stats = stats_line(engine.log)
        assert stats is not None
        call.bye()
        peer.close()
        fields = (Path(f"/proc/{engine.process.pid}/stat").read_text().rsplit(")", 1)[1]).split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    stages = stats["stages_s"]
    assert isinstance(stages, dict) and set(stages) == {"receive", "timers", "media", "send", "sip"}
    assert all(seconds > 0 for seconds in stages.values()), stages
    assert sum(stages.values()) < cpu_s + 0.05, (stages, cpu_s)  # a split of the process's own time, not more
