"""Bounds on SIP's TCP connections (sans-I/O): which may be accepted, and which to close at a given time.

A TCP connection costs the engine a file descriptor until someone closes it, and nothing in SIP makes a peer close
one: without bounds, one source holding thousands of idle or half-sent connections exhausts the engine's
descriptors (UDP callers then get 503). There is no SIP way to refuse a connection before its first message, so
one over a limit is accepted and closed at once. The shell asks `admit` on accept, reports what each connection
receives, and closes what `to_close` names (checked about once a second).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from dialbridge.rate import SourceRate

Address = tuple[str, int]
REFUSAL_LOG_INTERVAL_S = 60.0  # refusals are logged once per source per this interval, not once per connection


@dataclass(frozen=True, slots=True)
class TcpConnectionLimits:
    per_source: int = 32  # open connections from one IP address
    total: int = 1024  # open connections from everyone
    idle_s: float = 60.0  # nothing received (RFC 5626 CRLF keep-alives count) and no call or transaction on it
    incomplete_message_s: float = 10.0  # a message begun and not completed within this time: a stalled sender


@dataclass(frozen=True, slots=True)
class Admission:
    accepted: bool
    limit: str = ""  # which limit refused it: "per-source" or "total"
    log: bool = False  # the source's first refusal in REFUSAL_LOG_INTERVAL_S: worth a log line


@dataclass(slots=True)
class _Connection:
    last_active: float
    incomplete_since: float | None = None  # when the message now partly received began


class SipTcpConnections:
    """The open TCP connections, keyed by the peer's address, with the time of their last input."""

    def __init__(self, limits: TcpConnectionLimits | None = None) -> None:
        self.limits = limits or TcpConnectionLimits()
        self._open: dict[Address, _Connection] = {}
        self._per_source: dict[str, int] = {}
        self._refusal_logs: SourceRate[str] = SourceRate(1, REFUSAL_LOG_INTERVAL_S)  # one line a source a minute

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, peer: Address, now: float) -> Admission:
        """A connection from `peer` was accepted by the kernel: keep it (tracked from now on) or close it at once."""
        source = peer[0]
        if self._per_source.get(source, 0) >= self.limits.per_source:
            return self._refuse(source, "per-source", now)
        if len(self._open) >= self.limits.total:
            return self._refuse(source, "total", now)
        self._open[peer] = _Connection(last_active=now)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return Admission(accepted=True)

    def _refuse(self, source: str, limit: str, now: float) -> Admission:
        return Admission(accepted=False, limit=limit, log=self._refusal_logs.allow(source, now))

    def received(self, peer: Address, now: float, *, incomplete: bool) -> None:
        """Bytes arrived from `peer` (messages or keep-alives); `incomplete`: a message is now partly buffered."""
        connection = self._open.get(peer)
        if connection is None:
            return
        connection.last_active = now
        if not incomplete:
            connection.incomplete_since = None
        elif connection.incomplete_since is None:
            connection.incomplete_since = now

    def closed(self, peer: Address) -> None:
        if self._open.pop(peer, None) is None:
            return
        source = peer[0]
        remaining = self._per_source[source] - 1
        if remaining:
            self._per_source[source] = remaining
        else:
            del self._per_source[source]

    def to_close(self, now: float, in_use: Container[Address]) -> list[Address]:
        """The connections to close at `now`: a message stalled past its timeout, or idle past the idle timeout and
        not `in_use` (carrying a call or a transaction, whose next request may come after a long silence). They stay
        tracked until `closed`, so one still open at the next check is named again."""
        limits = self.limits
        names: list[Address] = []
        for peer, connection in self._open.items():
            if (
                connection.incomplete_since is not None
                and now - connection.incomplete_since >= limits.incomplete_message_s
            ):
                names.append(peer)
            elif peer in in_use:
                connection.last_active = now  # its idle time starts when its last call or transaction ends
            elif now - connection.last_active >= limits.idle_s:
                names.append(peer)
        return names
