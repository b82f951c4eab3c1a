"""What the server's log holds about WebSockets: never a participant token (the request lines uvicorn logs carry
none), and not every routine open and close at INFO — refusals, yes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from dialbridge.web.logredact import QuietChurn, redact
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
        # A refused handshake's request line is logged at INFO (an accepted one only at DEBUG): redacted too.
        with pytest.raises(InvalidStatus):
            connect(f"{ws}?sessionId={session}&token={token}", origin="https://elsewhere.example")  # type: ignore[arg-type]
    assert served.log is not None  # read once the server has stopped and flushed it
    log = served.log.read_text()
    assert "WebSocket /rt/signalling" in log and "token=[redacted]" in log  # the lines are there...
    assert token not in log and token.split(".")[2] not in log  # ...without the token, whole or in part


def test_redaction_keeps_the_rest_of_the_line() -> None:
    line = '127.0.0.1:5 - "WebSocket /rt/signalling?sessionId=s1&token=eyJ.a.b&x=1" [accepted]'
    assert redact(line) == '127.0.0.1:5 - "WebSocket /rt/signalling?sessionId=s1&token=[redacted]&x=1" [accepted]'
    assert redact("/p?access_token=abc") == "/p?access_token=[redacted]"
    assert redact("/p?notatoken=abc&mytoken=1") == "/p?notatoken=abc&mytoken=1"


def test_routine_socket_churn_stays_out_of_the_info_log_and_refusals_do_not(tmp_path: Path) -> None:
    with serving_embedded(tmp_path) as served:
        config = room_config(served.base, "churn")
        token, session = config["token"], config["sessionId"]
        ws = f"ws://127.0.0.1:{served.port}/rt/signalling?sessionId={session}"
        for _ in range(3):  # a page reloaded: open, close, open again
            with connect(ws, subprotocols=[SUBPROTOCOL, f"bearer.{token}"]) as socket:  # type: ignore[list-item]
                assert json.loads(socket.recv(timeout=10))["type"] == "connected"
        with (
            connect(ws, subprotocols=[SUBPROTOCOL, "bearer.not-a-token"]) as socket,  # type: ignore[list-item]
            pytest.raises(ConnectionClosed),
        ):
            socket.recv(timeout=10)
        with pytest.raises(InvalidStatus):  # a page on another site: the handshake itself is refused
            connect(ws, subprotocols=[SUBPROTOCOL, f"bearer.{token}"], origin="https://elsewhere.example")  # type: ignore[list-item,arg-type]
    assert served.log is not None
    log = served.log.read_text()
    assert "[accepted]" not in log and "connection open" not in log and "connection closed" not in log, log
    assert "INFO dialbridge.web.signalling: signalling socket refused (4401): invalid participant token: " in log
    assert '"WebSocket /rt/signalling?sessionId=' in log and '" 403' in log  # uvicorn's line for the 403, kept
    assert "Origin 'https://elsewhere.example' is not allowed" in log


def test_churn_is_kept_at_debug_when_debug_is_on() -> None:
    logger = logging.getLogger("tests.churn")
    logger.setLevel(logging.DEBUG)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "connection open", (), None)
    assert QuietChurn().filter(record) and record.levelno == logging.DEBUG and record.levelname == "DEBUG"
    logger.setLevel(logging.INFO)
    assert not QuietChurn().filter(
        logger.makeRecord(logger.name, logging.INFO, __file__, 1, "connection open", (), None)
    )
    refused = logger.makeRecord(logger.name, logging.INFO, __file__, 1, '%s - "WebSocket %s" 403', ("a", "/p"), None)
    assert QuietChurn().filter(refused) and refused.levelno == logging.INFO
