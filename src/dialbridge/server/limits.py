"""What one client may hold of the server: the size of a request's head, the time it may take to arrive, and a
share of the process's file descriptors.

Without these, a request line or header of any length was read into memory (one socket sending 200 MB of one
header took the server from 96 MB to 486 MB), and a socket that sent half a request stayed open for ever: at the
common limit of 1,024 descriptors, a few hundred such sockets lock everyone else out. Here a request must arrive
whole within `request_timeout_s` of its first byte, and when the process holds as many connections as it may,
a new one displaces the connection that has kept the server waiting longest (a slow request, or a keep-alive
connection sitting idle), so a slow client cannot crowd out the others: it only loses its own oldest socket.

`ClientWaits` is the bookkeeping, free of I/O: the protocol tells it when a connection starts and stops
waiting on its client, passing the time, and asks it which connections have waited too long.
"""

from __future__ import annotations

import resource
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

# The request target and the whole head (request line and headers). Browsers and Vonage send a few hundred bytes;
# 8 KiB for a URL is what nginx and most proxies allow; 32 KiB of headers leaves room for large cookies.
MAX_TARGET: Final = 8 * 1024
MAX_HEAD: Final = 32 * 1024
MAX_HEADERS: Final = 100

# Descriptors the process keeps for itself beyond client connections: its database, listening sockets, logs,
# the supervisor's channel — a quarter of the limit, and at least this many.
RESERVED_DESCRIPTORS: Final = 64


def descriptor_limit() -> int:
    """The process's descriptor limit, first raised to its hard limit where that is higher (as Go's runtime
    does): the soft limit of 1,024 is a relic of select(), which an asyncio server on epoll does not use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(configured: int | None, limit: int) -> int:
    """How many client connections a process holds at most: what is configured, and never so many that accepting
    one more would fail for want of a descriptor."""
    available = max(1, limit - max(RESERVED_DESCRIPTORS, limit // 4))
    return available if configured is None else min(configured, available)


@dataclass(frozen=True)
class ServerLimits:
    request_timeout_s: float
    idle_timeout_s: float
    max_connections: int


Connection = TypeVar("Connection", bound=Hashable)


class ClientWaits(Generic[Connection]):
    """Which connections wait on their client, in the order they began to: idle ones (between requests) and
    receiving ones (a request begun, not yet whole). A connection whose request is being answered waits on the
    server and is in neither. Every operation is O(1); dicts keep insertion order, so the oldest come first."""

    def __init__(self) -> None:
        self._idle: dict[Connection, float] = {}
        self._receiving: dict[Connection, float] = {}

    def __len__(self) -> int:
        return len(self._idle) + len(self._receiving)

    def idle(self, connection: Connection, now: float) -> None:
        self._receiving.pop(connection, None)
        self._idle.pop(connection, None)
        self._idle[connection] = now

    def receiving(self, connection: Connection, now: float) -> None:
        self._idle.pop(connection, None)
        self._receiving.pop(connection, None)
        self._receiving[connection] = now

    def busy(self, connection: Connection) -> None:
        """The connection's request has arrived: it waits on the server now."""
        self._receiving.pop(connection, None)
        self._idle.pop(connection, None)

    gone = busy

    def longest_waiting(self, besides: Connection | None = None) -> Connection | None:
        """The connection that has kept the server waiting longest (the one to let go when the process is full)."""
        oldest: tuple[float, Connection] | None = None
        for waits in (self._idle, self._receiving):
            for connection, since in waits.items():
                if connection == besides:
                    continue
                if oldest is None or since < oldest[0]:
                    oldest = (since, connection)
                break
        return None if oldest is None else oldest[1]

    def overdue(self, now: float, limits: ServerLimits) -> tuple[list[Connection], list[Connection]]:
        """The receiving connections whose request has taken longer than allowed, and the idle ones idle too long."""
        return (
            list(_older_than(self._receiving, now - limits.request_timeout_s)),
            list(_older_than(self._idle, now - limits.idle_timeout_s)),
        )


def _older_than(waits: dict[Connection, float], cutoff: float) -> Iterator[Connection]:
    for connection, since in waits.items():
        if since > cutoff:
            return
        yield connection
