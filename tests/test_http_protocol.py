"""The server's HTTP protocol, over real sockets: responses arrive whole (head and body in one write), and
webhooks on the direct path (server/http.py) behave as HTTP/1.1 requires — keep-alive, pipelining, closing, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from dialbridge.config import Settings
from dialbridge.server.http import DialbridgeHttpProtocol
from dialbridge.web.app import create_app
from dialbridge.web.webhooks import WebhookEndpoints
from tests.direct_path import serving as served


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    yield from serving(settings)


@pytest.fixture
def signed_server(settings: Settings) -> Iterator[tuple[str, int]]:
    yield from serving(settings.model_copy(update={"signature_secret": SecretStr("protocol-test-secret-0123456789")}))


@pytest.fixture
def bounded_server(settings: Settings) -> Iterator[tuple[str, int]]:
    """A server with short limits: requests must arrive within 0.5 s, idle connections last 1 s, 8 at most."""
    limited = settings.model_copy(update={"request_timeout_s": 0.5, "max_connections": 8})
    yield from serving(limited, timeout_keep_alive=1)


def serving(settings: Settings, **options: Any) -> Iterator[tuple[str, int]]:
    with served(create_app(settings), **options) as address:
        yield address


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


class SocketWrites:
    """What the server handed its sockets, write by write (each a send() call, a TCP segment for a small one)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture
def socket_writes(monkeypatch: pytest.MonkeyPatch) -> list[SocketWrites]:
    """Every connection's writes, beneath the protocol's joining of heads with bodies."""
    connections: list[SocketWrites] = []
    connection_made = DialbridgeHttpProtocol.connection_made

    def recording(self: DialbridgeHttpProtocol, transport: asyncio.Transport) -> None:
        connections.append(SocketWrites(transport))
        connection_made(self, connections[-1])  # type: ignore[arg-type]

    monkeypatch.setattr(DialbridgeHttpProtocol, "connection_made", recording)
    return connections


def test_webhook_json_and_empty_responses_arrive_whole(
    server: tuple[str, int], socket_writes: list[SocketWrites]
) -> None:
    head, body = exchange(server, b"GET /webhooks/answer?uuid=c1&from=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body.startswith(b'[{"action":"talk"')
    event = b'{"uuid": "c1", "status": "ringing"}'
    request = b"POST /webhooks/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head, body = exchange(server, request + b"Content-Length: %d\r\n\r\n" % len(event) + event)
    assert head.startswith(b"HTTP/1.1 204") and body == b""
    assert [len(connection.writes) for connection in socket_writes] == [1, 1]


def test_responses_through_uvicorn_leave_head_and_body_in_one_write(
    asgi_paths: list[str], server: tuple[str, int], socket_writes: list[SocketWrites]
) -> None:
    """uvicorn writes a head, then a body: the protocol joins them. A page, an error, and a webhook request
    the direct path leaves to uvicorn (a percent-encoded path) each leave in one write."""
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api/no-such-thing HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /webhooks/%61nswer?uuid=c3&from=1 HTTP/1.1\r\nHost: t\r\n\r\n",
    ):
        head, body = exchange(server, request)
        assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404")) and body
        written = socket_writes[-1].writes
        assert written == [head + b"\r\n\r\n" + body], f"{request!r} left in {len(written)} writes"
    assert asgi_paths == ["/healthz", "/api/no-such-thing", "/webhooks/answer"]


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


def test_a_large_page_streams_complete_its_head_first(
    server: tuple[str, int], socket_writes: list[SocketWrites]
) -> None:
    head, body = exchange(server, b"GET /static/ot-embedded.js HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"initSession" in body and len(body) > 10_000
    # The file's first chunk is read in a thread, after the loop turn that holds the head: the head goes alone.
    assert socket_writes[0].writes[0] == head + b"\r\n\r\n"
    assert b"".join(socket_writes[0].writes) == head + b"\r\n\r\n" + body


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
    assert json.loads(answers[0][1])[0]["action"] == "talk" and json.loads(answers[1][1])["backend"] == "embedded"


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


# Bounded requests (server/limits.py): what one client sends cannot exhaust the server.


def error_of(head: bytes, body: bytes) -> tuple[int, str]:
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]["code"]


def test_a_request_target_past_8_kib_is_refused_with_414(server: tuple[str, int]) -> None:
    for path in (b"/api/rooms/" + b"a" * 9000, b"/webhooks/answer?uuid=" + b"u" * 9000):
        with socket.create_connection(server, timeout=5) as conn:
            conn.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
            head, body, _ = read_response(conn)
            assert error_of(head, body) == (414, "uri_too_long") and closed_by_server(conn)
    head, _ = exchange(server, b"GET /webhooks/answer?uuid=%s&from=1 HTTP/1.1\r\nHost: t\r\n\r\n" % (b"u" * 7000))
    assert not head.startswith(b"HTTP/1.1 414")


def test_a_header_without_end_is_refused_with_431_as_it_arrives_not_buffered(server: tuple[str, int]) -> None:
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent, answer = 0, b""
        conn.setblocking(False)
        while not answer and sent < 50_000_000:
            try:
                sent += conn.send(b"x" * 4096)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
            with contextlib.suppress(BlockingIOError):
                answer = conn.recv(65536)
        # Refused once the head passed 32 KiB: what was sent beyond that is what the sockets' buffers held.
        assert answer.startswith(b"HTTP/1.1 431"), f"no refusal after {sent} bytes"
        assert sent < 8_000_000


def test_too_many_headers_or_too_large_a_head_get_431_and_a_large_allowed_head_passes(server: tuple[str, int]) -> None:
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(101))
    large = b"X-Big: %s\r\n" % (b"b" * 40_000)
    for extra in (many, large):
        with socket.create_connection(server, timeout=5) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n")
            head, body, _ = read_response(conn)
            assert error_of(head, body) == (431, "headers_too_large") and closed_by_server(conn)
    fine = b"X-Big: %s\r\n" % (b"b" * 20_000)
    head, _ = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fine + b"\r\n")
    assert head.startswith(b"HTTP/1.1 200")


def test_a_request_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed(
    bounded_server: tuple[str, int],
) -> None:
    stalled_head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: "
    stalled_body = post(b"/webhooks/events", b'{"uuid": "slow-1", "status": "ringing"}')[:-10]
    stalled_api_body = post(b"/api/rooms", b'{"name": "slow room"}')[:-5]
    for partial in (stalled_head, stalled_body, stalled_api_body):
        with socket.create_connection(bounded_server, timeout=5) as conn:
            conn.sendall(partial)
            started = time.monotonic()
            head, body, _ = read_response(conn)
            assert error_of(head, body) == (408, "request_timeout") and closed_by_server(conn)
            assert 0.4 < time.monotonic() - started < 3


def test_a_slow_request_that_arrives_in_time_is_answered(bounded_server: tuple[str, int]) -> None:
    request = ANSWER % b"steady"
    with socket.create_connection(bounded_server, timeout=5) as conn:
        for piece in (request[:20], request[20:40], request[40:]):
            conn.sendall(piece)
            time.sleep(0.1)
        head, _, _ = read_response(conn)
        assert head.startswith(b"HTTP/1.1 200")


def test_a_connection_that_never_sends_is_closed_after_the_keep_alive_timeout(bounded_server: tuple[str, int]) -> None:
    with socket.create_connection(bounded_server, timeout=5) as conn:
        started = time.monotonic()
        assert closed_by_server(conn)
        assert 0.9 < time.monotonic() - started < 3.5


def test_a_full_server_lets_go_of_the_slowest_connection_for_a_new_one(bounded_server: tuple[str, int]) -> None:
    slow = []
    for n in range(8):
        conn = socket.create_connection(bounded_server, timeout=5)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow-%d: " % n)
        slow.append(conn)
        time.sleep(0.02)
    try:
        head, _ = exchange(bounded_server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        head, body, _ = read_response(slow[0])  # the one that kept the server waiting longest
        assert error_of(head, body) == (408, "request_timeout")
        slow[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            slow[-1].recv(1)  # the newest slow one is still held
    finally:
        for conn in slow:
            conn.close()


@pytest.mark.parametrize("request_bytes", [ANSWER % b"half-closed", b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"])
def test_a_client_that_half_closes_after_its_request_gets_the_answer(
    server: tuple[str, int], request_bytes: bytes
) -> None:
    with socket.create_connection(server, timeout=5) as conn:
        conn.sendall(request_bytes)
        conn.shutdown(socket.SHUT_WR)
        head, _, _ = read_response(conn)
        # (With `connection: close` when the server saw the half-close before answering; it may answer first.)
        assert head.startswith(b"HTTP/1.1 200")
        assert closed_by_server(conn)
