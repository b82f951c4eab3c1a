"""Where a SIP message named by a peer goes: host names resolved off the event loop, cached, and every send isolated.

A peer names our next hop in its Contact, Record-Route or Via, and a name there is legal (RFC 3261 19.1.1). A UDP
socket cannot send to a name, and a socket of one family cannot send to an address of the other; uvloop raises on
either, so one such message used to take down everything sent after it in the same flush. `SipUdpSender` sends each
datagram on its own: a name is resolved with the loop's `getaddrinfo` (a worker thread, never the loop), its
messages wait for the answer and then go out in order, and a destination that cannot be resolved or reached is
reported (`on_unreachable`) as the transport error RFC 3261 8.1.3.1 / 17.1.4 make it: its transactions fail (503),
a BYE's call ends. Nothing else is affected, and the log gets one line per destination a minute, not a traceback.

RFC 3263 as far as A/AAAA go (4.2, a name with or without a port: the port the URI names, else 5060). Not done:
NAPTR and SRV (a name without a port should be looked up as `_sip._udp.name` first), which need a DNS library.

`NameCache` is the cache, free of I/O (the time comes in): answers for `ttl_s` (getaddrinfo gives no TTL), failures
for a shorter `negative_ttl_s`, at most `max_names` of them, and the messages waiting for a name bounded per name and
in total. At most `max_resolving` names are looked up at once (the others wait their turn), so a flood of names that
never resolve (each lookup can take the resolver's full timeout) cannot hold every thread of the pool, which other
work shares.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from dialbridge.log_text import escaped_for_log
from dialbridge.rate import SourceRate

log = logging.getLogger(__name__)

Address = tuple[str, int]
Waiter = TypeVar("Waiter")
UNREACHABLE_LOG_WINDOW_S: Final = 60.0  # one warning per destination per minute


@dataclass(frozen=True, slots=True)
class ResolverLimits:
    ttl_s: float = 60.0
    negative_ttl_s: float = 5.0
    max_names: int = 1024
    max_resolving: int = 2  # uvloop's lookups share libuv's pool of 4 threads with its file work
    waiting_per_name: int = 32
    waiting_total: int = 1024


@dataclass(frozen=True, slots=True)
class Resolved:
    address: str  # an IP address of the sender's family


@dataclass(frozen=True, slots=True)
class Unresolvable:
    reason: str


Answer = Resolved | Unresolvable


class Wait(enum.Enum):
    START = "start"  # look this name up now, then call `resolved`
    QUEUED = "queued"  # queued behind a lookup of this name, or behind other names' (`resolved` says when to start)
    REFUSED = "refused"  # over a bound: not queued, not cached (the caller treats it as unreachable)


@dataclass(slots=True)
class _Cached:
    answer: Answer
    expires: float


class NameCache(Generic[Waiter]):
    """Answers per name, each until it expires, and the waiters of the names being looked up, in arrival order."""

    def __init__(self, limits: ResolverLimits | None = None) -> None:
        self.limits = limits or ResolverLimits()
        self._answers: dict[str, _Cached] = {}  # insertion order: the oldest answer is forgotten first
        self._waiting: dict[str, list[Waiter]] = {}
        self._waiting_total = 0
        self._looking_up: set[str] = set()  # at most max_resolving of the names waited for

    def answer(self, host: str, now: float) -> Answer | None:
        """The cached answer for `host` if it has not expired, else None (look it up)."""
        cached = self._answers.get(host)
        if cached is None:
            return None
        if cached.expires <= now:
            del self._answers[host]
            return None
        return cached.answer

    def wait(self, host: str, waiter: Waiter) -> Wait:
        """Queue `waiter` for the answer about `host`."""
        limits = self.limits
        if self._waiting_total >= limits.waiting_total:
            return Wait.REFUSED
        queue = self._waiting.get(host)
        if queue is None:
            self._waiting[host] = queue = []
            verdict = self._start_if_free(host)
        elif len(queue) >= limits.waiting_per_name:
            return Wait.REFUSED
        else:
            verdict = Wait.QUEUED
        queue.append(waiter)
        self._waiting_total += 1
        return verdict

    def resolved(self, host: str, answer: Answer, now: float) -> tuple[list[Waiter], str | None]:
        """Keep `answer` for `host`; the waiters for it, in the order they came, and the name to look up next (its
        turn has come: a lookup slot is free), if any."""
        limits = self.limits
        ttl = limits.ttl_s if isinstance(answer, Resolved) else limits.negative_ttl_s
        self._answers.pop(host, None)
        self._answers[host] = _Cached(answer, now + ttl)
        while len(self._answers) > limits.max_names:
            del self._answers[next(iter(self._answers))]
        waiters = self._waiting.pop(host, [])
        self._waiting_total -= len(waiters)
        self._looking_up.discard(host)
        next_name = next((name for name in self._waiting if name not in self._looking_up), None)
        if next_name is not None:
            self._start_if_free(next_name)
        return waiters, next_name

    def _start_if_free(self, host: str) -> Wait:
        if len(self._looking_up) >= self.limits.max_resolving:
            return Wait.QUEUED  # its turn comes when a lookup ends (`resolved`)
        self._looking_up.add(host)
        return Wait.START

    @property
    def names(self) -> int:
        return len(self._answers)

    @property
    def resolving(self) -> int:
        """Names being looked up now."""
        return len(self._looking_up)

    @property
    def waiting(self) -> int:
        return self._waiting_total


class Unreachable(Exception):
    """A destination that cannot be resolved or reached from this socket."""


class SipUdpSender:
    """Sends SIP datagrams to peer-named destinations on one UDP socket of `family` (see the module's text).

    `sendto` is the socket's; `on_unreachable(destination)` is called (soon, never from inside `send`, so the
    caller's own send loop is not re-entered) for each message that could not go out.
    """

    def __init__(
        self,
        sendto: Callable[[bytes, Address], Any],
        family: socket.AddressFamily,
        on_unreachable: Callable[[Address], None],
        *,
        limits: ResolverLimits | None = None,
        label: str = "SIP",
    ) -> None:
        self._sendto = sendto
        self._family = family
        self._on_unreachable = on_unreachable
        self._label = label
        self._loop = asyncio.get_running_loop()
        self.cache: NameCache[Callable[[Answer], None]] = NameCache(limits)
        self._warned: SourceRate[str] = SourceRate(1, UNREACHABLE_LOG_WINDOW_S)
        self._lookups: set[asyncio.Task[None]] = set()

    def send(self, data: bytes, destination: Address) -> None:
        host = destination[0].strip("[]")
        answer = self._known(host)
        if answer is None:
            self._when_resolved(host, lambda found: self._send_to(data, destination, found))
        else:
            self._send_to(data, destination, answer)

    async def address(self, host: str, port: int) -> Address:
        """`host:port` as an address this socket can send to; Unreachable when it has none."""
        bare = host.strip("[]")
        answer = self._known(bare)
        if answer is None:
            found: asyncio.Future[Answer] = self._loop.create_future()
            self._when_resolved(bare, found.set_result)
            answer = await found
        if isinstance(answer, Unresolvable):
            raise Unreachable(f"cannot resolve {host}: {answer.reason}")
        return (answer.address, port)

    def _known(self, host: str) -> Answer | None:
        """The answer about `host` without a lookup: an IP literal's own, or the cache's (None: look it up)."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return self.cache.answer(host, self._loop.time())
        if (literal.version == 6) != (self._family == socket.AF_INET6):
            return Unresolvable(f"an IPv{literal.version} address, and this socket is not")
        return Resolved(host)

    def _when_resolved(self, host: str, then: Callable[[Answer], None]) -> None:
        verdict = self.cache.wait(host, then)
        if verdict is Wait.REFUSED:
            then(Unresolvable("too many messages are waiting for names to resolve"))
        elif verdict is Wait.START:
            self._start_lookup(host)

    def _start_lookup(self, host: str) -> None:
        lookup = self._loop.create_task(self._look_up(host))
        self._lookups.add(lookup)
        lookup.add_done_callback(self._lookups.discard)

    async def _look_up(self, host: str) -> None:
        answer: Answer
        try:
            infos = await self._loop.getaddrinfo(host, None, family=self._family, type=socket.SOCK_DGRAM)
            answer = Resolved(str(infos[0][4][0])) if infos else Unresolvable("no address")
        except (OSError, UnicodeError) as exc:  # gaierror; a label over 63 characters is a UnicodeError
            answer = Unresolvable(str(exc) or type(exc).__name__)
        waiters, next_name = self.cache.resolved(host, answer, self._loop.time())
        if next_name is not None:
            self._start_lookup(next_name)
        for then in waiters:
            then(answer)

    def _send_to(self, data: bytes, destination: Address, answer: Answer) -> None:
        if isinstance(answer, Resolved):
            try:
                self._sendto(data, (answer.address, destination[1]))
                return
            except (OSError, ValueError) as exc:
                answer = Unresolvable(str(exc))
        if self._warned.allow(destination[0], self._loop.time()):
            log.warning(
                "%s: cannot send SIP to %s: %s (its transactions fail; logged once a minute per destination)",
                self._label,
                escaped_for_log(f"{destination[0]}:{destination[1]}"),
                escaped_for_log(answer.reason),
            )
        self._loop.call_soon(self._on_unreachable, destination)
