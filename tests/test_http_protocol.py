"""The server's HTTP protocol (head and body in one write): every kind of response still arrives whole."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from dialbridge.config import Settings
from dialbridge.web.app import create_app
from dialbridge.web.http import JoiningHttpToolsProtocol


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app: Any = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", http=JoiningHttpToolsProtocol, lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(instance.serve(sockets=[listener])), daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        thread.join(0.05)
    yield "127.0.0.1", port
    instance.should_exit = True
    thread.join(10)
    listener.close()


def exchange(address: tuple[str, int], request: bytes, expect_body: bool = True) -> tuple[bytes, bytes]:
    """Send one request on a keep-alive connection, then a second; return both raw responses' heads and bodies."""
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, "connection closed before the response head"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while expect_body and len(body) < length:
            chunk = conn.recv(65536)
            assert chunk, "connection closed before the body"
            body += chunk
        return head, body


def test_webhook_json_and_empty_responses_arrive_whole(server: tuple[str, int]) -> None:
    head, body = exchange(server, b"GET /webhooks/answer?uuid=c1&from=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body.startswith(b'[{"action":"talk"')
    event = b'{"uuid": "c1", "status": "ringing"}'
    request = b"POST /webhooks/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head, body = exchange(server, request + b"Content-Length: %d\r\n\r\n" % len(event) + event)
    assert head.startswith(b"HTTP/1.1 204") and body == b""


def test_head_requests_and_100_continue_do_not_hang(server: tuple[str, int]) -> None:
    head, _ = exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", expect_body=False)
    assert head.startswith(b"HTTP/1.1 ")
    body = b'{"uuid": "c2", "status": "ringing"}'
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(
            b"POST /webhooks/events HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert conn.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        conn.sendall(body)
        assert conn.recv(1024).startswith(b"HTTP/1.1 204")


def test_a_large_page_streams_whole(server: tuple[str, int]) -> None:
    head, body = exchange(server, b"GET /static/ot-embedded.js HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"initSession" in body and len(body) > 10_000
