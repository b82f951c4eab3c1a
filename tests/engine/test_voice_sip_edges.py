"""`dialbridge voice` at the edges, over real UDP and TCP sockets: bad input, limits, CANCEL, floods, signatures.

Each test runs the engine alone (`stack.voice_engine`) with its webhooks pointed at an `NccoApp` of the test's own,
which records every request and checks it with dialbridge's signature verifier. Requests are written byte by byte
here (or by SIPp where a whole call flow matters), so each case says exactly what went on the wire. Every test
ends by checking that the engine is still running and still answers OPTIONS.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dnsmasq import DNS_PORT, DNSMASQ, dns_server
from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, received_audio
from tests.engine.stack import (
    SECRET,
    NccoApp,
    VoiceEngineProcess,
    free_port,
    options_ping,
    voice_engine,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

CONFERENCE = [{"action": "conversation", "name": "edges"}]
Address = tuple[str, int]


# ---- a SIP peer written out by hand ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def cseq(self) -> str:
        return self.header("cseq") or ""

    def sdp_port(self) -> int:
        for line in self.body.decode().splitlines():
            if line.startswith("m=audio "):
                return int(line.split()[1])
        raise AssertionError(f"no m=audio line in {self.body!r}")


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("SIP/2.0 "), f"not a response: {lines[0]!r}"
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(lines[0].split()[1]), headers, body, data)


def offer(port: int, media: str = "audio", formats: str = "0 8 101") -> bytes:
    names = {
        "0": "PCMU/8000",
        "8": "PCMA/8000",
        "9": "G722/8000",
        "18": "G729/8000",
        "96": "VP8/90000",
        "101": "telephone-event/8000",
    }
    rtpmaps = "".join(f"a=rtpmap:{pt} {names[pt]}\r\n" for pt in formats.split())
    return (
        f"v=0\r\no=tester 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m={media} {port} RTP/AVP {formats}\r\n{rtpmaps}a=sendrecv\r\n"
    ).encode()


class Peer:
    """A UDP (or TCP) SIP endpoint at `host`, talking to the engine at 127.0.0.1:engine_port."""

    def __init__(self, engine_port: int, host: str = "127.0.0.1", transport: str = "udp") -> None:
        self.engine: Address = ("127.0.0.1", engine_port)
        self.transport = transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, 0))
        else:
            self.sock = socket.create_connection(self.engine, timeout=5, source_address=(host, 0))
        self.local: Address = self.sock.getsockname()
        self._stream = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.engine)
        else:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        *,
        user: str = "dialin",
        call_id: str,
        cseq: int = 1,
        to_tag: str | None = None,
        body: bytes = b"",
        extra: tuple[str, ...] = (),
        branch: str | None = None,
        contact: str | None = None,
    ) -> bytes:
        host, port = self.local
        branch = branch or f"z9hG4bK-{uuid.uuid4().hex}"
        lines = [
            f"{method} sip:{user}@127.0.0.1:{self.engine[1]} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {host}:{port};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:tester@{host}>;tag=from-{call_id}",
            f"To: <sip:{user}@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {contact or f'<sip:tester@{host}:{port}>'}",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def receive(self, timeout: float) -> Response | None:
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                data, _ = self.sock.recvfrom(65535)
                return parse_response(data)
            while b"\r\n\r\n" not in self._stream:
                chunk = self.sock.recv(65535)
                if not chunk:
                    return None
                self._stream += chunk
            head, _, rest = self._stream.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(rest) < length:
                rest += self.sock.recv(65535)
            self._stream = rest[length:]
            return parse_response(head + b"\r\n\r\n" + rest[:length])
        except TimeoutError:
            return None

    def final(self, data: bytes, timeout: float = 5.0) -> Response:
        """Send a request and return its final response (provisional ones are skipped)."""
        self.send(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.receive(max(0.01, deadline - time.monotonic()))
            if response is not None and response.status >= 200:
                return response
        raise AssertionError(f"no final response within {timeout} s to:\n{data[:300].decode(errors='replace')}")

    def silent(self, data: bytes, wait: float = 0.6) -> Response | None:
        """Send `data`; whatever answer comes within `wait` seconds (None: the engine dropped it)."""
        self.send(data)
        return self.receive(wait)


@dataclass
class RawCall:
    """An answered call placed by a `Peer`: INVITE → 200 → ACK; `bye()` ends it."""

    peer: Peer
    call_id: str
    to_tag: str
    engine_rtp: int
    media: socket.socket

    @classmethod
    def place(
        cls, peer: Peer, timeout: float = 10.0, contact: str | None = None, extra: tuple[str, ...] = ()
    ) -> RawCall:
        """`contact`: the INVITE's Contact (where the engine sends its in-dialog requests); the peer's own if None.
        `extra`: more header lines for the INVITE."""
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        media.bind(("127.0.0.1", 0))
        call_id = f"raw-{uuid.uuid4().hex}"
        invite = peer.request(
            "INVITE", call_id=call_id, body=offer(media.getsockname()[1]), contact=contact, extra=extra
        )
        ok = peer.final(invite, timeout)
        assert ok.status == 200, f"the call was not answered: {ok.raw[:200]!r}"
        to_tag = (ok.header("to") or "").split("tag=")[1].split(";")[0]
        peer.send(peer.request("ACK", call_id=call_id, to_tag=to_tag))
        return cls(peer, call_id, to_tag, ok.sdp_port(), media)

    def send_rtp(self, count: int, ssrc: int = 0xCA11) -> None:
        for i in range(count):
            header = struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc)
            self.media.sendto(header + b"\xff" * 160, ("127.0.0.1", self.engine_rtp))
            time.sleep(0.02)

    def bye(self) -> Response:
        response = self.peer.final(self.peer.request("BYE", call_id=self.call_id, cseq=2, to_tag=self.to_tag))
        self.media.close()
        return response


# ---- fixtures ----------------------------------------------------------------------------------------------------


@contextmanager
def engine_for(tmp_path: Path, app: NccoApp, **env: str) -> Iterator[VoiceEngineProcess]:
    """The engine driving `app`; afterwards it must still be running and answering OPTIONS."""
    with voice_engine(tmp_path, **app.env, **env) as engine:
        yield engine
        assert engine.alive(), f"the engine died:\n{engine.log.read_text()[-3000:]}"
        assert options_ping(engine.sip_port, timeout=2), "the engine no longer answers OPTIONS"
        assert "Traceback" not in engine.log.read_text(), engine.log.read_text()[-3000:]


@pytest.fixture
def app() -> Iterator[NccoApp]:
    with NccoApp(CONFERENCE) as running:
        yield running


@pytest.fixture
def engine(tmp_path: Path, app: NccoApp) -> Iterator[VoiceEngineProcess]:
    with engine_for(tmp_path, app) as running:
        yield running


@pytest.fixture
def peer(engine: VoiceEngineProcess) -> Iterator[Peer]:
    p = Peer(engine.sip_port)
    yield p
    p.close()


# ---- parsing and addressing ----------------------------------------------------------------------------------------


def test_options_is_answered_200_with_what_the_engine_allows(peer: Peer) -> None:
    response = peer.final(peer.request("OPTIONS", call_id="options-1"))
    assert response.status == 200
    allowed = {m.strip() for m in (response.header("allow") or "").split(",")}
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"} <= allowed, response.header("allow")
    assert response.header("call-id") == "options-1" and response.cseq == "1 OPTIONS"


@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("bad Max-Forwards", lambda m: m.replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")),
        ("bad Content-Length", lambda m: m.replace(b"Content-Length: 0", b"Content-Length: ten")),
        ("body shorter than Content-Length", lambda m: m.replace(b"Content-Length: 0", b"Content-Length: 400")),
        (
            "bad Contact port",
            lambda m: m.replace(b"Contact: <sip:tester@127.0.0.1:", b"Contact: <sip:tester@127.0.0.1:x"),
        ),
        ("bad Request-URI", lambda m: m.replace(b"INVITE sip:dialin@127.0.0.1:", b"INVITE sip:dialin@[127.0.0.1:")),
    ],
)
def test_malformed_requests_that_can_be_addressed_get_400(peer: Peer, name: str, mangle: object) -> None:
    assert callable(mangle)
    message = mangle(peer.request("INVITE", call_id=f"bad-{name.replace(' ', '-')}"))
    response = peer.silent(message, wait=2.0)
    assert response is not None, f"{name}: no answer"
    assert response.status == 400, f"{name}: {response.raw[:200]!r}"
    assert response.header("call-id") == f"bad-{name.replace(' ', '-')}" and response.cseq == "1 INVITE"


def test_a_request_of_another_sip_version_gets_505(peer: Peer) -> None:
    message = peer.request("INVITE", call_id="v3").replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)
    response = peer.silent(message, wait=2.0)
    assert response is not None and response.status == 505


def test_datagrams_that_cannot_be_addressed_are_dropped(peer: Peer, engine: VoiceEngineProcess) -> None:
    good = peer.request("INVITE", call_id="unaddressable")
    cases = {
        "random bytes": os.urandom(300),
        "no Via": b"\r\n".join(line for line in good.split(b"\r\n") if not line.startswith(b"Via:")),
        "no Call-ID": b"\r\n".join(line for line in good.split(b"\r\n") if not line.startswith(b"Call-ID:")),
        "header line without a colon": good.replace(b"Max-Forwards: 70", b"Max-Forwards 70"),
        "headers not UTF-8": good.replace(b"From: <sip:tester", b"From: \xff\xfe<sip:tester"),
        "a response to nothing": b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-x\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: stray\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n",
        "keep-alive CRLFs": b"\r\n\r\n",
        "empty": b"",
    }
    for name, data in cases.items():
        answer = peer.silent(data, wait=0.4)
        assert answer is None, f"{name}: the engine answered {answer.raw[:120]!r}"
    assert peer.final(peer.request("OPTIONS", call_id="after-junk")).status == 200


def _oversized_invite_gets_513(engine: VoiceEngineProcess, transport: str) -> None:
    padding = tuple(f"X-Padding-{i}: {'p' * 100}" for i in range(200))  # ~22 kB of headers: over the 16 kB limit
    peer = Peer(engine.sip_port, transport=transport)
    try:
        message = peer.request("INVITE", call_id=f"big-{transport}", extra=padding, body=offer(4000))
        assert len(message) > 20_000
        response = peer.silent(message, wait=2.0)
        assert response is not None, f"{transport}: no answer to an oversized INVITE"
        assert response.status == 513, f"{transport}: {response.raw[:200]!r}"
        assert response.header("call-id") == f"big-{transport}"
    finally:
        peer.close()


def test_an_oversized_invite_gets_513_over_udp(engine: VoiceEngineProcess) -> None:
    _oversized_invite_gets_513(engine, "udp")


def test_an_oversized_invite_gets_513_over_tcp(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app) as engine:
        _oversized_invite_gets_513(engine, "tcp")
        peer = Peer(engine.sip_port, transport="tcp")  # and the next connection is served as usual
        assert peer.final(peer.request("OPTIONS", call_id="tcp-options")).status == 200
        peer.close()


def test_a_bare_lf_request_is_answered_over_tcp_as_over_udp(engine: VoiceEngineProcess) -> None:
    for transport in ("udp", "tcp"):
        peer = Peer(engine.sip_port, transport=transport)
        request = peer.request("OPTIONS", call_id=f"bare-lf-{transport}").replace(b"\r\n", b"\n")
        try:
            assert peer.final(request).status == 200, transport
        finally:
            peer.close()


def test_a_double_crlf_ping_over_tcp_gets_a_crlf_pong_and_the_connection_goes_on(engine: VoiceEngineProcess) -> None:
    peer = Peer(engine.sip_port, transport="tcp")
    try:
        peer.send(b"\r\n\r\n")
        assert peer.sock.recv(16) == b"\r\n"  # RFC 5626 §4.4.1
        assert peer.final(peer.request("OPTIONS", call_id="after-a-ping")).status == 200
    finally:
        peer.close()


def test_an_invite_for_an_unknown_user_gets_404(peer: Peer, app: NccoApp) -> None:
    response = peer.final(peer.request("INVITE", user="someone-else", call_id="nobody", body=offer(4000)))
    assert response.status == 404
    peer.send(peer.request("ACK", user="someone-else", call_id="nobody", to_tag=_tag(response)))
    time.sleep(0.3)
    assert app.recorded() == [], "a refused call still reached the application"


def test_offers_without_usable_audio_get_488(peer: Peer, app: NccoApp) -> None:
    offers = {
        "video only": offer(4000, media="video", formats="96"),
        "G.722 only": offer(4000, formats="9"),
        "G.729 only": offer(4000, formats="18"),
        "G.729 and telephone-event": offer(4000, formats="18 101"),
        "telephone-event only": offer(4000, formats="101"),
        "audio only on port 0 (a disabled stream, RFC 3264 §5.1)": offer(0),
    }
    for name, body in offers.items():
        response = peer.final(peer.request("INVITE", call_id=f"offer-{name.replace(' ', '-')}", body=body))
        assert response.status == 488, f"{name}: {response.raw[:200]!r}"
        assert response.header("warning") == '305 dialbridge "Incompatible media format"', name
        peer.send(peer.request("ACK", call_id=f"offer-{name.replace(' ', '-')}", to_tag=_tag(response)))
    time.sleep(0.3)
    assert app.recorded() == [], "a call without usable audio still reached the application"


def _tag(response: Response) -> str:
    return (response.header("to") or "").split("tag=")[1].split(";")[0]


# ---- limits --------------------------------------------------------------------------------------------------------


def test_a_call_beyond_max_calls_gets_503_with_retry_after(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app, DIALBRIDGE_MAX_CALLS="1") as engine:
        first, second = Peer(engine.sip_port), Peer(engine.sip_port)
        call = RawCall.place(first)
        refused = second.final(second.request("INVITE", call_id="second", body=offer(4002)))
        assert refused.status == 503, refused.raw[:200]
        assert (refused.header("retry-after") or "").isdigit(), "503 without Retry-After"
        second.send(second.request("ACK", call_id="second", to_tag=_tag(refused)))
        assert call.bye().status == 200
        third = RawCall.place(second)  # the slot is free again once the first call ended
        assert third.bye().status == 200
        first.close()
        second.close()


def test_invites_beyond_the_per_source_rate_get_503(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app, DIALBRIDGE_SIP_INVITES_PER_SOURCE_PER_MINUTE="3") as engine:
        scanner, other = Peer(engine.sip_port), Peer(engine.sip_port, host="127.0.0.2")
        statuses = []
        for i in range(5):
            response = scanner.final(scanner.request("INVITE", user=f"100{i}", call_id=f"scan-{i}", body=offer(4000)))
            statuses.append(response.status)
            scanner.send(scanner.request("ACK", user=f"100{i}", call_id=f"scan-{i}", to_tag=_tag(response)))
            if response.status == 503:
                assert (response.header("retry-after") or "").isdigit(), "503 without Retry-After"
        assert statuses == [404, 404, 404, 503, 503]
        # Another source is counted on its own.
        response = other.final(other.request("INVITE", user="1009", call_id="other-source", body=offer(4000)))
        assert response.status == 404, response.raw[:200]
        scanner.close()
        other.close()


def test_sources_outside_sip_allow_from_get_403(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app, DIALBRIDGE_SIP_ALLOW_FROM="10.0.0.0/8,127.0.0.2/32") as engine:
        outsider, allowed = Peer(engine.sip_port), Peer(engine.sip_port, host="127.0.0.2")
        response = outsider.final(outsider.request("INVITE", call_id="outsider", body=offer(4000)))
        assert response.status == 403, response.raw[:200]
        outsider.send(outsider.request("ACK", call_id="outsider", to_tag=_tag(response)))
        call = RawCall.place(allowed)
        assert call.bye().status == 200
        assert outsider.final(outsider.request("OPTIONS", call_id="outsider-options")).status == 200
        assert app.wait_for(lambda: "completed" in [e["status"] for e in app.events()], 5), app.events()
        assert len({e["uuid"] for e in app.events()}) == 1, "the refused caller's INVITE became a call"
        outsider.close()
        allowed.close()


def _closed_by_engine(sock: socket.socket) -> bool:
    """Whether the engine has closed `sock` (FIN or RST seen), without waiting; unread data counts as open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_tcp_connections_beyond_the_cap_stalled_or_idle_are_closed_and_calls_go_on(
    tmp_path: Path, app: NccoApp
) -> None:
    limits = {
        "DIALBRIDGE_SIP_TCP_CONNECTIONS_PER_SOURCE": "4",
        "DIALBRIDGE_SIP_TCP_INCOMPLETE_MESSAGE_TIMEOUT_S": "2",
        "DIALBRIDGE_SIP_TCP_IDLE_TIMEOUT_S": "6",
    }
    with engine_for(tmp_path, app, **limits) as engine:
        target = ("127.0.0.1", engine.sip_port)
        flood = [socket.create_connection(target, timeout=5, source_address=("127.0.0.1", 0)) for _ in range(7)]
        time.sleep(0.5)
        assert sum(_closed_by_engine(s) for s in flood) == 3, "connections beyond the per-source cap stayed open"
        # A call over TCP from another source: its connection carries the dialog, so idleness does not close it.
        caller = Peer(engine.sip_port, host="127.0.0.4", transport="tcp")
        tcp_call = RawCall.place(caller)
        # A request that never completes, beside a connection from the same source that sends nothing.
        stalled = socket.create_connection(target, timeout=5, source_address=("127.0.0.3", 0))
        quiet = socket.create_connection(target, timeout=5, source_address=("127.0.0.3", 0))
        stalled.sendall(b"OPTIONS sip:dialin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.3:9;branch=z9hG4bK-s\r\n")
        sent = time.monotonic()
        # Meanwhile another source's UDP call is answered as usual.
        udp_call = RawCall.place(Peer(engine.sip_port, host="127.0.0.2"))
        assert udp_call.bye().status == 200
        assert wait_until(lambda: _closed_by_engine(stalled), 4.0), "the stalled request's connection stayed open"
        assert time.monotonic() - sent < 5.0 and not _closed_by_engine(quiet), "closed as idle, not as stalled"
        # The idle ones close after the idle timeout; the call's connection stays and carries its BYE.
        assert wait_until(lambda: all(_closed_by_engine(s) for s in [*flood, quiet]), 6.0), "idle ones stayed open"
        assert not _closed_by_engine(caller.sock), "the connection of a call was closed as idle"
        caller.sock.setblocking(True)
        assert tcp_call.bye().status == 200
        for sock in [*flood, stalled, quiet, caller.sock]:
            sock.close()
        refusals = [line for line in engine.log.read_text().splitlines() if "127.0.0.1" in line and "limit" in line]
        assert len(refusals) == 1, f"refusals from one source should be logged once a minute: {refusals}"


# ---- whole calls -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package")
def test_a_call_over_tcp_is_answered_heard_and_hung_up(tmp_path: Path) -> None:
    talk = [{"action": "talk", "text": "Hello over TCP. This is a test of the voice engine."}, *CONFERENCE]
    media_port = 17400
    with NccoApp(talk) as app, engine_for(tmp_path, app) as engine, LoopbackCapture() as capture:
        xml = sipp.scenario(sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(3000), sipp.BYE)
        run = sipp.start(
            tmp_path / "sipp", xml, target=engine.sip_target, sip_port=free_port(), media_port=media_port,
            transport="t1",
        )  # fmt: skip
        assert run.wait(30) == 0, run.errors()
        assert app.wait_for(lambda: "completed" in [e["status"] for e in app.events()], 5), app.events()
    statuses = [e["status"] for e in app.events()]
    assert statuses == ["started", "ringing", "answered", "completed"], statuses
    audio = received_audio(capture.rtp_to(media_port))
    assert len(audio) > 8000 * 2, f"the TCP caller received {len(audio)} samples of audio"
    assert (abs(audio.astype(int)) > 2000).any(), "the TCP caller heard no speech"
    sip_on_udp = [d for d in capture.datagrams if engine.sip_port in (d.src[1], d.dst[1])]
    assert sip_on_udp == [], "SIP of a TCP call went over UDP"


@pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package")
def test_cancel_before_the_answer_gets_487_and_a_cancelled_event(tmp_path: Path) -> None:
    with NccoApp(CONFERENCE, answer_delay_s=3.0) as app, engine_for(tmp_path, app) as engine:
        xml = sipp.scenario(sipp.cancelled_invite(), sipp.pause(500))
        run = sipp.start(tmp_path / "sipp", xml, target=engine.sip_target, sip_port=free_port(), media_port=17500)
        assert run.wait(20) == 0, f"INVITE/180/CANCEL/200/487/ACK did not complete:\n{run.errors()}"
        assert app.wait_for(lambda: "cancelled" in [e["status"] for e in app.events()], 5), app.events()
        time.sleep(3.5)  # the answer webhook returns now: the engine must not answer a call that is gone
        assert len(app.recorded("/answer")) == 1
    events = app.events()
    assert len({e["uuid"] for e in events}) == 1
    assert [e["status"] for e in events] == ["started", "ringing", "cancelled"], events


def test_an_rtp_flood_leaves_memory_flat_and_the_call_working(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app) as engine, LoopbackCapture() as capture:
        peer = Peer(engine.sip_port)
        call = RawCall.place(peer)
        call.send_rtp(10)  # the caller's own packets come first: the engine latches its media to them
        foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        foreign.bind(("127.0.0.1", 0))
        rng = random.Random(7)

        def flood(count: int) -> None:
            rtp, rtcp, sip = ("127.0.0.1", call.engine_rtp), ("127.0.0.1", call.engine_rtp + 1), engine.sip_target
            sip_address = (sip.split(":")[0], int(sip.split(":")[1]))
            for i in range(count):
                kind = i % 10
                if kind < 7:  # well-formed RTP of a stranger: every SSRC, sequence number and payload type
                    header = struct.pack("!BBHII", 0x80, rng.choice((0, 8, 101, 13, 96)), i & 0xFFFF, i * 160, i)
                    foreign.sendto(header + rng.randbytes(rng.randrange(0, 400)), rtp)
                elif kind == 7:
                    foreign.sendto(rng.randbytes(rng.randrange(1, 1500)), rtp)
                elif kind == 8:
                    foreign.sendto(rng.randbytes(rng.randrange(1, 600)), rtcp)
                else:
                    foreign.sendto(rng.randbytes(rng.randrange(1, 1500)), sip_address)
                if i % 500 == 0:
                    time.sleep(0.001)

        flood(5_000)  # warm-up: the allocator's first growth is not a leak
        time.sleep(0.5)
        before = engine.rss_kb()
        flood(50_000)
        time.sleep(1.0)
        after = engine.rss_kb()
        flood(50_000)
        time.sleep(1.0)
        again = engine.rss_kb()
        assert after - before < 4096, f"RSS grew {after - before} kB over 50,000 flood datagrams"
        assert again - before < 4096, f"RSS grew {again - before} kB over 100,000 flood datagrams"
        started = time.monotonic()
        call.send_rtp(25)
        to_caller = [d for d in capture.rtp_to(call.media.getsockname()[1]) if d.at >= started]
        to_stranger = [d for d in capture.datagrams if d.dst == foreign.getsockname()]
        assert len(to_caller) >= 20, f"the engine sent the caller {len(to_caller)} packets in the 0.5 s after"
        assert to_stranger == [], "the flood took the call's media over"
        assert call.bye().status == 200
        foreign.close()
        peer.close()
    assert [e["status"] for e in app.events()][-1] == "completed"


# ---- destinations named by the peer ---------------------------------------------------------------------------------


def rtp_sequence_numbers(media: socket.socket, seconds: float) -> list[int]:
    """The sequence numbers of the RTP packets `media` receives in the next `seconds`."""
    numbers: list[int] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        media.settimeout(left)
        try:
            data = media.recv(2048)
        except TimeoutError:
            break
        numbers.append(struct.unpack("!H", data[2:4])[0])
    return numbers


@pytest.mark.parametrize(
    ("contact", "extra"),
    [
        ("<sip:x@nohost.invalid>", ()),
        ("<sip:x@[::1]:5060>", ()),
        (None, ("Record-Route: <sip:proxy.nohost.invalid;lr>",)),
    ],
    ids=["a-contact-name-that-does-not-resolve", "an-ipv6-contact-to-an-ipv4-socket", "a-record-route-name"],
)
def test_a_bye_that_cannot_be_sent_costs_no_other_call_a_packet_and_ends_its_call_at_once(
    tmp_path: Path, app: NccoApp, contact: str | None, extra: tuple[str, ...]
) -> None:
    with engine_for(tmp_path, app) as engine:
        peer = Peer(engine.sip_port)
        staying = RawCall.place(peer)
        app.answer = [{"action": "talk", "text": "Goodbye."}]  # the engine hangs this one up: its BYE is due
        RawCall.place(peer, contact=contact, extra=extra)
        # ~1 s of prompt, then the BYE and its retransmissions (T1, 2 T1, ...): each cost a tick's RTP before.
        numbers = rtp_sequence_numbers(staying.media, 4.0)
        assert len(numbers) > 150, f"the staying call received {len(numbers)} RTP packets in 4 s"
        missing = (numbers[-1] - numbers[0] + 1) - len(set(numbers))
        assert missing == 0, f"the staying call lost {missing} of the engine's RTP packets"
        # The BYE could not be sent: a transport error (RFC 3261 17.1.4) ends the call now, not Timer F's 32 s.
        assert [e["status"] for e in app.events()].count("completed") == 1, app.events()
        assert staying.bye().status == 200
        peer.close()
    log_text = engine.log.read_text()
    assert log_text.count("cannot send SIP") == 1, log_text[-3000:]  # one line per destination, no traceback


def test_a_bye_to_a_contact_named_localhost_is_delivered(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app) as engine:
        peer = Peer(engine.sip_port)
        app.answer = [{"action": "talk", "text": "Goodbye."}]
        RawCall.place(peer, contact=f"<sip:x@localhost:{peer.local[1]}>")
        peer.sock.settimeout(5.0)
        data, source = peer.sock.recvfrom(65535)
        assert data.startswith(b"BYE sip:x@localhost:"), data[:200]
        assert source == ("127.0.0.1", engine.sip_port)
        peer.close()


@pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq is not installed: make test installs the dnsmasq-base package")
def test_a_bye_to_a_contact_without_a_port_goes_where_its_sip_srv_record_says(tmp_path: Path, app: NccoApp) -> None:
    with engine_for(tmp_path, app, DIALBRIDGE_DNS_SERVER=f"127.0.0.1:{DNS_PORT}") as engine:
        peer = Peer(engine.sip_port)
        srv = f"_sip._udp.phone.test,host.phone.test,{peer.local[1]},10,100"  # RFC 3263 4.2: not 5060
        with dns_server(srv=[srv], hosts={"host.phone.test": "127.0.0.1"}):
            app.answer = [{"action": "talk", "text": "Goodbye."}]
            RawCall.place(peer, contact="<sip:x@phone.test>")
            peer.sock.settimeout(5.0)
            data, source = peer.sock.recvfrom(65535)
        assert data.startswith(b"BYE sip:x@phone.test SIP/2.0"), data[:200]
        assert source == ("127.0.0.1", engine.sip_port)
        peer.close()


# ---- signatures ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package")
def test_every_webhook_the_engine_sends_passes_the_apps_signature_verifier(tmp_path: Path) -> None:
    from dialbridge.webhook_signing import SignatureError, WebhookSignatures

    with NccoApp([]) as app:
        app.answer = [
            {"action": "talk", "text": "Enter three digits.", "bargeIn": True},
            {"action": "input", "maxDigits": 3, "timeOut": 5, "eventUrl": [app.url("/input")]},
        ]
        app.replies["/input"] = [
            {"action": "notify", "payload": {"step": "after input", "n": 1}, "eventUrl": [app.url("/notify?x=1")],
             "eventMethod": "GET"},
            {"action": "notify", "payload": {"step": "posted"}, "eventUrl": [app.url("/notify-post")]},
            *CONFERENCE,
        ]  # fmt: skip
        with engine_for(tmp_path, app) as engine:
            media = RtpStream()
            media.silence(0.3)
            for digit in "123":
                media.rfc4733(digit)
            media.silence(1.0)
            xml = sipp.scenario(
                sipp.invite(extra_headers="X-Room-Hint: signed"), sipp.ANSWERED, sipp.ACK, sipp.pause(500),
                sipp.play(media.write_pcap(tmp_path / "digits.pcap")), sipp.pause(3500), sipp.BYE,
            )  # fmt: skip
            run = sipp.start(tmp_path / "sipp", xml, target=engine.sip_target, sip_port=free_port(), media_port=17600)
            assert run.wait(30) == 0, run.errors()
            assert app.wait_for(lambda: "completed" in [e["status"] for e in app.events()], 5), app.events()
    requests = app.recorded()
    by_path = {r.path: r for r in requests}
    assert by_path["/answer"].method == "GET" and by_path["/answer"].fields.get("SipHeader_X-Room-Hint") == "signed"
    assert by_path["/input"].method == "POST" and by_path["/input"].fields["dtmf"]["digits"] == "123"
    assert by_path["/notify"].method == "GET" and by_path["/notify"].query.startswith(b"x=1&")
    assert by_path["/notify-post"].method == "POST"
    assert [e["status"] for e in app.events()] == ["started", "ringing", "answered", "completed"]
    rejected = [(r.method, r.path, r.error) for r in requests if not r.verified]
    assert rejected == [], f"requests the app's verifier refused: {rejected}"
    # The verdicts mean something: the same tokens do not verify for altered payloads or another secret.
    ours, other, now = WebhookSignatures(SECRET), WebhookSignatures(SECRET + "-other"), time.time()
    for r in requests:
        payload = r.query if r.method == "GET" else r.body
        with pytest.raises(SignatureError):
            ours.verify(r.authorization, payload + b"&tampered=1", now)
        with pytest.raises(SignatureError):
            other.verify(r.authorization, payload, now)
    # Each request is a token of its own (its jti): an app refusing replays accepts every one of them.
    tokens = [ours.verify(r.authorization, r.query if r.method == "GET" else r.body, now).token_id for r in requests]
    assert len(set(tokens)) == len(tokens) and all(token.startswith("jti:") for token in tokens)
