"""RFC 4475's 49 torture messages, each fed to the voice engine's core as one UDP datagram, with a fake clock.

The messages are the RFC's own bytes (`tests/engine/rfc4475/`, see its README). For each, the table says what the
RFC asks of a receiving endpoint (a UAS) and what the engine therefore answers: a request it can handle is handled
as any other (an INVITE to the dial-in user rings and asks the app for its NCCO, an OPTIONS gets 200, a method the
engine knows but does not serve 405, one it does not know 501), an invalid one that can be addressed gets the code
the RFC names (400, 505, 416, ...), and a response nobody asked for is dropped. Whatever the message: no traceback,
no error in the log, and the engine still answers an OPTIONS afterwards.

Where the RFC leaves a choice, the table says which one the engine makes and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from dialbridge.engine.core import EngineSettings
from tests.engine.fake_engine import ANSWER_URL, ENGINE_HOST, EVENT_URL, IDLE, World

MESSAGES = Path(__file__).parent / "rfc4475"
SOURCE = ("192.0.2.250", 5060)  # where every datagram comes from (none of the messages' own Via hosts)
CALL = "call"  # an INVITE handled as a call: 100 Trying, 180 Ringing, the answer webhook asked


@dataclass(frozen=True)
class Torture:
    name: str
    section: str
    expect: int | str | None  # final status, CALL, or None: no response at all (a response fed in is dropped)
    why: str
    dial_in_user: str = "dialin"  # for CALL: the user the engine is configured to answer (the Request-URI's)


TABLE: list[Torture] = [
    # 3.1.1 valid messages: all must be handled as well-formed.
    Torture("wsinv", "3.1.1.1", 481, "well-formed (folding, LWS, 0068); To has a tag: a re-INVITE of no dialog"),
    Torture("intmeth", "3.1.1.2", 501, "unknown method (token chars); `?` in the URI's user part is no header"),
    Torture("esc01", "3.1.1.3", CALL, "% escapes in URIs: the user is sips:user@example.com", "sips:user@example.com"),
    Torture("escnull", "3.1.1.4", 405, "well-formed REGISTER (%00 in users); the engine is no registrar"),
    Torture("esc02", "3.1.1.5", 501, "RE%47IST%45R is an unknown method, not REGISTER: an endpoint answers 501"),
    Torture("lwsdisp", "3.1.1.6", 200, "no LWS between display name and <: accepted"),
    Torture("longreq", "3.1.1.7", CALL, "long values and many headers, under the size limit", "user"),
    Torture("dblreq", "3.1.1.8", 405, "the REGISTER is handled; the INVITE after its body is ignored noise"),
    Torture("semiuri", "3.1.1.9", 200, "OPTIONS, `;` inside the Request-URI's user part"),
    Torture("transports", "3.1.1.10", 200, "OPTIONS with Vias of every transport"),
    Torture("mpart01", "3.1.1.11", 405, "multipart MESSAGE with NULs in the body parses; MESSAGE is not served"),
    Torture("unreason", "3.1.1.12", None, "a 200 with a UTF-8 reason phrase: a response to nothing, dropped"),
    Torture("noreason", "3.1.1.13", None, "a response without reason phrase: parsed, matches nothing, dropped"),
    # 3.1.2 invalid messages.
    Torture("badinv01", "3.1.2.1", 400, "Via `;;,;,,` and Contact `;;;`: 400"),
    Torture("clerr", "3.1.2.2", 400, "Content-Length beyond the datagram (UDP): 400"),
    Torture("ncl", "3.1.2.3", 400, "negative Content-Length: an error (400)"),
    Torture("scalar02", "3.1.2.4", 400, "CSeq > 2**32-1: 400 (Max-Forwards 300 alone would not be)"),
    Torture("scalarlg", "3.1.2.5", None, "a response with overlarge scalars: discarded"),
    Torture("quotbal", "3.1.2.6", 400, "unterminated quote in To's display name: 400"),
    Torture("ltgtruri", "3.1.2.7", 400, "Request-URI in <>: 400 (not 416: `<sip` is no scheme)"),
    Torture("lwsruri", "3.1.2.8", 400, "LWS inside the Request-URI: 400"),
    Torture("lwsstart", "3.1.2.9", 400, "several SP between Request-Line elements: rejected as malformed (400)"),
    Torture("trws", "3.1.2.10", 400, "SP after SIP-Version: rejected as malformed (400)"),
    Torture("escruri", "3.1.2.11", 400, "URI headers in the Request-URI: 400"),
    Torture("baddate", "3.1.2.12", CALL, "non-GMT Date: unused by the engine, so ignored as allowed", "user"),
    Torture("regbadct", "3.1.2.13", 400, "Contact addr-spec with URI headers and no <>: 400"),
    Torture("badaspec", "3.1.2.14", 200, "spaces inside To's <>: the RFC allows ignoring them; the engine does"),
    Torture("baddn", "3.1.2.15", 200, "unquoted non-token display names: the RFC allows being liberal; it is"),
    Torture("badvers", "3.1.2.16", 505, "SIP/7.0: 505 Version Not Supported"),
    Torture("mismatch01", "3.1.2.17", 400, "CSeq method INVITE on an OPTIONS: 400"),
    Torture("mismatch02", "3.1.2.18", 400, "unknown method with CSeq INVITE: 400 (the RFC accepts it; prefers 501)"),
    Torture("bigcode", "3.1.2.19", None, "a response code > 699: dropped"),
    # 3.2 transaction-layer semantics.
    Torture("badbranch", "3.2.1", 200, "branch=z9hG4bK without id: the RFC 2543 transaction match, as allowed"),
    # 3.3 application-layer semantics.
    Torture("insuf", "3.3.1", None, "no To, From, Call-ID: no response can carry them; dropped, not broken"),
    Torture("unkscm", "3.3.2", 416, "unknown Request-URI scheme: 416"),
    Torture("novelsc", "3.3.3", 416, "soap.beep: scheme the engine never serves: 416"),
    Torture("unksm2", "3.3.4", 405, "isbn:/http:/name: URIs in To/From/Contact parse; REGISTER is not served"),
    Torture("bext01", "3.3.5", 420, "Require of unknown extensions: 420 with Unsupported"),
    Torture("invut", "3.3.6", 415, "INVITE with an unknown body type: 415 with Accept"),
    Torture("regaut01", "3.3.7", 405, "unknown Authorization scheme on a REGISTER, which is not served"),
    Torture("multi01", "3.3.8", 400, "two To, From, Call-ID, CSeq and Max-Forwards: 400"),
    Torture("mcl01", "3.3.9", 400, "two different Content-Length values: 400"),
    Torture("bcast", "3.3.10", None, "a 200 (broadcast Via) to an INVITE the engine never sent: dropped"),
    Torture("zeromf", "3.3.11", 200, "Max-Forwards 0 at an endpoint: processed as if positive"),
    Torture("cparam01", "3.3.12", 405, "Contact addr-spec with a header parameter: valid REGISTER, not served"),
    Torture("cparam02", "3.3.13", 405, "Contact with a URI parameter: valid REGISTER, not served"),
    Torture("regescrt", "3.3.14", 405, "Contact with an escaped Route header in <>: valid REGISTER, not served"),
    Torture("sdp01", "3.3.15", 406, "Accept without application/sdp on an INVITE: 406, no SDP can be sent"),
    # 3.4 backward compatibility.
    Torture("inv2543", "3.4.1", CALL, "an RFC 2543 INVITE (no branch, no tags, no Max-Forwards): a call", "UserB"),
]


def test_the_table_holds_every_message_of_the_rfc_once() -> None:
    names = [case.name for case in TABLE]
    assert len(names) == len(set(names)) == 49
    assert sorted(names) == sorted(path.stem for path in MESSAGES.glob("*.dat"))


def _world(dial_in_user: str) -> World:
    settings = EngineSettings(
        contact_host=ENGINE_HOST,
        contact_port=5060,
        answer_url=ANSWER_URL,
        event_url=EVENT_URL,
        dial_in_user=dial_in_user,
    )
    return World(settings=settings)  # the answer webhook is held: a call stays ringing


@dataclass(frozen=True)
class Answer:
    """A response of the engine, read loosely: some echo the torture message's own broken headers."""

    status: int
    headers: dict[str, list[str]]

    def values(self, name: str) -> list[str]:
        return [item.strip() for value in self.headers.get(name.lower(), []) for item in value.split(",")]


def _responses(world: World) -> list[Answer]:
    answers = []
    for _, data in world.stray_sip:
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
        assert head[0].startswith("SIP/2.0 "), data
        headers: dict[str, list[str]] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        answers.append(Answer(int(head[0].split(" ")[1]), headers))
    world.stray_sip.clear()
    return answers


OPTIONS_PING = (
    b"OPTIONS sip:dialin@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.250:5060;branch=z9hG4bK-after-torture\r\n"
    b"From: <sip:tester@192.0.2.250>;tag=after\r\n"
    b"To: <sip:dialin@198.51.100.1>\r\n"
    b"Call-ID: after-torture\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize("case", TABLE, ids=[f"{case.section}-{case.name}" for case in TABLE])
def test_rfc4475_message(case: Torture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = (MESSAGES / f"{case.name}.dat").read_bytes()
    world = _world(case.dial_in_user)

    world.engine.receive_sip(data, SOURCE, world.now)
    world.pump()
    responses = _responses(world)
    statuses = [response.status for response in responses]

    if case.expect is None:
        assert statuses == [], case.why
    elif case.expect == CALL:
        assert statuses == [100, 180], case.why
        assert len(world.fetches) == 1, case.why
    else:
        finals = [status for status in statuses if status >= 200]
        assert finals == [case.expect], f"{case.why}: got {statuses}"
        assert not world.fetches, "no call may start"
        final = next(response for response in responses if response.status >= 200)
        if case.expect in (405, 501):
            assert "INVITE" in final.values("Allow"), "it lists the methods the engine serves"
        if case.expect == 415:
            assert final.values("Accept") == ["application/sdp"]
        if case.expect == 420:
            assert final.values("Unsupported") == ["nothingSupportsThis", "nothingSupportsThisEither"]

    # The engine goes on: it still answers, and nothing it held for this message outlives the SIP timers.
    world.engine.receive_sip(OPTIONS_PING, SOURCE, world.now)
    world.pump()
    assert [response.status for response in _responses(world)] == [200]
    if case.expect != CALL:
        world.advance(70.0)
        assert world.idle() == IDLE
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == []
