"""The calls an engine holds, and their final events until the application has them, in a file: so that the engine
started after a crash or a stop can end them.

Why: an engine that dies (`kill -9`, a crash, the OOM killer) sends no final event for its calls, so the application
kept them "in_conference" for good (in its database and `/metrics`), though nobody was on the line any more. `serve`
starts a new engine within seconds; that one reads what the last left here and sends each call it finds its final
event: `completed` if it had been answered, `failed` if not, with the reason `engine_restarted`.

A final event is only sent once the application has acknowledged it (a 2xx): the engine retries it with back-off
(`FinalEventRetry`), and meanwhile the journal holds it, so an application that was down or restarting when the call
ended gets it later, from this engine or, after a stop or a crash, from the next one. Bounded: at most
`MAX_UNDELIVERED` wait (the oldest is given up beyond that, with a warning), each for at most
`FinalEventRetry.patience_s`.

The file holds one JSON line per call's first event and per answer and end (not per tick: nothing on the media
path writes here), flushed to the page cache at once, so a crashed process loses nothing (a machine that loses power
may lose the last lines). It is started afresh whenever no call is live, and rewritten with the live calls alone
once it has grown well past them, so it stays small whatever the load.

One engine owns a journal at a time: it holds an exclusive lock on it (`flock`, released by the kernel when the
process dies, however it dies). Two engines given one VOICE_DIR and one SIP port (two network namespaces or
containers on one disk, say) would otherwise each take the other's live calls for a crashed engine's and end them.
The second runs without a journal and says so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dialbridge.conference.webhooks import FINAL_STATUSES
from dialbridge.engine.calls.payloads import CallInfo, call_named_by, event_payload, parties

log = logging.getLogger(__name__)

REASON = "engine_restarted"
COMPACT_AFTER_LINES = 1000  # ...more lines than three per call held: rewrite the file with those calls alone
MAX_UNDELIVERED = 10_000  # final events waiting for the application: hours of calls ending, a few MB of file


@dataclass(frozen=True, slots=True)
class FinalEventRetry:
    """When to try a final event again: doubling from `first_s` to `most_s` apart, for `patience_s` in all (a day: an
    application down over a night still learns how its calls ended)."""

    first_s: float = 1.0
    most_s: float = 60.0
    patience_s: float = 24 * 3600.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1, 2, ...)."""
        return min(self.most_s, self.first_s * 2.0 ** min(failures - 1, 32))


@dataclass(slots=True)
class _LiveCall:
    info: CallInfo
    answered_at: float | None = None


class LiveCallJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._live: dict[str, _LiveCall] = {}
        self._undelivered: dict[str, dict[str, Any]] = {}  # final events not yet acknowledged, oldest first
        self._lines = 0
        self._file: IO[str] | None = None
        self._lock: int | None = None  # the descriptor holding the journal's lock: this engine owns it

    def recover(self, now: float) -> list[dict[str, Any]]:
        """The final events a previous engine left to send: those it had not had acknowledged, then one for each
        call it left live; kept here until `delivered`. None (and no journal) if another live engine owns this one."""
        if not self._own():
            return []
        left, undelivered = self._read()
        self._live.clear()
        self._undelivered = undelivered
        for call in left.values():
            self._undelivered[call.info.uuid] = (
                event_payload("completed", call.info, now, start_time=call.answered_at, end_time=now, reason=REASON)
                if call.answered_at is not None
                else event_payload("failed", call.info, now, reason=REASON)
            )
        self._bound_undelivered()
        self._rewrite()
        return list(self._undelivered.values())

    def delivered(self, uuid: str) -> None:
        """The application acknowledged call `uuid`'s final event (or refused it for good): forget the call."""
        if self._undelivered.pop(uuid, None) is not None and self._lock is not None:
            self._write({"end": uuid})

    @property
    def undelivered(self) -> int:
        return len(self._undelivered)

    def observe(self, payload: Mapping[str, Any], now: float) -> None:
        """Note an event this engine is sending for one of its calls."""
        uuid = str(payload.get("uuid", ""))
        status = payload.get("status")
        if self._lock is None or not uuid or not isinstance(status, str):
            return
        if status in FINAL_STATUSES:
            self._live.pop(uuid, None)
            self._undelivered[uuid] = dict(payload)
            self._bound_undelivered()
            self._write({"final": self._undelivered[uuid]})
        elif uuid not in self._live:
            info = call_named_by(payload)
            self._live[uuid] = _LiveCall(info)
            self._write({"call": parties(info)})
        if status == "answered" and uuid in self._live:
            self._live[uuid].answered_at = now
            self._write({"answered": uuid, "at": now})

    def close(self) -> None:
        self._close_file()
        if self._lock is not None:
            os.close(self._lock)  # and with it the lock
            self._lock = None

    def _own(self) -> bool:
        """Take the journal's lock; False (with a warning naming the fix) if another engine holds it."""
        lock_path = self.path.with_suffix(".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot open the live calls' journal lock %s: %s", lock_path, exc)
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            log.warning(
                "another voice engine owns the live calls' journal %s: this one keeps none, so its calls cannot be "
                "ended after a crash; give each engine a DIALBRIDGE_VOICE_DIR of its own",
                self.path,
            )
            return False
        self._lock = descriptor
        return True

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _bound_undelivered(self) -> None:
        while len(self._undelivered) > MAX_UNDELIVERED:
            uuid = next(iter(self._undelivered))
            del self._undelivered[uuid]
            log.warning(
                "%d final events wait for the application: giving up call %s's, the oldest", MAX_UNDELIVERED, uuid
            )

    def _write(self, entry: dict[str, Any]) -> None:
        if not self._live and not self._undelivered:
            self._rewrite()  # nothing held: start afresh rather than grow
            return
        if self._lines > COMPACT_AFTER_LINES and self._lines > 3 * (len(self._live) + len(self._undelivered)):
            self._rewrite()
            return
        try:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()
            self._lines += 1
        except OSError as exc:  # the calls go on; only their recovery after a crash is lost
            log.warning("cannot write the live calls' journal %s: %s", self.path, exc)

    def _rewrite(self) -> None:
        """The file holding the live calls and the undelivered final events alone (none: empty)."""
        self._close_file()
        lines: list[dict[str, Any]] = []
        for call in self._live.values():
            lines.append({"call": parties(call.info)})
            if call.answered_at is not None:
                lines.append({"answered": call.info.uuid, "at": call.answered_at})
        lines += [{"final": payload} for payload in self._undelivered.values()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
            temporary.replace(self.path)
            self._lines = len(lines)
        except OSError as exc:
            log.warning("cannot write the live calls' journal %s: %s", self.path, exc)

    def _read(self) -> tuple[dict[str, _LiveCall], dict[str, dict[str, Any]]]:
        """(the calls left live, the final events left unacknowledged) as the file tells them."""
        live: dict[str, _LiveCall] = {}
        undelivered: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return live, undelivered
        except OSError as exc:
            log.warning("cannot read the live calls' journal %s: %s", self.path, exc)
            return live, undelivered
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by the crash
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("call"), dict):
                info = call_named_by(entry["call"])
                live[info.uuid] = _LiveCall(info)
            elif "answered" in entry and str(entry["answered"]) in live and isinstance(entry.get("at"), int | float):
                live[str(entry["answered"])].answered_at = float(entry["at"])
            elif isinstance(entry.get("final"), dict) and entry["final"].get("status") in FINAL_STATUSES:
                uuid = str(entry["final"].get("uuid", ""))
                if uuid:
                    live.pop(uuid, None)
                    undelivered[uuid] = entry["final"]
            elif "end" in entry:
                live.pop(str(entry["end"]), None)
                undelivered.pop(str(entry["end"]), None)
        return live, undelivered
