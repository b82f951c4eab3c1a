"""What SIGHUP picks up (the README says it): each replacement worker is a new process that reads `.env` again, but
its environment is the supervisor's, fixed when `serve` started — and a variable set there wins over `.env`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.served import serving, start_embedded


def pin_prompt(base: str) -> dict[str, Any]:
    """The answer webhook's `input` action: its timeOut is PIN_INPUT_TIMEOUT_S, its eventUrl PUBLIC_BASE_URL's."""
    with urllib.request.urlopen(f"{base}/webhooks/answer?uuid=u&from=1&to=2", timeout=10) as response:
        ncco = json.loads(response.read())
    [found] = [action for action in ncco if action["action"] == "input"]
    return {"timeOut": found["dtmf"]["timeOut"], "eventUrl": found["eventUrl"][0]}


def test_sighup_rereads_dotenv_but_the_environment_still_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"  # serve runs in tmp_path
    dotenv.write_text("DIALBRIDGE_PIN_INPUT_TIMEOUT_S=5\n")
    environment = {"DIALBRIDGE_PUBLIC_BASE_URL": "https://environment.example"}
    with serving(tmp_path, "--workers", "2", **environment) as served:
        assert pin_prompt(served.base) == {"timeOut": 5, "eventUrl": "https://environment.example/webhooks/input"}
        old = set(served.workers())
        dotenv.write_text("DIALBRIDGE_PIN_INPUT_TIMEOUT_S=9\nDIALBRIDGE_PUBLIC_BASE_URL=https://dotenv.example\n")
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (set(served.workers()) & old or len(served.workers()) < 2):
            time.sleep(0.1)
        served.wait_healthy()
        seen = [pin_prompt(served.base) for _ in range(6)]  # whichever worker answers
    assert seen == [{"timeOut": 9, "eventUrl": "https://environment.example/webhooks/input"}] * 6


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_the_one_process_server_stops_it_gracefully_with_its_voice_engine(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """What `make run` starts, told to stop by `kill` (its process alone, as a container runtime or `kill PID` does)
    or to reload by SIGHUP, which one process cannot: it stops gracefully, and the voice engine and the gateway stop
    with it (left behind, they held their ports and the next start failed)."""
    served = start_embedded(tmp_path)
    try:
        served.wait_healthy()
        beside = served.workers()  # the voice engine and the gateway: the processes beside the web server
        assert len(beside) == 2, beside
        served.process.send_signal(signum)
        assert served.process.wait(timeout=30) == 0
        for pid in beside:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not zombie(pid):
                time.sleep(0.1)
            assert not Path(f"/proc/{pid}").exists() or zombie(pid), "a process beside the server outlived it"
    finally:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.process.pid, signal.SIGKILL)  # whatever of the group is left
    printed = served.log.read_text() if served.log else ""
    assert "Finished server process" in printed  # uvicorn's graceful shutdown ran to its end
    assert "Traceback" not in printed and "ERROR" not in printed, printed


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
