"""The signalling WebSocket on a real `dialbridge serve`: the limits uvicorn enforces before the app sees a frame."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from dialbridge.engine.rooms.signalling import MAX_MESSAGE_CHARS
from dialbridge.web.signalling import SUBPROTOCOL
from tests.served import Served, room_config, serving_embedded


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving_embedded(tmp_path) as server:
        yield server


def _open(served: Served, origin: str | None) -> object:
    config = room_config(served.base, "live")
    return connect(
        f"ws://127.0.0.1:{served.port}/rt/signalling?sessionId={config['sessionId']}",
        subprotocols=[SUBPROTOCOL, f"bearer.{config['token']}"],  # type: ignore[list-item]
        origin=origin,  # type: ignore[arg-type]
        max_size=None,
    )


def test_a_frame_over_the_message_limit_is_refused_as_it_arrives(served: Served) -> None:
    with _open(served, f"http://127.0.0.1:{served.port}") as socket:  # type: ignore[attr-defined]
        assert json.loads(socket.recv(timeout=10))["type"] == "connected"
        socket.send("x" * (MAX_MESSAGE_CHARS + 1))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big, by uvicorn


def test_a_page_on_another_origin_is_refused_at_the_handshake_and_the_servers_own_is_not(served: Served) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _open(served, "https://evil.example")
    assert refused.value.response.status_code == 403
    # No PUBLIC_BASE_URL here (a developer's machine): the page's own host is the server's origin.
    with _open(served, f"http://127.0.0.1:{served.port}") as socket:  # type: ignore[attr-defined]
        assert json.loads(socket.recv(timeout=10))["type"] == "connected"
