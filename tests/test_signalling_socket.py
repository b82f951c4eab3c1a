"""The signalling WebSocket through the ASGI app: who gets in, and what a bad client gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from dialbridge.config import Settings
from dialbridge.tokens import ParticipantTokens, Role
from dialbridge.web.app import create_app
from dialbridge.web.signalling import SUBPROTOCOL

SESSION = "emb_room_one"


class FakeClock(Protocol):  # conftest's fixture
    def __call__(self) -> float: ...
    def advance(self, seconds: float) -> None: ...


def tokens(client: TestClient) -> ParticipantTokens:
    found: ParticipantTokens = client.app.state.services.tokens  # type: ignore[attr-defined]
    return found


def issue(client: TestClient, clock: FakeClock, session_id: str = SESSION, role: Role = Role.PUBLISHER) -> str:
    return tokens(client).issue(session_id=session_id, room_id="one", now=clock(), role=role)


def url(token: str | None, session_id: str | None = SESSION) -> Socket:
    """Where and how the room page connects: the session in the URL, the token offered as a subprotocol."""
    path = "/rt/signalling" if session_id is None else f"/rt/signalling?sessionId={session_id}"
    return Socket(path, [SUBPROTOCOL] + ([f"bearer.{token}"] if token is not None else []))


@dataclass(frozen=True)
class Socket:
    path: str
    subprotocols: list[str]


def connect(client: TestClient, socket: Socket) -> Any:
    return client.websocket_connect(socket.path, subprotocols=socket.subprotocols)


def refused_with(client: TestClient, socket: Socket) -> tuple[int, str]:
    """Connect and return the close code and reason; fails if any message arrives first."""
    with connect(client, socket) as opened, pytest.raises(WebSocketDisconnect) as closed:
        opened.receive_text()
    return closed.value.code, closed.value.reason


def hello(socket: WebSocketTestSession) -> dict[str, Any]:
    connected: dict[str, Any] = socket.receive_json()
    assert connected["type"] == "connected"
    return connected


def test_a_forged_token_is_refused_before_any_message(client: TestClient, clock: FakeClock) -> None:
    forged = ParticipantTokens("not-the-server-secret-" + "x" * 32).issue(
        session_id=SESSION, room_id="one", now=clock()
    )
    code, reason = refused_with(client, url(forged))
    assert code == 4401 and "invalid participant token" in reason


def test_an_expired_token_is_refused_with_the_fix(client: TestClient, clock: FakeClock) -> None:
    token = issue(client, clock)
    clock.advance(tokens(client).ttl_s + 1)
    code, reason = refused_with(client, url(token))
    assert code == 4401 and "expired" in reason and "reload" in reason


def test_a_token_for_another_session_is_refused(client: TestClient, clock: FakeClock) -> None:
    token = issue(client, clock, session_id="emb_room_two")
    code, reason = refused_with(client, url(token, session_id=SESSION))
    assert code == 4401 and "another room" in reason


@pytest.mark.parametrize(
    "socket", [url(None, None), url(None), url("x", None), Socket("/rt/signalling?sessionId=s&token=x", [SUBPROTOCOL])]
)
def test_a_socket_without_token_or_session_is_refused(client: TestClient, socket: Socket) -> None:
    code, _ = refused_with(client, socket)
    assert code == 4401


def test_a_token_in_the_url_is_refused_even_when_valid_and_the_reason_names_the_fix(
    client: TestClient, clock: FakeClock
) -> None:
    token = issue(client, clock)
    code, reason = refused_with(client, Socket(f"/rt/signalling?sessionId={SESSION}&token={token}", [SUBPROTOCOL]))
    assert code == 4401 and "Sec-WebSocket-Protocol" in reason


def test_the_server_selects_the_signalling_subprotocol(client: TestClient, clock: FakeClock) -> None:
    # A browser that offered subprotocols fails a handshake whose answer selects none.
    with connect(client, url(issue(client, clock))) as socket:
        assert socket.accepted_subprotocol == SUBPROTOCOL
        hello(socket)


def test_a_second_socket_for_one_connection_is_refused_and_the_first_keeps_working(
    client: TestClient, clock: FakeClock
) -> None:
    token = issue(client, clock)
    with connect(client, url(token)) as first:
        hello(first)
        code, reason = refused_with(client, url(token))
        assert code == 4409 and "already connected" in reason
        first.send_json({"type": "ping"})
        assert first.receive_json() == {"type": "pong"}


def test_two_participants_hear_of_each_other_and_relay_signals(client: TestClient, clock: FakeClock) -> None:
    with connect(client, url(issue(client, clock))) as alice:
        hello_alice = hello(alice)
        with connect(client, url(issue(client, clock))) as bob:
            hello_bob = hello(bob)
            assert [c["connectionId"] for c in hello_bob["connections"]] == [hello_alice["connectionId"]]
            assert alice.receive_json()["type"] == "connectionCreated"

            alice.send_json({"type": "publish", "requestId": 1, "hasAudio": True, "hasVideo": True})
            published = alice.receive_json()
            stream_id = published["stream"]["streamId"]
            assert bob.receive_json() == {"type": "streamCreated", "stream": published["stream"]}

            offer = {"type": "offer", "sdp": "v=0"}
            bob.send_json(
                {
                    "type": "signal",
                    "to": hello_alice["connectionId"],
                    "streamId": stream_id,
                    "kind": "offer",
                    "data": offer,
                }
            )
            relayed = alice.receive_json()
            assert relayed == {
                "type": "signal",
                "from": hello_bob["connectionId"],
                "streamId": stream_id,
                "kind": "offer",
                "data": offer,
            }
        assert alice.receive_json() == {
            "type": "connectionDestroyed",
            "connectionId": hello_bob["connectionId"],
            "reason": "clientDisconnected",
        }


def test_bad_input_gets_an_error_and_the_socket_stays_usable(client: TestClient, clock: FakeClock) -> None:
    with connect(client, url(issue(client, clock))) as socket:
        hello(socket)
        socket.send_text("{not json")
        error = socket.receive_json()
        assert error["type"] == "error" and "not JSON" in error["message"]
        socket.send_text("x" * 100_000)
        assert "longer than" in socket.receive_json()["message"]
        socket.send_json({"type": "ping"})
        assert socket.receive_json() == {"type": "pong"}


def test_binary_frames_close_the_socket_with_unsupported_data(client: TestClient, clock: FakeClock) -> None:
    with connect(client, url(issue(client, clock))) as socket:
        hello(socket)
        socket.send_bytes(b"\x00\x01")
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
        assert closed.value.code == 1003


def test_server_force_disconnect_closes_that_socket_and_tells_the_others(client: TestClient, clock: FakeClock) -> None:
    hub = client.app.state.services.hub  # type: ignore[attr-defined]
    with connect(client, url(issue(client, clock))) as alice:
        hello(alice)
        with connect(client, url(issue(client, clock))) as bob:
            bob_id = hello(bob)["connectionId"]
            alice.receive_json()  # connectionCreated for bob

            assert client.portal.call(hub.force_disconnect, SESSION, bob_id) is True  # type: ignore[union-attr]

            assert bob.receive_json() == {"type": "sessionDisconnected", "reason": "forceDisconnected"}
            with pytest.raises(WebSocketDisconnect) as closed:
                bob.receive_text()
            assert closed.value.code == 4000
        assert alice.receive_json() == {
            "type": "connectionDestroyed",
            "connectionId": bob_id,
            "reason": "forceDisconnected",
        }
        assert client.portal.call(hub.force_disconnect, SESSION, bob_id) is False  # type: ignore[union-attr]


# ---- origins -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://dialbridge.example.test", True),  # PUBLIC_BASE_URL's origin
        ("https://DIALBRIDGE.example.test:443", True),  # the same, spelled otherwise
        ("https://app.example.com", True),  # listed in ALLOWED_ORIGINS
        ("https://evil.example", False),
        ("http://dialbridge.example.test", False),  # another scheme is another origin
        ("null", False),  # sandboxed frames, file:// pages
    ],
)
def test_only_the_servers_own_origin_and_the_listed_ones_may_open_a_socket(
    settings: Settings, clock: FakeClock, origin: str, allowed: bool
) -> None:
    listed = settings.model_copy(update={"allowed_origins": "https://app.example.com, https://other.example.org"})
    with TestClient(create_app(listed, clock=clock)) as client:
        socket = url(issue(client, clock))
        opened = client.websocket_connect(socket.path, subprotocols=socket.subprotocols, headers={"origin": origin})
        if allowed:
            with opened as accepted:
                hello(accepted)
        else:
            with pytest.raises(WebSocketDisconnect) as refused, opened:
                pass
            assert refused.value.code == 1008
