"""Whatever a client sends, the server answers it without an internal error: a property over every webhook and API
route, through a real `dialbridge serve` (the HTTP protocol's direct webhook path, as in production)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.served import Served, serving_embedded

FIELDS = ["uuid", "conversation_uuid", "status", "duration", "from", "to", "timestamp", "start_time", "end_time",
          "dtmf", "digits", "SipHeader_X-OpenTok-SessionId", "room_id", "number", "call_id"]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=40,
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8),
    JSON,
    st.binary(max_size=200),  # not JSON at all
)


def _nested(depth: int) -> bytes:
    """An event whose extra field nests `depth` objects deep, as raw JSON (too deep for json.dumps to write)."""
    return b'{"uuid":"c1","status":"completed","extra":' + b'{"x":' * depth + b"{}" + b"}" * depth + b"}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The embedded backend: it has no upstream to fail (the Vonage one answers 502 when Vonage is unreachable).
    with serving_embedded(tmp_path_factory.mktemp("server")) as served:
        yield served


def _send(served: Served, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> int:
    if isinstance(body, bytes):
        content = body
    else:
        try:
            content = json.dumps(body).encode()
        except (ValueError, RecursionError):
            content = b"{"
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request(method, path, body=content, headers={"content-type": "application/json", **(headers or {})})
        return connection.getresponse().status
    finally:
        connection.close()


WEBHOOKS = [("POST", "/webhooks/answer"), ("POST", "/webhooks/input"), ("POST", "/webhooks/events"),
            ("POST", "/nexmo-events"), ("POST", "/nexmo-dtmf")]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(WEBHOOKS), body=BODIES)
@example(route=("POST", "/webhooks/events"), body={"uuid": "c1", "status": "completed", "duration": 10**20})
@example(route=("POST", "/webhooks/events"), body={"uuid": "c1", "status": "completed", "duration": "-1"})
@example(route=("POST", "/webhooks/events"), body=_nested(995))
@example(route=("POST", "/webhooks/events"), body=_nested(200))
@example(route=("POST", "/webhooks/input"), body={"uuid": "c1", "dtmf": {"digits": "9" * 5000}})
def test_no_webhook_body_yields_a_server_error(server: Served, route: tuple[str, str], body: Any) -> None:
    method, path = route
    assert _send(server, method, path, body) < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/webhooks/answer", "/webhooks/events", "/nexmo-answer"]),
    query=st.lists(st.tuples(st.sampled_from(FIELDS) | st.text(max_size=10), st.text(max_size=300)), max_size=8),
)
@example(path="/webhooks/events", query=[("uuid", "c"), ("status", "completed"), ("duration", "9" * 30)])
def test_no_webhook_query_yields_a_server_error(server: Served, path: str, query: list[tuple[str, str]]) -> None:
    assert _send(server, "GET", f"{path}?{urlencode(query)}", b"") < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    room=st.text(max_size=80),
    body=BODIES,
    token=st.sampled_from(["", "Bearer ", "Bearer x.y.z", "Basic abc", "Bearer " + "A" * 5000]),
)
def test_no_api_request_yields_a_server_error(server: Served, room: str, body: Any, token: str) -> None:
    headers = {"authorization": token} if token else {}
    room_path = quote(room, safe="")
    assert _send(server, "POST", "/api/rooms", body) < 500
    if room_path:
        assert _send(server, "GET", f"/api/rooms/{room_path}", b"") < 500
        for action in ("dial-out", "hang-up"):
            assert _send(server, "POST", f"/api/rooms/{room_path}/{action}", body, headers) < 500


def test_bad_event_fields_are_refused_with_422_naming_them(server: Served) -> None:
    """The two events that were 500s: a duration past SQLite's integer, a payload nested ~1,000 deep."""
    assert _send(server, "POST", "/webhooks/events", {"uuid": "c", "status": "completed", "duration": 10**20}) == 422
    assert _send(server, "POST", "/webhooks/events", _nested(995)) == 422
    assert _send(server, "POST", "/webhooks/events", {"uuid": "c", "status": "completed", "duration": 60}) == 204


def _exchange(served: Served, head: bytes, body_chunks: tuple[bytes, ...] | list[bytes] = ()) -> int:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as connection:
        connection.sendall(head)
        for chunk in body_chunks:
            try:
                connection.sendall(chunk)
            except OSError:  # the server answered and closed while the client was still sending
                break
        return int(connection.makefile("rb").readline().split()[1])


def test_an_api_body_declared_too_large_is_refused_before_it_is_sent(server: Served) -> None:
    # 200 MB declared, not a byte of it sent: the answer comes anyway, so the server did not wait to read it.
    head = b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
    assert _exchange(server, head) == 413


def test_a_chunked_api_body_is_refused_once_it_crosses_the_limit(server: Served) -> None:
    head = (
        b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(64)] + [b"0\r\n\r\n"]  # 1 MB
    assert _exchange(server, head, chunks) == 413
    # A body within the limit is served as before.
    assert _send(server, "POST", "/api/rooms", {"room_id": "bounded"}) == 201
