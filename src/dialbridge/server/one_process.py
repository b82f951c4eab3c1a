"""`dialbridge serve` with one process: uvicorn's server, stopping what runs beside it before it stops serving."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn

from dialbridge.server.supervised import stop_first_then

# The exit code when the application cannot start: uvicorn's (uvicorn.run exits with it), `serve --workers N`'s too.
STARTUP_FAILURE = 3


class _StopRequested(Exception):
    """SIGTERM or SIGHUP reached a one-process server, which has shut down gracefully."""


class _ServerStoppingOthersFirst(uvicorn.Server):
    """On the first SIGINT/SIGTERM, runs `before_stop` on a thread while requests are still served, then shuts down
    as uvicorn does; a second signal meanwhile shuts down at once. (Should uvicorn stop calling `handle_exit`, what
    runs beside it is stopped after the server instead, as `run_one_process`'s caller does anyway.)"""

    def __init__(self, config: uvicorn.Config, before_stop: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._before_stop = before_stop
        self._stopping_others = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._before_stop is None or self._stopping_others:
            super().handle_exit(sig, frame)
            return
        self._stopping_others = True
        stop_first_then(self._before_stop, lambda: uvicorn.Server.handle_exit(self, sig, None))


def run_one_process(config: uvicorn.Config, before_stop: Callable[[], None] | None = None) -> None:
    """Serve in this process until told to stop, then return, so that `serve` can stop what it started.

    Why return: uvicorn shuts down gracefully on SIGTERM and then raises the signal again under the handler it found,
    which by default killed this process there and then — before `serve` could stop the voice engine, which stayed
    behind holding the SIP port (only signalling the whole process group, as a terminal or systemd does, reached
    it). And one process has no supervisor to start replacements: SIGHUP (`kill -HUP`, or its terminal closing)
    stops it as SIGTERM does, gracefully, instead of Python's default of dying on the spot.
    """

    def stop_requested(_signum: int, _frame: object) -> None:
        raise _StopRequested

    def stop_as_sigterm_does(_signum: int, _frame: object) -> None:
        logging.getLogger("dialbridge").info(
            "SIGHUP: one process has no workers to replace; stopping as on SIGTERM (restart it to reload)"
        )
        signal.raise_signal(signal.SIGTERM)  # uvicorn's own handler while it serves: a graceful shutdown

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop_requested)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, stop_as_sigterm_does)
    server = _ServerStoppingOthersFirst(config, before_stop)
    stop_requested_early = False
    try:
        server.run()
    except (_StopRequested, KeyboardInterrupt):
        stop_requested_early = not server.started
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not server.started and not stop_requested_early:
        raise SystemExit(STARTUP_FAILURE)  # as uvicorn.run does: its log says why the application did not start
