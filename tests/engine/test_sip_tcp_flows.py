"""A call over TCP outlives its connection (issue 16 §1.3; RFC 3261 18): proxies close idle TCP connections mid-call
(Kamailio after 120 s). The real `dialbridge voice` engine, a phone over TCP that listens at its Contact as a
phone or proxy does, and a connection closed under a live call."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dialbridge.sip.message import SipRequest, SipResponse, SipStreamFramer, build_response, parse_message
from tests.engine.stack import NccoApp, VoiceEngineProcess, voice_engine
from tests.engine.test_voice_sip_edges import offer
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)
HOST = "127.0.0.1"


@dataclass
class TcpPhone:
    """A SIP phone over TCP that listens at its Contact; `connect()` opens a connection to the engine."""

    engine: tuple[str, int]
    listener: socket.socket = field(init=False)
    call_id: str = field(default_factory=lambda: f"tcp-{uuid.uuid4().hex}")
    to_tag: str = ""

    def __post_init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(10)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind((HOST, 0))

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def connect(self) -> socket.socket:
        connection = socket.create_connection(self.engine, timeout=10)
        connection.settimeout(10)
        return connection

    def request(self, method: str, cseq: int, body: bytes = b"") -> bytes:
        lines = [
            f"{method} sip:dialin@{HOST}:{self.engine[1]};transport=tcp SIP/2.0",
            f"Via: SIP/2.0/TCP {HOST}:{self.port};branch=z9hG4bK-{uuid.uuid4().hex}",
            "Max-Forwards: 70",
            f"From: <sip:phone@{HOST}>;tag=phone-{self.call_id}",
            f"To: <sip:dialin@{HOST}>" + (f";tag={self.to_tag}" if self.to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:phone@{HOST}:{self.port};transport=tcp>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def close(self) -> None:
        self.listener.close()
        self.media.close()


def read_messages(connection: socket.socket, framer: SipStreamFramer) -> Iterator[SipRequest | SipResponse]:
    """The messages arriving on `connection`, as they come (TimeoutError after 10 s of nothing)."""
    while True:
        data = connection.recv(65536)
        if not data:
            return
        for raw in framer.feed(data):
            message = parse_message(raw)
            assert isinstance(message, SipRequest | SipResponse)
            yield message


def answered_call(phone: TcpPhone) -> tuple[socket.socket, Iterator[SipRequest | SipResponse]]:
    """INVITE, 200, ACK over a new connection: the connection and what else arrives on it."""
    connection = phone.connect()
    incoming = read_messages(connection, SipStreamFramer())
    connection.sendall(phone.request("INVITE", 1, offer(phone.media.getsockname()[1])))
    for message in incoming:
        if isinstance(message, SipResponse) and message.status >= 200:
            assert message.status == 200, message.status
            phone.to_tag = message.to_addr.tag or ""
            break
    connection.sendall(phone.request("ACK", 1))
    return connection, incoming


def finals(app: NccoApp) -> list[dict[str, object]]:
    return [fields for fields in app.events() if fields.get("status") in ("completed", "failed")]


@pytest.fixture
def engine_and_app(tmp_path: Path) -> Iterator[tuple[VoiceEngineProcess, NccoApp]]:
    with NccoApp([{"action": "talk", "text": "One moment, please."}]) as app, voice_engine(tmp_path, **app.env) as e:
        yield e, app


def test_the_engines_bye_reaches_a_phone_whose_connection_closed_over_a_new_one(
    engine_and_app: tuple[VoiceEngineProcess, NccoApp],
) -> None:
    engine, app = engine_and_app
    phone = TcpPhone(("127.0.0.1", engine.sip_port))
    connection, _ = answered_call(phone)
    connection.close()  # the proxy's idle timeout, mid-call; the engine's talk plays on, then it hangs up
    reopened, _ = phone.listener.accept()  # the engine comes to the Contact
    reopened.settimeout(10)
    bye = next(read_messages(reopened, SipStreamFramer()))
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.call_id == phone.call_id
    reopened.sendall(build_response(bye, 200).to_bytes())
    wait_until(lambda: len(finals(app)) == 1, 10, "the call's final event")
    assert finals(app)[0]["status"] == "completed"
    assert "transport_error" not in engine.log.read_text()
    reopened.close()
    phone.close()


def test_a_phone_that_reconnects_hangs_up_over_its_new_connection(
    engine_and_app: tuple[VoiceEngineProcess, NccoApp],
) -> None:
    engine, app = engine_and_app
    phone = TcpPhone(("127.0.0.1", engine.sip_port))
    connection, _ = answered_call(phone)
    connection.close()
    time.sleep(0.5)  # the engine sees the connection close (it used to end the call there) before the phone is back
    again = phone.connect()
    again.sendall(phone.request("BYE", 2))
    ok = next(read_messages(again, SipStreamFramer()))
    assert isinstance(ok, SipResponse) and ok.status == 200  # the call lived on: not 481
    wait_until(lambda: len(finals(app)) == 1, 10, "the call's final event")
    assert finals(app)[0]["status"] == "completed"
    again.close()
    phone.close()
