"""Reflection and amplification: the engine sends nothing to an address a peer merely names (issue 16 §2.6).

A hostile caller found two ways to make the engine send to a third party. One 538-byte INVITE, never ACKed, made it
send 1,601 RTP packets (320 KB, ~540x) to the address its SDP named, for the whole 64*T1 its 200 was retransmitted:
media went out from the moment the INVITE arrived. And a client could write `received=` into its own Via (its real
address as sent-by, no rport) and have the engine's answers go to that address. Now media waits until the peer has
proven the address (the ACK confirms the call, or its own RTP arrives from there), and `received` is only ever the
packet's source.

Driven whole through the real core with a fake clock (`tests/engine/fake_engine.py`); RTP and RTCP are counted as
`VoiceEngine.drain()` hands them out.
"""

from __future__ import annotations

import itertools
import random

from dialbridge.engine.core import EngineRequest, VoiceEngine
from dialbridge.rtp.packet import RtpPacket, build_rtp
from dialbridge.rtp.session import LEARNING_PACKETS, RtpSession
from dialbridge.sip.agent import Outgoing
from dialbridge.sip.transaction import T1
from tests.engine.fake_engine import Phone, World, ok, tone
from tests.engine.test_rtp_session import NAT_ADDRESS, OUR_SSRC, PARAMS, SDP_ADDRESS, SDP_RTCP, THEIR_SSRC

Address = tuple[str, int]
PROMPT = [{"action": "talk", "text": "prompt", "loop": 0}]  # audio for as long as the call lasts
THIRD_PARTY = "198.51.100.7"


class MediaLog:
    """Every RTP and RTCP datagram the engine's `drain()` gives out: (local port, data, destination)."""

    def __init__(self, engine: VoiceEngine) -> None:
        self.sent: list[tuple[int, bytes, Address]] = []
        drain = engine.drain

        def recording_drain() -> tuple[list[Outgoing], list[tuple[int, bytes, Address]], list[EngineRequest]]:
            sip, media, requests = drain()
            self.sent.extend(media)
            return sip, media, requests

        engine.drain = recording_drain  # type: ignore[method-assign]

    def to_host(self, host: str) -> list[tuple[int, bytes, Address]]:
        return [item for item in self.sent if item[2][0] == host]


def answered_without_ack() -> tuple[World, Phone, MediaLog]:
    """A call answered 200 by the app whose caller never ACKs (and sends no RTP, until a test says so)."""
    world = World(answer=lambda request: ok(PROMPT))
    world.audio["prompt"] = tone(500.0, 2.0)
    media = MediaLog(world.engine)
    phone = world.phone()
    phone.auto_ack = False
    phone.invite()
    world.tick()
    assert 200 in phone.statuses() and phone.media_port is not None
    return world, phone, media


def test_an_invite_answered_and_never_acked_sends_no_rtp_or_rtcp_to_its_sdp_address() -> None:
    world, phone, media = answered_without_ack()
    world.run(64 * T1 + 2.0)  # every 2xx retransmission, then the BYE that gives up on the ACK
    assert phone.statuses().count(200) > 5 and any(r.method == "BYE" for r in phone.requests)
    assert world.engine.calls == {}
    assert media.to_host(phone.rtp_address[0]) == []
    assert media.sent == []


def test_with_the_ack_media_flows_within_one_tick() -> None:
    world, phone, media = answered_without_ack()
    world.run(1.0)
    assert media.sent == []
    phone.ack(phone.last(200))
    world.tick()
    assert [destination for _port, _data, destination in media.sent] == [phone.rtp_address]
    world.run(5.0)  # the first RTCP report is due within RFC 3550's first interval
    rtcp_to = {destination for port, _data, destination in media.sent if port % 2}
    assert rtcp_to == {(phone.rtp_address[0], phone.rtp_address[1] + 1)}


def test_without_the_ack_the_callers_own_rtp_from_the_sdp_address_proves_it() -> None:
    world, phone, media = answered_without_ack()
    world.run(1.0)
    assert media.sent == []
    phone.sending = True  # its RTP, from the address its SDP named
    world.tick()
    assert [destination for _port, _data, destination in media.sent] == [phone.rtp_address]


def test_audio_of_a_call_not_yet_confirmed_is_not_sent_later_in_a_burst() -> None:
    world, phone, media = answered_without_ack()
    world.run(1.0)
    phone.ack(phone.last(200))
    for _ in range(5):
        before = len(media.sent)
        world.tick()
        assert len(media.sent) - before == 1  # one packet a tick: the second not sent is not caught up
    stamps = [item.packet.timestamp for item in phone.rx]
    assert all((b - a) % 2**32 == 160 for a, b in itertools.pairwise(stamps))


# ---- the session on its own


def test_an_unconfirmed_session_sends_nothing_until_the_sdp_address_or_a_learned_one_proves_itself() -> None:
    rtp = RtpSession(PARAMS, ssrc=OUR_SSRC, now=0.0, random=random.Random(1), confirmed=False)
    assert rtp.destination is None and rtp.rtcp_destination is None
    assert rtp.send(b"\xff" * 160, 0.02) == []
    assert rtp.rtcp_due(10.0) is None

    for sequence in range(LEARNING_PACKETS):  # a caller behind NAT: its own source, once learned, is proven
        rtp.receive(build_rtp(RtpPacket(0, sequence, sequence * 160, THEIR_SSRC, b"\x10" * 160)), NAT_ADDRESS, 0.1)
    assert rtp.destination == NAT_ADDRESS
    assert len(rtp.send(b"\xff" * 160, 0.12)) == 1

    confirmed = RtpSession(PARAMS, ssrc=OUR_SSRC, now=0.0, random=random.Random(1), confirmed=False)
    confirmed.confirm()  # the ACK: the SDP's own addresses may be sent to
    assert confirmed.destination == SDP_ADDRESS and confirmed.rtcp_destination == SDP_RTCP


# ---- Via received=


def test_a_received_parameter_the_client_wrote_is_overwritten_with_the_packets_source() -> None:
    world = World()
    phone = world.phone()
    host, port = phone.sip_address
    invite = phone.invite_bytes()
    forged = f"Via: SIP/2.0/UDP {host}:{port};branch={phone.invite_branch};received={THIRD_PARTY}"
    lines = [forged if line.startswith("Via:") else line for line in invite.decode().split("\r\n")]
    world.engine.receive_sip("\r\n".join(lines).encode(), phone.sip_address, world.now)
    world.pump()
    assert world.stray_sip == []  # nothing to 198.51.100.7
    assert phone.statuses()[:2] == [100, 180]
    assert {response.top_via.received for response in phone.responses} <= {None, host}
