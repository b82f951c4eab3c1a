"""Where a SIP message named by a peer goes: host names resolved off the event loop, cached, and every send isolated.

A peer names our next hop in its Contact, Record-Route or Via, and a name there is legal (RFC 3261 19.1.1). A UDP
socket cannot send to a name, and a socket of one family cannot send to an address of the other; uvloop raises on
either, so one such message used to take down everything sent after it in the same flush. `SipUdpSender` sends each
datagram on its own: a name is resolved with the loop's `getaddrinfo` (a worker thread, never the loop), its
messages wait for the answer and then go out in order, and a destination that cannot be resolved or reached is
reported (`on_unreachable`) as the transport error RFC 3261 8.1.3.1 / 17.1.4 make it: its transactions fail (503),
a BYE's call ends. Nothing else is affected, and the log gets one line per destination a minute, not a traceback.

RFC 3263 4.2 as far as SRV and A/AAAA go: a name with a port is looked up as A/AAAA; a name without one (the agent
says so: `Outgoing.port_named`) as the SRV records of `_sip._udp.name` or `_sip._tcp.name` by the transport, whose
targets are tried in RFC 2782 order (priority, then a weighted random pick) until one has an address, and with no
SRV record as A/AAAA on port 5060. An IP address is never looked up. NAPTR is not done (the transport is the one the
URI or the dialog names). SRV goes through dnspython's asyncio resolver (non-blocking, on no thread), A/AAAA through
the loop's getaddrinfo; with a DNS server configured (`DIALBRIDGE_DNS_SERVER`) both ask that server alone.

`NameCache` is the cache, free of I/O (the time comes in): answers for their records' TTL (at most `max_ttl_s`;
`ttl_s` when getaddrinfo gives none), failures for a shorter `negative_ttl_s`, at most `max_names` of them, and the
messages waiting for a name bounded per name and in total. At most `max_resolving` names are looked up at once (the
others wait their turn), so a flood of names that never resolve (each lookup can take the resolver's full timeout)
cannot hold every thread of the pool, which other work shares.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import random as random_module
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from dialbridge.log_text import escaped_for_log
from dialbridge.rate import SourceRate

log = logging.getLogger(__name__)

Address = tuple[str, int]
Waiter = TypeVar("Waiter")
UNREACHABLE_LOG_WINDOW_S: Final = 60.0  # one warning per destination per minute
DEFAULT_SIP_PORT: Final = 5060
DNS_LIFETIME_S: Final = 5.0  # one SRV or A/AAAA query, retries included


@dataclass(frozen=True, slots=True)
class ResolverLimits:
    ttl_s: float = 60.0  # when the lookup gives no TTL (getaddrinfo)
    max_ttl_s: float = 3600.0  # a record's TTL beyond this is cut to it
    negative_ttl_s: float = 5.0
    max_names: int = 1024
    max_resolving: int = 2  # uvloop's lookups share libuv's pool of 4 threads with its file work
    waiting_per_name: int = 32
    waiting_total: int = 1024


@dataclass(frozen=True, slots=True)
class Resolved:
    address: str  # an IP address of the sender's family
    port: int | None = None  # the port an SRV record names; None: the destination's own


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

    def resolved(
        self, host: str, answer: Answer, now: float, ttl: float | None = None
    ) -> tuple[list[Waiter], str | None]:
        """Keep `answer` for `host`, for `ttl` (its records'; None: `ttl_s`); the waiters for it, in the order they
        came, and the name to look up next (its turn has come: a lookup slot is free), if any."""
        limits = self.limits
        if isinstance(answer, Unresolvable):
            ttl = limits.negative_ttl_s
        else:
            ttl = min(limits.ttl_s if ttl is None else ttl, limits.max_ttl_s)
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


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # a host name, without the final dot; "." (the service is not offered there) is ""


def srv_order(records: Sequence[SrvRecord], random: random_module.Random) -> list[SrvRecord]:
    """RFC 2782: the order to try targets in. Lowest priority first; within one priority, each next record is
    picked at random in proportion to its weight among those left (weight 0 ones get a small chance, and all an
    equal one when every weight is 0)."""
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        left = [record for record in records if record.priority == priority]
        random.shuffle(left)  # "in any order": at random, so that weights of 0 alone share the load too
        left.sort(key=lambda record: record.weight != 0)  # weight 0 first (stable: still shuffled among themselves)
        while left:
            total = sum(record.weight for record in left)
            pick = random.randint(0, total)
            running = 0
            for index, record in enumerate(left):
                running += record.weight
                if running >= pick:
                    ordered.append(left.pop(index))
                    break
    return ordered


def _lookup_key(host: str, transport: str, port_named: bool) -> str:
    """The cache's key for where a message to `host` goes: the host itself for A/AAAA (and IP literals), or, for a
    name without a port, its SIP service (a space keeps it apart from any host name)."""
    bare = host.strip("[]")
    if port_named or _is_ip_literal(bare):
        return bare
    return f"SRV _sip._{transport}.{bare}"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
        dns_server: Address | None = None,
        random: random_module.Random | None = None,
    ) -> None:
        """`dns_server`: the one DNS server to ask, for SRV and A/AAAA both; None: the system's."""
        self._sendto = sendto
        self._family = family
        self._on_unreachable = on_unreachable
        self._label = label
        self._dns_server = dns_server
        self._dns: dns.asyncresolver.Resolver | None = None  # made at the first SRV lookup (it reads resolv.conf)
        self._random = random or random_module.Random()
        self._loop = asyncio.get_running_loop()
        self.cache: NameCache[Callable[[Answer], None]] = NameCache(limits)
        self._warned: SourceRate[str] = SourceRate(1, UNREACHABLE_LOG_WINDOW_S)
        self._lookups: set[asyncio.Task[None]] = set()

    def send(self, data: bytes, destination: Address, *, port_named: bool = True) -> None:
        """`port_named`: as `Outgoing.port_named` (False: `destination` has the default port; SRV first)."""
        key = _lookup_key(destination[0], "udp", port_named)
        answer = self._known(key)
        if answer is None:
            self._when_resolved(key, lambda found: self._send_to(data, destination, found))
        else:
            self._send_to(data, destination, answer)

    async def address(self, host: str, port: int, *, transport: str = "udp", port_named: bool = True) -> Address:
        """`host:port` as an address this socket's family can reach (`transport` chooses the SRV records when the
        port was not named); Unreachable when it has none."""
        key = _lookup_key(host, transport, port_named)
        answer = self._known(key)
        if answer is None:
            found: asyncio.Future[Answer] = self._loop.create_future()
            self._when_resolved(key, found.set_result)
            answer = await found
        if isinstance(answer, Unresolvable):
            raise Unreachable(f"cannot resolve {host}: {answer.reason}")
        return (answer.address, answer.port or port)

    def _known(self, key: str) -> Answer | None:
        """The answer about `key` without a lookup: an IP literal's own, or the cache's (None: look it up)."""
        try:
            literal = ipaddress.ip_address(key)
        except ValueError:
            return self.cache.answer(key, self._loop.time())
        if (literal.version == 6) != (self._family == socket.AF_INET6):
            return Unresolvable(f"an IPv{literal.version} address, and this socket is not")
        return Resolved(key)

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

    async def _look_up(self, key: str) -> None:
        service = key.removeprefix("SRV ") if key.startswith("SRV ") else None
        answer, ttl = await (self._look_up_service(service) if service else self._look_up_address(key))
        waiters, next_name = self.cache.resolved(key, answer, self._loop.time(), ttl)
        if next_name is not None:
            self._start_lookup(next_name)
        for then in waiters:
            then(answer)

    async def _look_up_address(self, host: str) -> tuple[Answer, float | None]:
        """A/AAAA (of this socket's family): the answer and its TTL (None when getaddrinfo gave it)."""
        if self._dns_server is not None:
            rdtype = dns.rdatatype.AAAA if self._family == socket.AF_INET6 else dns.rdatatype.A
            try:
                records = await self._resolver().resolve(host, rdtype, lifetime=DNS_LIFETIME_S, search=False)
            except (dns.exception.DNSException, UnicodeError) as exc:
                return Unresolvable(str(exc) or type(exc).__name__), None
            return Resolved(records[0].to_text()), float(records.rrset.ttl if records.rrset else 0)
        try:
            infos = await self._loop.getaddrinfo(host, None, family=self._family, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:  # gaierror; a label over 63 characters is a UnicodeError
            return Unresolvable(str(exc) or type(exc).__name__), None
        return (Resolved(str(infos[0][4][0])) if infos else Unresolvable("no address")), None

    async def _look_up_service(self, service: str) -> tuple[Answer, float | None]:
        """RFC 3263 4.2 for `_sip._<transport>.<name>`: the first SRV target, in RFC 2782 order, that has an
        address, with the record's port; without SRV records, the name's A/AAAA on port 5060."""
        host = service.split(".", 2)[2]
        try:
            found = await self._resolver().resolve(service, dns.rdatatype.SRV, lifetime=DNS_LIFETIME_S, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoResolverConfiguration):
            answer, ttl = await self._look_up_address(host)
            return (Resolved(answer.address, DEFAULT_SIP_PORT) if isinstance(answer, Resolved) else answer), ttl
        except (dns.exception.DNSException, UnicodeError) as exc:  # a timeout, SERVFAIL: we cannot tell
            return Unresolvable(f"SRV {service}: {exc or type(exc).__name__}"), None
        srv_ttl = float(found.rrset.ttl if found.rrset else 0)
        records = [
            SrvRecord(rr.priority, rr.weight, rr.port, rr.target.to_text(omit_final_dot=True).strip("."))
            for rr in found
        ]
        reasons: list[str] = []
        for record in srv_order(records, self._random):
            if not record.target:
                reasons.append(f'{service} is not offered (target ".")')
                continue
            answer, ttl = await self._look_up_address(record.target)
            if isinstance(answer, Resolved):
                return Resolved(answer.address, record.port), srv_ttl if ttl is None else min(srv_ttl, ttl)
            reasons.append(f"{record.target}: {answer.reason}")
        return Unresolvable("; ".join(reasons) or f"{service}: no SRV target"), None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            if self._dns_server is None:
                self._dns = dns.asyncresolver.Resolver()  # the system's: raises NoResolverConfiguration without one
            else:
                self._dns = dns.asyncresolver.Resolver(configure=False)
                self._dns.nameservers = [self._dns_server[0]]
                self._dns.port = self._dns_server[1]
        return self._dns

    def _send_to(self, data: bytes, destination: Address, answer: Answer) -> None:
        if isinstance(answer, Resolved):
            try:
                self._sendto(data, (answer.address, answer.port or destination[1]))
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
