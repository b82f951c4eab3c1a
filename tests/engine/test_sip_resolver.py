"""Names in SIP destinations: `NameCache` with a fake clock, and `SipUdpSender` on a real loop (its getaddrinfo)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from dialbridge.sip.resolver import (
    NameCache,
    Resolved,
    ResolverLimits,
    SipUdpSender,
    Unreachable,
    Unresolvable,
    Wait,
)
from tests.aio import run_in_thread

Address = tuple[str, int]
HERE = Resolved("192.0.2.7")
NOWHERE = Unresolvable("Name or service not known")


# ---- the cache (sans-I/O, a fake clock) ---------------------------------------------------------------------------


def test_an_answer_is_kept_for_its_ttl_and_a_failure_for_the_shorter_negative_ttl() -> None:
    cache: NameCache[str] = NameCache(ResolverLimits(ttl_s=60, negative_ttl_s=5))
    assert cache.answer("pbx.test", 0) is None
    assert cache.wait("pbx.test", "bye") is Wait.START
    assert cache.resolved("pbx.test", HERE, 0) == (["bye"], None)
    assert cache.answer("pbx.test", 59.9) == HERE
    assert cache.answer("pbx.test", 60) is None  # expired: looked up again
    cache.wait("bad.invalid", "bye")
    cache.resolved("bad.invalid", NOWHERE, 100)
    assert cache.answer("bad.invalid", 104.9) == NOWHERE  # a flood of messages to it costs no lookups
    assert cache.answer("bad.invalid", 105) is None


def test_messages_waiting_for_a_name_come_back_in_the_order_they_came_with_one_lookup() -> None:
    cache: NameCache[int] = NameCache()
    verdicts = [cache.wait("pbx.test", n) for n in range(4)]
    assert verdicts == [Wait.START, Wait.QUEUED, Wait.QUEUED, Wait.QUEUED]
    assert cache.waiting == 4 and cache.resolving == 1
    assert cache.resolved("pbx.test", HERE, 0) == ([0, 1, 2, 3], None)
    assert cache.waiting == 0 and cache.resolving == 0


def test_messages_waiting_are_bounded_per_name_and_in_total() -> None:
    cache: NameCache[int] = NameCache(ResolverLimits(waiting_per_name=3, waiting_total=5, max_resolving=5))
    assert [cache.wait("a.test", n) for n in range(4)] == [Wait.START, Wait.QUEUED, Wait.QUEUED, Wait.REFUSED]
    assert [cache.wait("b.test", n) for n in range(3)] == [Wait.START, Wait.QUEUED, Wait.REFUSED]
    assert cache.wait("c.test", 0) is Wait.REFUSED  # the total is reached: even a new name waits for none
    assert cache.waiting == 5
    assert cache.resolved("a.test", HERE, 0)[0] == [0, 1, 2]  # the refused ones were never queued
    assert cache.wait("c.test", 0) is Wait.START


def test_at_most_max_resolving_names_are_looked_up_at_once_the_others_wait_their_turn() -> None:
    cache: NameCache[str] = NameCache(ResolverLimits(max_resolving=2))
    assert [cache.wait(name, "m") for name in ("a", "b", "c", "d")] == [
        Wait.START,
        Wait.START,
        Wait.QUEUED,
        Wait.QUEUED,
    ]
    assert cache.resolving == 2
    assert cache.resolved("b", NOWHERE, 0) == (["m"], "c")  # b's slot goes to the first name still waiting
    assert cache.wait("c", "m2") is Wait.QUEUED  # c's lookup is under way now
    assert cache.resolved("a", HERE, 0) == (["m"], "d")
    assert cache.resolved("c", HERE, 0) == (["m", "m2"], None)
    assert cache.resolved("d", HERE, 0) == (["m"], None)
    assert cache.resolving == 0


def test_the_cache_keeps_at_most_max_names_forgetting_the_oldest_answer_first() -> None:
    cache: NameCache[str] = NameCache(ResolverLimits(max_names=3))
    for n in range(10):
        cache.wait(f"h{n}.test", "m")
        cache.resolved(f"h{n}.test", NOWHERE, 0)
    assert cache.names == 3
    assert [cache.answer(f"h{n}.test", 1) for n in (6, 7, 8, 9)] == [None, NOWHERE, NOWHERE, NOWHERE]


# ---- the sender: every datagram on its own ------------------------------------------------------------------------


def _send_all(destinations: list[Address]) -> tuple[list[tuple[bytes, Address]], list[Address]]:
    """Send one datagram to each destination through a sender on an AF_INET socket (uvloop's, which raises on a
    name or an IPv6 address); what reached `sendto`, and what was reported unreachable."""
    sent: list[tuple[bytes, Address]] = []
    unreachable: list[Address] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))

        def sendto(data: bytes, address: Address) -> None:
            udp.sendto(data, address)  # raises as uvloop does for what it cannot send
            sent.append((data, address))

        sender = SipUdpSender(sendto, socket.AF_INET, unreachable.append)
        for n, destination in enumerate(destinations):
            sender.send(b"m%d" % n, destination)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(sent) + len(unreachable) >= len(destinations):
                break
        udp.close()

    run_in_thread(main, use_uvloop=True)
    return sent, unreachable


def test_a_name_is_resolved_and_its_messages_go_out_in_order_and_one_that_cannot_costs_only_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    destinations = [
        ("localhost", 5070),
        ("nohost.invalid", 5060),
        ("[::1]", 5060),
        ("localhost", 5071),
        ("127.0.0.1", 5072),
        ("nohost.invalid", 5060),
    ]
    sent, unreachable = _send_all(destinations)
    assert sorted(sent) == [(b"m0", ("127.0.0.1", 5070)), (b"m3", ("127.0.0.1", 5071)), (b"m4", ("127.0.0.1", 5072))]
    assert [data for data, _ in sent if data != b"m4"] == [b"m0", b"m3"]  # a name's messages keep their order
    assert sorted(unreachable) == [("[::1]", 5060), ("nohost.invalid", 5060), ("nohost.invalid", 5060)]
    warnings = [r.getMessage() for r in caplog.records if "cannot send SIP" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per destination, however many of its messages fail
    assert not any(r.exc_info for r in caplog.records)


def test_a_dial_target_is_resolved_through_the_same_cache() -> None:
    async def main() -> tuple[Address, str]:
        sender = SipUdpSender(lambda data, address: None, socket.AF_INET, lambda destination: None)
        found = await sender.address("localhost", 5080)
        with pytest.raises(Unreachable) as refused:
            await sender.address("nohost.invalid", 5060)
        assert sender.cache.names == 2
        return found, str(refused.value)

    found, refused = run_in_thread(main, use_uvloop=True)
    assert found == ("127.0.0.1", 5080)
    assert refused.startswith("cannot resolve nohost.invalid")
