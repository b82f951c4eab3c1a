"""The server's HTTP protocol, over real sockets: responses arrive whole (head and body in one write), and
webhooks on the direct path (web/http.py) behave as HTTP/1.1 requires — keep-alive, pipelining, closing, limits."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr

from dialbridge.config import Settings
from dialbridge.web.app import create_app
from dialbridge.web.http import DialbridgeHttpProtocol
from dialbridge.web.webhooks import WebhookEndpoints


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    yield from serving(settings)


@pytest.fixture
def signed_server(settings: Settings) -> Iterator[tuple[str, int]]:
    yield from serving(settings.model_copy(update={"signature_secret": SecretStr("protocol-test-secret-0123456789")}))


def serving(settings: Settings) -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app: Any = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", http=DialbridgeHttpProtocol, lifespan="off")
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


@pytest.fixture
def asgi_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that reached the app through ASGI (rather than the direct path)."""
    seen: list[str] = []
    through_asgi = WebhookEndpoints.__call__

    async def recording(self: WebhookEndpoints, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("path", ""))
        await through_asgi(self, scope, receive, send)

    monkeypatch.setattr(WebhookEndpoints, "__call__", recording)
    return seen


def read_response(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response (head, body by its content-length) from `conn`, and whatever was read beyond it."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response head (had {buffer!r})"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed before the body"
        rest += chunk
    return head, rest[:length], rest[length:]


def closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


ANSWER = b"GET /webhooks/answer?uuid=%s&from=447700900001 HTTP/1.1\r\nHost: t\r\n\r\n"


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path,
        len(body),
        extra,
        body,
    )


def test_webhooks_on_one_keep_alive_connection_each_get_their_answer(
    asgi_paths: list[str], server: tuple[str, int]
) -> None:
    with socket.create_connection(server, timeout=5) as conn:
        for n in range(3):
            conn.sendall(ANSWER % b"keep-%d" % n)
            head, body, rest = read_response(conn)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"content-type: application/json" in head
            assert json.loads(body)[1]["action"] == "input" and rest == b""
        conn.sendall(post(b"/webhooks/input", b'{"uuid": "keep-0", "dtmf": {"digits": "", "timed_out": true}}'))
        head, body, _ = read_response(conn)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)[0]["action"] == "talk"
    assert asgi_paths == []  # all four took the direct path


def test_pipelined_requests_are_answered_in_order_whatever_path_they_take(server: tuple[str, int]) -> None:
    # webhook, page, webhook, webhook with a body, health: sent in one write, answered in that order.
    event = b'{"uuid": "pipe-1", "status": "ringing"}'
    requests = [
        ANSWER % b"pipe-1",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        ANSWER % b"pipe-2",
        post(b"/webhooks/events", event),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    ]
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(b"".join(requests))
        answers = []
        rest = b""
        for _ in requests:
            head, body, rest = read_response(conn, rest)
            answers.append((head.split(b"\r\n")[0], body))
    assert [status for status, _ in answers] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 200 OK",
    ]
    assert json.loads(answers[0][1])[0]["action"] == "talk" and json.loads(answers[1][1])["status"] == "ok"


def test_connection_close_and_http_1_0_close_after_the_answer(server: tuple[str, int]) -> None:
    for request in (
        b"GET /webhooks/answer?uuid=close-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /webhooks/answer?uuid=close-2 HTTP/1.0\r\nHost: t\r\n\r\n",
    ):
        with socket.create_connection(server, timeout=5) as conn:
            conn.sendall(request)
            head, body, _ = read_response(conn)
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
            assert json.loads(body)[0]["action"] == "talk"
            assert closed_by_server(conn)


def test_a_body_sent_in_pieces_is_answered_once_whole(server: tuple[str, int]) -> None:
    body = b'{"uuid": "slow-1", "status": "ringing"}'
    request = post(b"/webhooks/events", body)
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(request[: -len(body) + 5])
        time.sleep(0.2)
        conn.sendall(request[-len(body) + 5 :])
        head, _, _ = read_response(conn)
        assert head.startswith(b"HTTP/1.1 204")


def test_oversized_bodies_and_wrong_methods_are_refused_and_the_connection_goes_on(server: tuple[str, int]) -> None:
    big = b'{"uuid": "big", "pad": "' + b"x" * (70 * 1024) + b'"}'
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(post(b"/webhooks/events", big))  # declared too large: refused before the body is read
        head, body, rest = read_response(conn)
        assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "payload_too_large"
        conn.sendall(b"PUT /webhooks/answer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        head, body, rest = read_response(conn, rest)
        assert head.startswith(b"HTTP/1.1 405") and b"allow: GET, POST" in head
        assert json.loads(body)["error"]["code"] == "method_not_allowed"
        conn.sendall(ANSWER % b"after-refusals")
        head, _, _ = read_response(conn, rest)
        assert head.startswith(b"HTTP/1.1 200")
    chunked = b"POST /webhooks/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 32768
    with socket.create_connection(server, timeout=5) as conn:  # undeclared length: refused once it grows too large
        conn.sendall(chunked + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)))
        head, body, _ = read_response(conn)
        assert head.startswith(b"HTTP/1.1 413")


def test_head_on_a_webhook_path_gets_no_body(asgi_paths: list[str], server: tuple[str, int]) -> None:
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(b"HEAD /webhooks/answer HTTP/1.1\r\nHost: t\r\n\r\n" + ANSWER % b"after-head")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"]"):
            chunk = conn.recv(65536)
            assert chunk
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"405") and first.endswith(b"\r\n\r\n")  # the head only
    assert second.startswith(b"200")
    # HEAD went through uvicorn, which leaves the body out; the request pipelined behind it queued there too.
    assert asgi_paths == ["/webhooks/answer", "/webhooks/answer"]


def test_a_client_gone_mid_body_leaves_the_server_serving(server: tuple[str, int]) -> None:
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(post(b"/webhooks/events", b'{"uuid": "gone-1", "status": "ringing"}')[:-10])
    time.sleep(0.2)
    head, _ = exchange(server, ANSWER % b"still-serving")
    assert head.startswith(b"HTTP/1.1 200")


def test_the_direct_path_checks_signatures(signed_server: tuple[str, int]) -> None:
    head, body = exchange(signed_server, ANSWER % b"unsigned")
    assert head.startswith(b"HTTP/1.1 401") and b"www-authenticate: Bearer" in head
    assert json.loads(body)["error"]["code"] == "invalid_signature"
