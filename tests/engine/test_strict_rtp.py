"""Strict RTP: who may take a call's media before it has latched, and how guessable its port is.

Issue 16 §1.1/§2.2: a session latched on the first packet from any address, and ports were handed out in order, so a
stranger spraying packets at the next few ports while a call rang took its prompt and conference audio, muted the
caller, and had the caller's PIN digits dropped as foreign. Now the SDP's address latches at once, another address
only after a run of in-sequence packets (a caller behind NAT), the SDP's address takes the stream back from such a
learned source, RTCP follows the RTP source, and ports are drawn at random from the free ones.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dialbridge.engine.core import SendWebhook
from dialbridge.rtp.events import TelephoneEvent
from dialbridge.rtp.packet import RtpPacket, build_rtp
from dialbridge.rtp.rtcp import ReceiverReport, ReportBlock, build_rtcp
from dialbridge.rtp.session import LEARNING_PACKETS, DtmfDigit, RtpSession
from dialbridge.udp_ports import NoMediaPorts, UdpMediaPorts
from tests.engine.fake_engine import INPUT_URL, World, kept, offer_sdp, ok, tone, tone_share
from tests.engine.test_rtp_session import NAT_ADDRESS, OUR_SSRC, SDP_ADDRESS, SDP_RTCP, THEIR_SSRC, session

STRANGER = ("192.0.2.66", 4000)
CALLER_SSRC = THEIR_SSRC
PROMPT_HZ = 500.0


class Sender:
    """One RTP source: audio and RFC 4733 key presses in one sequence space, as a phone (or a careful forger) sends."""

    def __init__(self, ssrc: int, first_sequence: int = 100) -> None:
        self.ssrc = ssrc
        self.sequence = first_sequence
        self.timestamp = 16000

    def _next(self, payload_type: int, payload: bytes, marker: bool = False) -> bytes:
        packet = RtpPacket(payload_type, self.sequence & 0xFFFF, self.timestamp, self.ssrc, payload, marker=marker)
        self.sequence += 1
        self.timestamp += 160
        return build_rtp(packet)

    def audio(self) -> bytes:
        return self._next(0, b"\x10" * 160)

    def key(self, event: int) -> list[bytes]:
        """A whole key press: start, one more, and the end packet sent three times (RFC 4733 §2.5.1.4)."""
        start = self.timestamp
        packets = []
        for index, duration in enumerate((160, 320, 480, 480, 480)):
            body = TelephoneEvent(event, index >= 2, 10, duration).to_bytes()
            packet = RtpPacket(101, self.sequence & 0xFFFF, start, self.ssrc, body, marker=index == 0)
            self.sequence += 1
            packets.append(build_rtp(packet))
        self.timestamp += 480
        return packets


def digits(rtp: RtpSession, packets: list[bytes], source: tuple[str, int], now: float) -> list[DtmfDigit]:
    return [digit for packet in packets for digit in rtp.receive(packet, source, now)]


# -- the session


def test_a_strangers_packets_before_the_callers_first_do_not_latch_and_the_sdp_address_latches_at_once() -> None:
    rtp = session()
    scanner = random.Random(5)
    for _ in range(200):  # a spray: every packet its own SSRC and sequence number, as a port scan sends them
        ssrc, sequence = scanner.getrandbits(32), scanner.getrandbits(16)
        rtp.receive(build_rtp(RtpPacket(0, sequence, sequence * 160, ssrc, b"\xff" * 160)), STRANGER, 0.1)
    assert rtp.destination == SDP_ADDRESS and rtp.stats.latched is None
    assert rtp.stats.packets_in == 0 and rtp.stats.foreign_dropped == 200

    caller = Sender(CALLER_SSRC)
    rtp.receive(caller.audio(), SDP_ADDRESS, 0.3)  # one packet from where the SDP said: latched
    assert rtp.destination == SDP_ADDRESS and rtp.stats.latched == SDP_ADDRESS
    assert digits(rtp, caller.key(1), SDP_ADDRESS, 0.4) == [DtmfDigit("1")]
    assert digits(rtp, Sender(0xBAD).key(7), STRANGER, 0.5) == []


def test_a_stranger_sending_in_sequence_is_overruled_by_the_sdp_address() -> None:
    """A careful forger's run of in-sequence packets passes for a caller behind NAT; the caller's first packet from
    the SDP's address takes the stream back for good."""
    rtp = session()
    forger = Sender(0xBAD)
    for index in range(20):
        rtp.receive(forger.audio(), STRANGER, 0.02 * index)
    assert rtp.destination == STRANGER
    caller = Sender(CALLER_SSRC)
    rtp.receive(caller.audio(), SDP_ADDRESS, 0.5)
    assert rtp.destination == SDP_ADDRESS
    assert digits(rtp, forger.key(7), STRANGER, 0.6) == []
    assert digits(rtp, caller.key(4), SDP_ADDRESS, 0.7) == [DtmfDigit("4")]
    assert rtp.destination == SDP_ADDRESS


def test_behind_nat_the_callers_source_latches_after_a_run_of_in_sequence_packets() -> None:
    rtp = session()
    caller = Sender(CALLER_SSRC)
    for index in range(LEARNING_PACKETS - 1):
        rtp.receive(caller.audio(), NAT_ADDRESS, 0.02 * index)
        assert rtp.destination == SDP_ADDRESS  # not yet: one packet from an address proves nothing
    caller.sequence += 1  # a packet lost: the run starts again
    for index in range(LEARNING_PACKETS - 1):
        rtp.receive(caller.audio(), NAT_ADDRESS, 0.1 + 0.02 * index)
    assert rtp.destination == SDP_ADDRESS
    rtp.receive(caller.audio(), NAT_ADDRESS, 0.2)
    assert rtp.destination == NAT_ADDRESS and rtp.stats.latched == NAT_ADDRESS
    assert rtp.stats.packets_in == 1  # the packets before the latch were not taken as the caller's
    assert digits(rtp, caller.key(9), NAT_ADDRESS, 0.3) == [DtmfDigit("9")]
    rtp.receive(Sender(0xBAD).audio(), STRANGER, 0.4)
    assert rtp.destination == NAT_ADDRESS


def test_a_stranger_between_the_nat_callers_packets_does_not_latch_on_its_own() -> None:
    rtp = session()
    caller, forger = Sender(CALLER_SSRC), Sender(0xBAD)
    for index in range(LEARNING_PACKETS - 1):
        rtp.receive(caller.audio(), NAT_ADDRESS, 0.02 * index)
    rtp.receive(forger.audio(), STRANGER, 0.07)  # a run is from one source: this one starts its own
    rtp.receive(caller.audio(), NAT_ADDRESS, 0.08)
    assert rtp.destination == SDP_ADDRESS


def rtcp_report(fraction_lost: int) -> bytes:
    return build_rtcp([ReceiverReport(0xBAD, (ReportBlock(OUR_SSRC, fraction_lost, 999, 0, 0, 0, 0),))])


def test_rtcp_from_a_stranger_before_latching_neither_redirects_our_reports_nor_counts() -> None:
    rtp = session()
    rtp.receive_rtcp(rtcp_report(255), STRANGER, 0.1)
    assert rtp.rtcp_destination == SDP_RTCP
    assert rtp.stats.remote_fraction_lost is None and rtp.stats.foreign_dropped == 1


def test_rtcp_latches_to_the_host_the_rtp_latched_to() -> None:
    rtp = session()
    caller = Sender(CALLER_SSRC)
    for index in range(LEARNING_PACKETS):
        rtp.receive(caller.audio(), NAT_ADDRESS, 0.02 * index)
    rtp.receive_rtcp(rtcp_report(255), STRANGER, 0.2)
    assert rtp.rtcp_destination == SDP_RTCP
    rtp.receive_rtcp(rtcp_report(64), (NAT_ADDRESS[0], 61001), 0.3)  # the NAT maps RTCP to a port of its own
    assert rtp.rtcp_destination == (NAT_ADDRESS[0], 61001) and rtp.stats.remote_fraction_lost == 0.25


def test_rtcp_from_the_sdp_rtcp_address_is_taken_before_rtp_latches() -> None:
    rtp = session()
    rtp.receive_rtcp(rtcp_report(64), SDP_RTCP, 0.1)
    assert rtp.stats.remote_fraction_lost == 0.25


# -- the engine, whole


PIN_NCCO: list[dict[str, Any]] = [
    {"action": "talk", "text": "prompt", "bargeIn": False},
    {
        "action": "input",
        "type": ["dtmf"],
        "dtmf": {"maxDigits": 4, "timeOut": 5, "submitOnHash": True},
        "eventUrl": [INPUT_URL],
    },
]


@pytest.mark.parametrize("in_sequence", [False, True], ids=["scanner", "forger"])
def test_a_spray_at_a_ringing_calls_port_takes_neither_its_audio_nor_its_pin(in_sequence: bool) -> None:
    """The issue's attack: audio and key presses at the call's port while it rings, and on through the call. A
    scanner's packets (each its own SSRC) never latch; a forger's in-sequence run passes for a caller behind NAT, so
    it gets the silence we send while the call rings, until the caller's first packet takes the stream back."""
    inputs: list[SendWebhook] = []
    world = World(webhook=lambda request: kept(inputs, request))  # the answer is held: the call rings
    world.audio["prompt"] = tone(PROMPT_HZ, 0.5)
    phone = world.phone()
    phone.invite()
    [port] = world.ports.open_ports
    forger = Sender(0xBAD)

    def sender() -> Sender:
        return forger if in_sequence else Sender(world.rng.getrandbits(32), world.rng.getrandbits(16))

    def spray(ticks: int) -> None:
        for tick in range(ticks):
            packets = [sender().audio()]
            if tick % 10 == 0:
                packets += [sender().key(7)[index] for index in range(5)]
            for packet in packets:
                world.engine.receive_rtp(port, packet, STRANGER, world.now)
            world.tick()

    spray(50)
    [fetch] = world.held_fetches
    world.engine.answer_fetched(fetch.call_uuid, ok(PIN_NCCO), world.now)
    world.pump()
    assert phone.sending
    spray(40)
    assert tone_share(phone.heard(), PROMPT_HZ) > 0.9
    assert world.engine.calls[fetch.call_uuid].rtp.stats.latched == phone.rtp_address  # type: ignore[union-attr]
    for digit in "12":
        phone.key_rfc4733(digit)
        spray(10)
    phone.key_rfc4733("#")
    spray(20)
    assert [request.payload["dtmf"]["digits"] for request in inputs] == ["12"]
    stolen = [data for _, data, destination in world.stray_rtp if destination == STRANGER]
    if not in_sequence:
        assert stolen == []
    else:
        assert len(stolen) <= 51 and all(max(data[12:]) == min(data[12:]) for data in stolen)  # ringing's silence


def test_a_caller_behind_nat_is_heard_and_hears_and_its_digits_count() -> None:
    inputs: list[SendWebhook] = []
    world = World(answer=lambda request: ok(PIN_NCCO), webhook=lambda request: kept(inputs, request))
    world.audio["prompt"] = tone(PROMPT_HZ, 0.5)
    phone = world.phone()
    phone.invite(offer_sdp("10.0.0.5", 4000))  # its own idea of its address; its packets come from rtp_address
    world.until(lambda: phone.sending, 2.0)
    world.run(0.8)
    assert tone_share(phone.heard(), PROMPT_HZ) > 0.9
    for digit in "34#":
        phone.key_rfc4733(digit)
        world.run(0.2)
    assert [request.payload["dtmf"]["digits"] for request in inputs] == ["34"]


def test_rtcp_from_a_stranger_while_ringing_does_not_redirect_the_engines_reports() -> None:
    world = World()
    phone = world.phone()
    phone.invite()
    [port] = world.ports.open_ports
    world.engine.receive_rtcp(port, rtcp_report(255), STRANGER, world.now)
    world.advance(12.0, step=0.1)
    assert world.rtcp_out == []  # nor to the SDP's address: not before the ACK (test_reflection.py)
    [fetch] = world.held_fetches
    world.engine.answer_fetched(fetch.call_uuid, ok([{"action": "conversation", "name": "room"}]), world.now)
    world.pump()
    world.advance(12.0, step=0.1)
    reports = [destination for sent_from, _, destination in world.rtcp_out if sent_from == port + 1]
    assert reports and STRANGER not in reports
    assert set(reports) == {(phone.rtp_address[0], phone.rtp_address[1] + 1)}


# -- ports


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _ports(loop: asyncio.AbstractEventLoop, low: int, high: int, seed: int | None = None) -> UdpMediaPorts:
    if seed is None:
        return UdpMediaPorts(loop, "127.0.0.1", low, high, lambda *_: None, lambda *_: None)
    return UdpMediaPorts(loop, "127.0.0.1", low, high, lambda *_: None, lambda *_: None, random=random.Random(seed))


def test_ports_are_not_handed_out_in_order(loop: asyncio.AbstractEventLoop) -> None:
    media = _ports(loop, 31000, 31200)
    try:
        opened = [media.open() for _ in range(20)]
    finally:
        media.close_all()
    assert all(31000 <= port < 31200 and port % 2 == 0 for port in opened)
    assert len(set(opened)) == 20
    steps = {later - earlier for earlier, later in itertools.pairwise(opened)}
    assert steps != {2}  # not the next pair each time: the port a call will get cannot be guessed


def test_every_port_pair_in_the_range_can_be_handed_out(loop: asyncio.AbstractEventLoop) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 31011))  # another program holds one RTCP port: its pair is skipped
    media = _ports(loop, 31000, 31020, seed=3)
    try:
        opened = {media.open() for _ in range(9)}
        assert opened == set(range(31000, 31020, 2)) - {31010}
        with pytest.raises(NoMediaPorts):
            media.open()
        media.close(31004)
        assert media.open() == 31004  # a closed pair is free again
        taken.close()
        media.close(31000)
        assert {media.open(), media.open()} == {31000, 31010}  # and a pair that was busy is tried again
    finally:
        media.close_all()
        taken.close()
