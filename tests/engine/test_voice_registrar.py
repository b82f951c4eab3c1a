"""The voice engine with SIP accounts (`EngineSettings.sip_accounts`), driven whole with a fake clock: a call from an
account is challenged (407) and, once it proves the account, its room goes to the answer webhook; the allow list,
which is for trunks, does not stop it."""

from __future__ import annotations

import ipaddress
import random

from dialbridge.engine.core import EngineSettings
from dialbridge.sip.auth import DigestClient, DigestCredentials, parse_challenges
from dialbridge.sip.registrar import SipAccount
from tests.engine.fake_engine import ANSWER_URL, ENGINE_HOST, EVENT_URL, Phone, World

ALICE = SipAccount("alice", "s3cret", "team-room")


def world(**changes: object) -> World:
    settings = EngineSettings(
        contact_host=ENGINE_HOST,
        contact_port=5060,
        answer_url=ANSWER_URL,
        event_url=EVENT_URL,
        sip_accounts=(ALICE, SipAccount("bob", "pw")),
        allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),),  # the phones below are not in it
        **changes,  # type: ignore[arg-type]
    )
    return World(settings=settings)


def account_call(phone: Phone, password: str) -> None:
    """INVITE from the account at the engine's domain; answer the 407 with `password`."""
    phone.send(from_our_domain(phone))
    assert phone.statuses() == [100, 407]
    (challenge,) = parse_challenges(phone.last(407).headers.get_all("Proxy-Authenticate"))[:1]
    client = DigestClient(DigestCredentials(phone.caller, password), random.Random(1))
    phone.cseq += 1
    phone.x_headers = {"Proxy-Authorization": client.authorization(challenge, "INVITE", phone.engine_target)}
    phone.send(from_our_domain(phone))


def from_our_domain(phone: Phone) -> bytes:
    """The phone's INVITE with its From at the engine's domain, as a phone registered there writes it."""
    return phone.invite_bytes().replace(
        f"@{phone.sip_address[0]}:{phone.sip_address[1]}>;tag".encode(), f"@{ENGINE_HOST}>;tag".encode()
    )


def test_an_account_call_is_challenged_and_then_its_room_reaches_the_answer_webhook() -> None:
    w = world()
    phone = w.phone(caller="alice")
    account_call(phone, "s3cret")

    assert phone.statuses()[-2:] == [100, 180]  # past the allow list: the account proved itself
    [fetch] = w.fetches
    assert fetch.query["sip_account"] == "alice"
    assert fetch.query["sip_account_room"] == "team-room"
    assert fetch.query["from"] == "alice"


def test_an_account_without_a_room_is_named_without_one() -> None:
    w = world()
    phone = w.phone(caller="bob")
    account_call(phone, "pw")
    [fetch] = w.fetches
    assert fetch.query["sip_account"] == "bob" and "sip_account_room" not in fetch.query


def test_a_wrong_password_gets_403_and_no_call() -> None:
    w = world()
    phone = w.phone(caller="alice")
    account_call(phone, "guess")
    assert phone.statuses()[-2:] == [100, 403]
    assert w.fetches == []


def test_a_caller_outside_the_allow_list_claiming_nothing_is_still_refused() -> None:
    w = world()
    phone = w.phone(caller="alice")  # alice, but at its own host: not our account's address
    phone.invite()
    assert phone.statuses() == [100, 403]
    assert w.fetches == []
