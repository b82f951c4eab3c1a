"""`dialbridge serve` on the embedded backend keeps its voice engine alive and stops it before itself: a SIGTERM
with callers in the conference leaves every call ended in the database (their final events reached the web server
before it stopped), and an engine that dies is started again, with the reason in the log and `/healthz` saying
"degraded" meanwhile. Real processes, a real SIPp caller."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.engine import sipp
from tests.engine.stack import VoiceStack, free_port, options_ping, voice_stack
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]


def call_statuses(database: Path) -> list[str]:
    with sqlite3.connect(database, timeout=5) as db:
        return [row[0] for row in db.execute("SELECT status FROM calls")]


def engine_pid(stack: VoiceStack) -> int:
    """`serve`'s voice engine child (a restarted one is the child of the thread that started it)."""
    tasks = Path(f"/proc/{stack.process.pid}/task")
    children = [child for task in tasks.iterdir() for child in (task / "children").read_text().split()]
    (pid,) = [int(child) for child in children if b"voice" in Path(f"/proc/{child}/cmdline").read_bytes()]
    return pid


def caller_in_the_conference(stack: VoiceStack, folder: Path) -> sipp.SippRun:
    """A SIPp caller that keys a new room's PIN (SIP INFO), is put in its conference and waits to be hung up on."""
    pin = stack.new_room("standup")
    caller = sipp.start(
        folder,
        sipp.scenario(
            sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(500), sipp.info_digits(pin + "#"),
            sipp.REMOTE_BYE.format(timeout_ms=60000),
        ),
        target=stack.sip_target, sip_port=free_port(), media_port=17000,
    )  # fmt: skip
    wait_until(lambda: call_statuses(stack.database) == ["in_conference"], 30, "the PIN to be taken")
    joined = re.compile(r"call \S+ joined conference \S+ \(0 already in it\)")
    wait_until(lambda: bool(joined.search(stack.log.read_text())), 30, "the engine to put the call in")
    return caller


@pytest.mark.parametrize("to", ["serve", "its process group"])
def test_sigterm_with_a_caller_in_the_conference_ends_the_call_in_the_database(tmp_path: Path, to: str) -> None:
    """To `serve` alone (`kill PID`), or to the whole group (Ctrl+C in a terminal, systemd's default)."""
    with voice_stack(tmp_path) as stack:
        caller = caller_in_the_conference(stack, tmp_path / "caller")
        if to == "serve":
            stack.process.send_signal(signal.SIGTERM)
        else:
            os.killpg(stack.process.pid, signal.SIGTERM)
        assert stack.process.wait(timeout=20) == 0, stack.log.read_text()
        assert caller.wait(20) == 0, f"the caller was not hung up on:\n{caller.errors()}"
        assert call_statuses(stack.database) == ["completed"], stack.log.read_text()
        log = stack.log.read_text()
        assert "Traceback" not in log and "ERROR" not in log, log
        # The call's life in the log, a line each: answered, in the room's conference (above), ended and why.
        assert re.search(r"call (\S+) from \+15550001111 to dialin: answered", log), log
        assert re.search(r"call \S+: completed \(engine_shutdown, \d+ s after the answer\)", log), log


def test_a_call_a_dead_engine_held_is_ended_by_the_next_one(tmp_path: Path) -> None:
    """The caller's line is gone with the engine; the new engine reads its journal and ends the call's record."""
    with voice_stack(tmp_path) as stack:
        caller = caller_in_the_conference(stack, tmp_path / "caller")
        os.kill(engine_pid(stack), signal.SIGKILL)
        wait_until(lambda: call_statuses(stack.database) == ["completed"], 30, "the call's record to be ended")
        assert "sending 1 final events a previous voice engine left" in stack.log.read_text()
        caller.process.kill()


def test_a_voice_engine_that_dies_is_started_again(tmp_path: Path) -> None:
    with voice_stack(tmp_path) as stack:
        first = engine_pid(stack)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: stack.get("/healthz")["status"] == "degraded", 5, "/healthz to say degraded")
        wait_until(lambda: stack.get("/healthz")["status"] == "ok" and options_ping(stack.sip_port), 30, "a new engine")
        assert engine_pid(stack) != first
        log = stack.log.read_text()
        assert "the voice engine stopped (killed by SIGKILL)" in log and "starting it again in 1 s" in log, log


def test_dial_outs_an_earlier_run_left_open_are_closed_when_its_gateway_is_gone(tmp_path: Path) -> None:
    """Found trying `make run` by hand: serve stopped while a dial-out rang (its gateway's last report lost), and the
    next serve showed that phone ringing in the room for good (a conference one would block bringing it in again)."""
    from dialbridge.store.database import create_db_engine, migrate
    from dialbridge.store.dial_outs import DialOutStore
    from dialbridge.store.store import Store
    from tests.helpers import run_async
    from tests.served import start_embedded

    engine = create_db_engine(f"sqlite:///{tmp_path}/db.sqlite")  # the served tests' database
    migrate(engine)
    store = Store(engine)

    async def a_room() -> None:
        await store.claim_room("left", "123456", 1.0, 31.0)
        await store.complete_room("left", "session-left")

    run_async(a_room())
    dial_outs = DialOutStore(engine)
    dial_outs.start(dial_out_id="do_ringing", room_id="left", kind="phone", target="+14155550123", now=1.0)
    dial_outs.start(dial_out_id="do_bridge", room_id="left", kind="conference", target="sip:dialin@x", now=1.0)
    dial_outs.mark_live("do_bridge", platform_call_id="gw-1", connection_id="c-1", stream_id=None)
    engine.dispose()

    served = start_embedded(tmp_path)
    try:
        served.wait_healthy()
        with sqlite3.connect(tmp_path / "db.sqlite") as db:
            rows = db.execute("SELECT id, state, progress FROM dial_outs ORDER BY id").fetchall()
        assert rows == [("do_bridge", "failed", "failed"), ("do_ringing", "failed", "failed")]
    finally:
        os.killpg(served.process.pid, signal.SIGTERM)
        served.process.wait(timeout=30)
