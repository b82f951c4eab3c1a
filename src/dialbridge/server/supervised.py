"""The processes beside the web server on the embedded backend (the voice engine, the gateway): started with it,
restarted when they die, stopped first.

Why restarted: calls are the product's main job, and an engine that died (a crash, the OOM killer, `kill -9`) left
the web server answering `/healthz` with 200 and every phone call timing out, with nothing in the log. Its calls are
lost either way; new ones must be answered again within seconds.

Why stopped first: on shutdown the engine hangs up every call and posts each one's final event to the web server.
Stopped after the web server (as it was), those posts found nothing listening and the calls stayed "in_conference"
in the database and in `/metrics` for good.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("dialbridge")

FIRST_RESTART_DELAY_S = 1.0
LONGEST_RESTART_DELAY_S = 30.0
HEALTHY_RUN_S = 60.0  # an engine that ran this long before dying is restarted after the first delay again
STOP_NOTICE_S = 0.25
STOP_GRACE_S = 5.0  # the engine's own close waits up to 2 s for its last webhooks


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def stop_first_then(before_stop: Callable[[], None], then: Callable[[], None]) -> None:
    """`before_stop()` (stopping the voice engine) on a thread of its own, so that the server keeps answering while
    it runs, then `then()` (the server's own stop), even if it raised. From a signal handler: it returns at once."""

    def in_order() -> None:
        try:
            before_stop()
        finally:
            then()

    threading.Thread(target=in_order, name="dialbridge-stopping", daemon=True).start()


class SupervisedProcess:
    """Runs `command` (the engine, the gateway: `name` says which in the log) and keeps it running until `stop()`;
    thread-safe."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str = "the voice engine",
        first_delay_s: float = FIRST_RESTART_DELAY_S,
        longest_delay_s: float = LONGEST_RESTART_DELAY_S,
        healthy_run_s: float = HEALTHY_RUN_S,
        stop_notice_s: float = STOP_NOTICE_S,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.first_delay_s = first_delay_s
        self.longest_delay_s = longest_delay_s
        self.healthy_run_s = healthy_run_s
        self.stop_notice_s = stop_notice_s
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"dialbridge-watch-{name.split()[-1]}", daemon=True)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with self._lock:
            self._process = subprocess.Popen(self.command)
        self._watcher.start()

    def _watch(self) -> None:
        delay = self.first_delay_s
        while True:
            with self._lock:
                process = self._process
            assert process is not None
            started = time.monotonic()
            returncode = process.wait()
            # SIGTERM to the process group (a terminal's Ctrl+C, systemd) can end the engine a moment before
            # `serve` calls stop(): that is no death to report.
            if self._stopping.wait(self.stop_notice_s):
                return
            ran = time.monotonic() - started
            delay = self.first_delay_s if ran >= self.healthy_run_s else delay
            log.error(
                "%s stopped (%s) after %.0f s; its calls are lost; starting it again in %.0f s",
                self.name,
                _how_it_ended(returncode),
                ran,
                delay,
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = subprocess.Popen(self.command)
                self.restarts += 1
            delay = min(delay * 2, self.longest_delay_s)

    def expect_stop(self) -> None:
        """From now on its end is no death to report or recover from: `stop()` is coming (perhaps after another's)."""
        self._stopping.set()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (the engine hangs up its calls and posts their final events), then SIGKILL after `grace_s`."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
            process.kill()
            process.wait()


def stop_in_order(processes: Sequence[SupervisedProcess]) -> None:
    """Stop `processes` one after the other, each told first that its stop is coming: a signal to the whole process
    group (Ctrl+C, systemd) ends them all at once, and the last one must not take its end for a death to restart
    while it waits for the others' stops."""
    for process in processes:
        process.expect_stop()
    for process in processes:
        process.stop()
