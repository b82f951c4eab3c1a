"""Names in SIP destinations: `NameCache` with a fake clock, and `SipUdpSender` on a real loop (its getaddrinfo)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter

import pytest

from dialbridge.sip.resolver import (
    NameCache,
    Resolved,
    ResolverLimits,
    SipUdpSender,
    SrvRecord,
    Unreachable,
    Unresolvable,
    Wait,
    srv_order,
)
from tests.aio import run_in_thread
from tests.dnsmasq import DNSMASQ, dns_server

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


def test_an_answer_is_kept_for_its_records_ttl_within_max_ttl() -> None:
    cache: NameCache[str] = NameCache(ResolverLimits(ttl_s=60, max_ttl_s=3600))
    cache.wait("a.test", "m")
    cache.resolved("a.test", HERE, 0, ttl=300)
    assert cache.answer("a.test", 299.9) == HERE and cache.answer("a.test", 300) is None
    cache.wait("b.test", "m")
    cache.resolved("b.test", HERE, 0, ttl=86_400)
    assert cache.answer("b.test", 3599.9) == HERE and cache.answer("b.test", 3600) is None


# ---- RFC 3263 SRV: the order of targets, and a real DNS server ------------------------------------------------------


def test_srv_targets_go_by_priority_then_by_weight() -> None:
    records = [
        SrvRecord(20, 0, 5080, "backup.test"),
        SrvRecord(10, 60, 5070, "heavy.test"),
        SrvRecord(10, 20, 5071, "light.test"),
        SrvRecord(10, 0, 5072, "zero.test"),
    ]
    rng = random.Random(3)
    orders = [[r.target for r in srv_order(records, rng)] for _ in range(8000)]
    assert all(order[-1] == "backup.test" for order in orders)  # the higher priority number only after the rest
    first = Counter(order[0] for order in orders)
    assert 0.70 < first["heavy.test"] / 8000 < 0.80  # 60 of 80
    assert 0.20 < first["light.test"] / 8000 < 0.30
    assert first["zero.test"] / 8000 < 0.03  # weight 0: a small chance only (RFC 2782)
    even = Counter(srv_order([SrvRecord(1, 0, 1, "a"), SrvRecord(1, 0, 2, "b")], rng)[0].target for _ in range(4000))
    assert 0.45 < even["a"] / 4000 < 0.55  # all weights 0: an equal chance


PBX_RECORDS = [
    "_sip._udp.pbx.test,a.pbx.test,5070,10,100",
    "_sip._udp.pbx.test,b.pbx.test,5080,20,100",
    "_sip._tcp.pbx.test,t.pbx.test,5090,10,100",
    "_sip._udp.dead.test,gone.test,5070,10,100",  # a target without an address: the next one is tried
    "_sip._udp.dead.test,b.pbx.test,5080,20,100",
]
PBX_HOSTS = {
    "pbx.test": "127.0.0.1",
    "a.pbx.test": "127.0.0.2",
    "b.pbx.test": "127.0.0.3",
    "t.pbx.test": "127.0.0.4",
    "nosrv.test": "127.0.0.5",
}


@pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq is not installed: make test installs the dnsmasq-base package")
def test_a_name_without_a_port_goes_where_its_sip_srv_records_say_and_one_with_a_port_to_its_address() -> None:
    sent: list[tuple[bytes, Address]] = []
    unreachable: list[Address] = []

    async def main(server: Address) -> tuple[Address, Address, bool, bool]:
        sender = SipUdpSender(
            lambda data, address: sent.append((data, address)), socket.AF_INET, unreachable.append, dns_server=server
        )
        sender.send(b"srv", ("pbx.test", 5060), port_named=False)
        sender.send(b"named", ("pbx.test", 5060))  # sip:pbx.test:5060: the port is named, no SRV
        sender.send(b"no-srv", ("nosrv.test", 5060), port_named=False)  # no SRV record: A on 5060
        sender.send(b"next-target", ("dead.test", 5060), port_named=False)
        sender.send(b"literal", ("127.0.0.9", 5060), port_named=False)  # an IP address is never looked up
        sender.send(b"nowhere", ("nohost.test", 5060), port_named=False)
        tcp = await sender.address("pbx.test", 5060, transport="tcp", port_named=False)
        tcp_named = await sender.address("pbx.test", 5062, transport="tcp")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(sent) + len(unreachable) >= 6:
                break
        # Kept for the SRV record's TTL (dnsmasq's --local-ttl, 30 s), then looked up again.
        now = asyncio.get_running_loop().time()
        key = "SRV _sip._udp.pbx.test"
        return (
            tcp,
            tcp_named,
            sender.cache.answer(key, now + 28) is not None,
            sender.cache.answer(key, now + 31) is None,
        )

    with dns_server(srv=PBX_RECORDS, hosts=PBX_HOSTS, ttl=30) as server:
        tcp, tcp_named, kept, expired = run_in_thread(lambda: main(server), use_uvloop=True)
    assert sorted(sent) == sorted(
        [
            (b"srv", ("127.0.0.2", 5070)),  # priority 10 before 20
            (b"named", ("127.0.0.1", 5060)),
            (b"no-srv", ("127.0.0.5", 5060)),
            (b"next-target", ("127.0.0.3", 5080)),
            (b"literal", ("127.0.0.9", 5060)),
        ]
    )
    assert unreachable == [("nohost.test", 5060)]
    assert tcp == ("127.0.0.4", 5090)  # _sip._tcp for TCP
    assert tcp_named == ("127.0.0.1", 5062)
    assert kept and expired
