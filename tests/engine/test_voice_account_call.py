"""Calling a registered softphone, through the real core with a fake clock: a connect (or POST /v1/calls) to one of
our accounts at our own domain calls the phone registered for it — at the binding's Contact as the Request-URI, but
sent to where its REGISTER came from (behind NAT the Contact names an address nobody can reach), as are the ACK and
the BYE. No binding: the connect fails at once and the NCCO carries on."""

from __future__ import annotations

import random
from typing import Any

from dialbridge.engine.calls import SipEndpoint, parse_ncco
from dialbridge.sip.auth import DigestClient, DigestCredentials, parse_challenges
from dialbridge.sip.registrar import SipAccount
from tests.engine.fake_engine import ENGINE_HOST, Callee, Phone, World, tone, tone_share
from tests.engine.test_voice_connect import A_HZ, B_HZ, CONNECT_EVENTS, NEXT_HZ, connect, placed_uuid
from tests.engine.test_voice_engine import assert_idle, connected, settings_with, talk, world_with

ALICE = SipAccount("alice", "s3cret")
ALICE_URI = f"sip:alice@{ENGINE_HOST}"
PRIVATE_CONTACT = "sip:alice@192.168.1.20:5060"  # what the phone writes: its address behind the NAT


class Softphone(Callee):
    """A softphone behind NAT: it registers an account from its public address (`sip_address`) with a Contact naming
    its private one, and answers the engine's INVITEs as `Callee` does, over `transport` both ways."""

    def __init__(
        self, world: World, *, host: str, contact: str = PRIVATE_CONTACT, transport: str = "udp", **kwargs: Any
    ) -> None:
        super().__init__(world, host=host, sip_port=40_123, **kwargs)
        self.contact = contact  # its 200s' Contact as well: the NAT hides it all the same
        self.transport = transport

    def register(self, account: SipAccount = ALICE) -> None:
        """REGISTER, answer the 401 with the account's credentials; the binding lives 600 s."""
        self.deliver(self._register_bytes(account, None))
        challenge = self.responses[-1]
        assert challenge.status == 401, challenge
        [offered, *_] = parse_challenges(challenge.headers.get_all("WWW-Authenticate"))
        client = DigestClient(DigestCredentials(account.username, account.password), random.Random(1))
        authorization = client.authorization(offered, "REGISTER", f"sip:{ENGINE_HOST}")
        self.deliver(self._register_bytes(account, authorization))
        assert self.responses[-1].status == 200, self.responses[-1]

    def _register_bytes(self, account: SipAccount, authorization: str | None) -> bytes:
        self.cseq += 1
        lines = [
            f"REGISTER sip:{ENGINE_HOST} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} 192.168.1.20:5060;rport;branch={self.register_branch()}",
            f"From: <sip:{account.username}@{ENGINE_HOST}>;tag=reg{self.from_tag}",
            f"To: <sip:{account.username}@{ENGINE_HOST}>",
            f"Call-ID: reg-{self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <{self.contact}>",
            "Expires: 600",
            "Max-Forwards: 70",
        ]
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def register_branch(self) -> str:
        return f"z9hG4bK-reg{self.from_tag}-{self.cseq}"  # unique across phones: all share one private sent-by

    def on_tick(self) -> None:
        outbox, self._outbox = self._outbox, []
        for data in outbox:
            self.deliver(data)

    def deliver(self, data: bytes) -> None:
        self.world.engine.receive_sip(data, self.sip_address, self.world.now, self.transport)
        self.world.pump()

    def methods(self) -> list[str]:
        return [request.method for request in self.requests]


def account_world(ncco: list[dict[str, Any]], **settings: Any) -> World:
    world = world_with(ncco, settings=settings_with(sip_accounts=(ALICE,), **settings))
    world.audio["next"] = tone(NEXT_HZ, 2.0)
    return world


def connect_alice() -> dict[str, Any]:
    return connect({"type": "sip", "uri": ALICE_URI})


def softphone(world: World, host: str = "203.0.113.77", **kwargs: Any) -> Softphone:
    phone = Softphone(world, host=host, voice=tone(B_HZ, 1.0), **kwargs)
    phone.register()
    return phone


def test_a_connect_to_a_registered_account_calls_its_phone_where_it_registered_from_and_both_hear_each_other() -> None:
    world = account_world([connect_alice()])
    alice = softphone(world)
    caller = world.phone(voice=tone(A_HZ, 1.0))
    caller_uuid = connected(world, caller)
    world.run(1.0)

    [invite] = alice.invites
    assert str(invite.uri) == PRIVATE_CONTACT  # the binding's Contact is the Request-URI ...
    assert world.stray_sip == []  # ... but the INVITE, and the ACK, went to where it registered from
    assert alice.methods() == ["INVITE", "ACK"]
    since = world.now - 0.5
    assert tone_share(caller.heard(since), B_HZ) > 0.5
    assert tone_share(alice.heard(since), A_HZ) > 0.5

    uuid = placed_uuid(world, caller_uuid)
    assert world.statuses(uuid) == ["started", "ringing", "answered"]
    assert world.event(uuid, "answered")["to"] == ALICE_URI
    assert world.event_urls[uuid] == {CONNECT_EVENTS}


def talking_to_alice() -> tuple[World, Softphone, Phone, str]:
    """A caller whose NCCO connected it to alice's registered softphone, a second ago; the caller's uuid last."""
    world = account_world([connect_alice()])
    alice = softphone(world)
    caller = world.phone()
    caller_uuid = connected(world, caller)
    world.run(1.0)
    return world, alice, caller, caller_uuid


def test_the_softphone_hanging_up_ends_the_connect_and_the_caller_with_the_ncco() -> None:
    world, alice, caller, caller_uuid = talking_to_alice()

    alice.hang_up()
    world.run(0.2)

    assert world.statuses(placed_uuid(world, caller_uuid))[-1] == "completed"
    assert "BYE" in [r.method for r in caller.requests]
    assert world.statuses(caller_uuid)[-1] == "completed"
    assert_idle(world)


def test_the_caller_hanging_up_sends_the_softphone_a_bye_where_it_registered_from() -> None:
    world, alice, caller, caller_uuid = talking_to_alice()

    caller.bye()
    world.run(0.2)

    assert alice.methods() == ["INVITE", "ACK", "BYE"]
    assert world.stray_sip == []
    assert world.statuses(placed_uuid(world, caller_uuid))[-1] == "completed"
    assert_idle(world)


def test_an_account_with_no_phone_registered_fails_at_once_and_the_ncco_carries_on() -> None:
    world = account_world([connect_alice(), talk("next")])
    caller = world.phone()
    caller_uuid = connected(world, caller)
    world.run(0.5)

    uuid = placed_uuid(world, caller_uuid)
    assert world.statuses(uuid) == ["started", "failed"]
    assert world.stray_sip == []  # nothing was sent to the account's URI (our own address)
    assert tone_share(caller.heard(world.now - 0.4), NEXT_HZ) > 0.5


def test_of_several_phones_registered_the_most_recently_refreshed_is_called() -> None:
    world = account_world([connect_alice()])
    desk = softphone(world, "203.0.113.80", contact="sip:alice@192.168.1.20:5060")
    world.run(1.0)
    mobile = softphone(world, "203.0.113.81", contact="sip:alice@10.1.2.3:5062")
    world.run(1.0)
    desk.register()  # the desk phone refreshes its binding: it is the one most recently heard from

    connected(world, world.phone())
    world.run(0.5)

    assert [str(invite.uri) for invite in desk.invites] == ["sip:alice@192.168.1.20:5060"]
    assert mobile.invites == []


def test_over_tcp_the_softphone_is_called_over_the_connection_it_registered_on() -> None:
    world = account_world([connect_alice()])
    alice = softphone(world, transport="tcp", contact=f"{PRIVATE_CONTACT};transport=tcp")
    caller = world.phone(voice=tone(A_HZ, 1.0))
    connected(world, caller)
    world.run(1.0)

    [invite] = alice.invites
    assert invite.top_via.transport.upper() == "TCP"
    assert alice.methods() == ["INVITE", "ACK"]  # both to the connection's far end, the phone's source address
    assert tone_share(alice.heard(world.now - 0.5), A_HZ) > 0.5


def test_over_tcp_a_phone_whose_connection_closed_is_called_at_its_contact_over_a_new_one() -> None:
    world = account_world([connect_alice()])
    alice = softphone(world, transport="tcp", contact="sip:alice@192.0.2.44:5070;transport=tcp")
    world.engine.transport_failed(alice.sip_address, world.now)  # the phone's connection closed
    connected(world, world.phone())
    world.run(0.2)

    assert alice.invites == []  # its source port was the closed connection's: nothing listens there
    [(destination, data)] = world.stray_sip
    assert destination == ("192.0.2.44", 5070)  # where its Contact says it takes connections
    assert data.startswith(b"INVITE sip:alice@192.0.2.44:5070;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP ")


def test_a_created_call_to_an_account_rings_its_registered_phone() -> None:
    world = account_world([])
    alice = softphone(world)
    created = world.engine.create_call(
        SipEndpoint(ALICE_URI), "447700900000", parse_ncco([talk("next")]), world.now, event_url=CONNECT_EVENTS
    )
    world.run(1.0)

    assert [str(invite.uri) for invite in alice.invites] == [PRIVATE_CONTACT]
    assert world.statuses(created.uuid) == ["started", "ringing", "answered"]
    assert tone_share(alice.heard(world.now - 0.5), NEXT_HZ) > 0.5
