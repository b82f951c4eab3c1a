"""No participant token in the server's log: the request lines uvicorn logs for WebSockets carry no token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dialbridge.web.logredact import redact
from dialbridge.web.signalling import SUBPROTOCOL
from tests.served import room_config, serving_embedded


def test_neither_a_signalling_socket_nor_a_token_in_a_url_puts_the_token_in_the_log(tmp_path: Path) -> None:
    with serving_embedded(tmp_path) as served:
        config = room_config(served.base, "logs")
        token, session = config["token"], config["sessionId"]
        ws = f"ws://127.0.0.1:{served.port}/rt/signalling"
        with connect(f"{ws}?sessionId={session}", subprotocols=[SUBPROTOCOL, f"bearer.{token}"]) as socket:  # type: ignore[list-item]
            assert json.loads(socket.recv(timeout=10))["type"] == "connected"
        # An old page or a script putting the token in the URL is refused, and its request line is redacted.
        with connect(f"{ws}?sessionId={session}&token={token}", subprotocols=[SUBPROTOCOL]) as socket:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert served.log is not None  # read once the server has stopped and flushed it
    log = served.log.read_text()
    assert "WebSocket /rt/signalling" in log  # the lines are there...
    assert token not in log and token.split(".")[2] not in log  # ...without the token, whole or in part


def test_redaction_keeps_the_rest_of_the_line() -> None:
    line = '127.0.0.1:5 - "WebSocket /rt/signalling?sessionId=s1&token=eyJ.a.b&x=1" [accepted]'
    assert redact(line) == '127.0.0.1:5 - "WebSocket /rt/signalling?sessionId=s1&token=[redacted]&x=1" [accepted]'
    assert redact("/p?access_token=abc") == "/p?access_token=[redacted]"
    assert redact("/p?notatoken=abc&mytoken=1") == "/p?notatoken=abc&mytoken=1"
