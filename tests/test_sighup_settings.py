"""What SIGHUP picks up (the README says it): each replacement worker is a new process that reads `.env` again, but
its environment is the supervisor's, fixed when `serve` started — and a variable set there wins over `.env`."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.served import serving


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
