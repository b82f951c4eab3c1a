"""The webhook client against a real HTTP server on 127.0.0.1: signatures the app's own verifier accepts, byte
for byte; one retry; timeouts; refused connections; invalid NCCOs. Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from dialbridge.conference.webhooks import AnswerRequest, CallEvent, PinInput
from dialbridge.engine.calls.ncco import Input, Talk
from dialbridge.engine.calls.payloads import (
    EVENT_STATUSES,
    CallInfo,
    WebhookResult,
    answer_query,
    event_payload,
    input_payload,
)
from dialbridge.engine.calls.webhooks import WebhookClient, query_string
from dialbridge.web.webhooks import query_fields
from dialbridge.webhook_signing import WebhookSignatures
from tests.aio import run_in_thread

SECRET = "a-signature-secret-of-decent-length"
NCCO = [{"action": "talk", "text": "Hello", "bargeIn": True}, {"action": "input", "type": ["dtmf"]}]
CALL = CallInfo(uuid="call-1", conversation_uuid="CON-1", from_="447700900000", to="sip:bridge@example.com")


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    raw_query: bytes
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    drip_s: float = 0.0  # send the body a byte at a time, this far apart


class ScriptedServer:
    """A minimal HTTP/1.1 server: answers each request with the next scripted reply (the last one repeats)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path, _, query = target.partition("?")
            self.received.append(Received(method, path, query.encode("latin-1"), headers, body))
            reply = self.replies[min(len(self.received), len(self.replies)) - 1]
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            head = f"HTTP/1.1 {reply.status} X\r\ncontent-length: {len(reply.body)}\r\nconnection: close\r\n"
            writer.write(head.encode() + b"content-type: application/json\r\n\r\n")
            for chunk in [reply.body[i : i + 1] for i in range(len(reply.body))] if reply.drip_s else [reply.body]:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(reply.drip_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_in_thread(test)


def client(**options: object) -> WebhookClient:
    return WebhookClient(signature_secret=SECRET, retry_delay_s=0.0, **options)  # type: ignore[arg-type]


def test_a_signed_get_passes_the_apps_verifier_byte_for_byte() -> None:
    query = answer_query(CALL, {"X-OpenTok-SessionId": "1_MX4+a/b=c&d", "X-Name": "Zoë Ünal", "X-Nexmo-Trace": "no"})
    assert "SipHeader_X-Nexmo-Trace" not in query

    async def test() -> None:
        async with ScriptedServer(Reply(body=orjson.dumps(NCCO))) as server:
            webhooks = client()
            result = await webhooks.answer(server.url("/webhooks/answer?app=one"), query)
            await webhooks.aclose()
        assert result.ok and result.status == 200 and result.error is None
        assert result.ncco == (Talk("Hello", barge_in=True), Input())
        (request,) = server.received
        assert request.method == "GET" and request.path == "/webhooks/answer"
        verified = WebhookSignatures(SECRET).verify(request.headers["authorization"], request.raw_query, time.time())
        claims = verified.claims
        assert claims["payload_hash"]
        assert query_fields(request.raw_query) == {"app": "one", **query}
        assert query_fields(request.raw_query)["SipHeader_X-OpenTok-SessionId"] == "1_MX4+a/b=c&d"

    run(test)


def test_a_signed_post_passes_the_apps_verifier() -> None:
    payload = input_payload(CALL, "1234", False, 1_800_000_000.0)

    async def test() -> None:
        async with ScriptedServer(Reply(body=orjson.dumps([{"action": "conversation", "name": "s"}]))) as server:
            webhooks = client()
            result = await webhooks.post_json(server.url("/webhooks/input"), payload, expect_ncco=True)
            await webhooks.aclose()
        assert result.ok and result.ncco is not None and len(result.ncco) == 1
        (request,) = server.received
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
        WebhookSignatures(SECRET).verify(request.headers["authorization"], request.body, time.time())
        assert orjson.loads(request.body) == payload

    run(test)


def test_without_a_secret_nothing_is_signed() -> None:
    async def test() -> None:
        async with ScriptedServer(Reply(status=204)) as server:
            webhooks = WebhookClient()
            result = await webhooks.event(server.url("/webhooks/events"), {"status": "started"})
            await webhooks.aclose()
        assert result.ok and result.status == 204
        assert "authorization" not in server.received[0].headers

    run(test)


def test_one_retry_after_503_then_success() -> None:
    seen: list[tuple[str, WebhookResult]] = []

    async def test() -> None:
        async with ScriptedServer(Reply(status=503), Reply(body=orjson.dumps(NCCO))) as server:
            webhooks = client(observer=lambda purpose, result: seen.append((purpose, result)))
            result = await webhooks.answer(server.url("/answer"), {"uuid": "u"})
            await webhooks.aclose()
        assert result.ok and result.status == 200 and len(server.received) == 2
        verifier = WebhookSignatures(SECRET)
        tokens = {  # each attempt is signed afresh: the retry is not refused as a replay of the first
            verifier.verify(request.headers["authorization"], request.raw_query, time.time()).token_id
            for request in server.received
        }
        assert len(tokens) == 2
        assert webhooks.stats.requests == {"answer": 1} and webhooks.stats.retries == {"answer": 1}
        assert seen == [("answer", result)]

    run(test)


def test_two_failures_give_up_and_a_4xx_is_not_retried() -> None:
    async def test() -> None:
        webhooks = client()
        async with ScriptedServer(Reply(status=503)) as server:
            result = await webhooks.post_json(server.url("/input"), {"a": 1}, expect_ncco=True)
            assert len(server.received) == 2
        assert not result.ok and result.status == 503 and result.ncco is None
        assert result.error == "HTTP 503 (after a retry)"
        async with ScriptedServer(Reply(status=404)) as server:
            result = await webhooks.post_json(server.url("/input"), {"a": 1}, expect_ncco=True)
            assert len(server.received) == 1
        assert not result.ok and result.status == 404 and result.error == "HTTP 404"
        assert webhooks.stats.failures == {"input": 2}
        await webhooks.aclose()

    run(test)


def test_a_server_slower_than_the_read_timeout() -> None:
    async def test() -> None:
        async with ScriptedServer(Reply(body=orjson.dumps(NCCO), delay_s=1.0)) as server:
            webhooks = client(read_timeout_s=0.2)
            result = await webhooks.answer(server.url("/answer"), {"uuid": "u"})
            await webhooks.aclose()
        assert not result.ok and result.status is None
        assert result.error is not None and result.error.startswith("timed out")
        assert len(server.received) == 2 and 0.4 <= result.elapsed_s < 1.0

    run(test)


def test_a_body_dripping_slower_than_the_attempt_limit() -> None:
    async def test() -> None:
        async with ScriptedServer(Reply(body=b" " * 100, drip_s=0.05)) as server:
            webhooks = client(connect_timeout_s=0.1, read_timeout_s=0.2)  # each attempt ends after 0.5 s
            result = await webhooks.post_json(server.url("/input"), {"a": 1}, expect_ncco=True)
            await webhooks.aclose()
        assert not result.ok and result.error is not None and result.error.startswith("timed out")
        assert len(server.received) == 2 and result.elapsed_s < 2.0

    run(test)


def test_a_closed_port_fails_without_raising() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there

    async def test() -> None:
        webhooks = client(connect_timeout_s=0.2)
        result = await webhooks.event(f"http://127.0.0.1:{port}/events", {"status": "completed"})
        bad_url = await webhooks.event("not a url", {"status": "completed"})
        await webhooks.aclose()
        assert not result.ok and result.status is None
        assert result.error is not None and result.error.startswith("connection failed")
        assert webhooks.stats.retries == {"event": 1}
        assert not bad_url.ok and bad_url.error is not None and bad_url.error.startswith("invalid URL")

    run(test)


def test_an_invalid_ncco_is_retried_once_then_reported() -> None:
    invalid = orjson.dumps([{"action": "record", "eventUrl": ["https://app.example/recordings"]}])  # not supported

    async def test() -> None:
        webhooks = client()
        async with ScriptedServer(Reply(body=invalid), Reply(body=orjson.dumps(NCCO))) as server:
            recovered = await webhooks.post_json(server.url("/input"), {"a": 1}, expect_ncco=True)
        assert recovered.ok and recovered.ncco is not None
        async with ScriptedServer(Reply(body=invalid)) as server:
            result = await webhooks.post_json(server.url("/input"), {"a": 1}, expect_ncco=True)
            assert len(server.received) == 2
        assert not result.ok and result.status == 200
        assert result.error is not None and "invalid NCCO" in result.error and "'record'" in result.error
        async with ScriptedServer(Reply(body=b"")) as server:
            empty_answer = await webhooks.answer(server.url("/answer"), {"uuid": "u"})
        assert not empty_answer.ok and empty_answer.error == "the answer held no NCCO (after a retry)"
        await webhooks.aclose()

    run(test)


def test_an_empty_eventurl_answer_means_carry_on_and_events_ignore_bodies() -> None:
    async def test() -> None:
        webhooks = client()
        async with ScriptedServer(Reply(status=200, body=b"")) as server:
            carry_on = await webhooks.post_json(server.url("/notify"), {"a": 1}, expect_ncco=True, purpose="notify")
        assert carry_on.ok and carry_on.ncco is None
        async with ScriptedServer(Reply(body=b"not json at all")) as server:
            event = await webhooks.event(server.url("/events"), {"status": "answered"})
        assert event.ok and event.ncco is None and len(server.received) == 1
        async with ScriptedServer(Reply(body=orjson.dumps(NCCO))) as server:
            by_get = await webhooks.send(server.url("/input"), "GET", {"dtmf": {"digits": "1"}}, expect_ncco=True)
            (request,) = server.received
        assert by_get.ok
        WebhookSignatures(SECRET).verify(request.headers["authorization"], request.raw_query, time.time())
        assert orjson.loads(query_fields(request.raw_query)["dtmf"]) == {"digits": "1"}
        await webhooks.aclose()

    run(test)


# -- the payloads the engine sends, read back by the app's own parsers --------------------------------------------


def test_answer_query_is_what_the_app_reads() -> None:
    query = answer_query(CALL, {"X-OpenTok-SessionId": "1_MX4abc", "Contact": "not forwarded"}, endpoint_type="sip")
    assert query == {
        "to": "sip:bridge@example.com",
        "from": "447700900000",
        "uuid": "call-1",
        "conversation_uuid": "CON-1",
        "endpoint_type": "sip",
        "SipHeader_X-OpenTok-SessionId": "1_MX4abc",
    }
    request = AnswerRequest.parse(query_fields(query_string(query)))
    assert request.session_header == "1_MX4abc"
    assert (request.call.uuid, request.call.caller, request.call.callee) == ("call-1", "447700900000", CALL.to)


def test_event_payloads_as_vonage_sends_them() -> None:
    started = 1_800_000_000.0
    end = started + 62.4
    completed = event_payload("completed", CALL, end, start_time=started, end_time=end, duration=62)
    assert completed == {
        "from": "447700900000",
        "to": "sip:bridge@example.com",
        "uuid": "call-1",
        "conversation_uuid": "CON-1",
        "status": "completed",
        "direction": "inbound",
        "start_time": "2027-01-15T08:00:00.000Z",
        "end_time": "2027-01-15T08:01:02.400Z",
        "duration": "62",
        "rate": "0",
        "price": "0",
        "timestamp": "2027-01-15T08:01:02.400Z",
    }
    event = CallEvent.parse(completed)
    assert event.is_final and event.duration == 62
    answered = event_payload("answered", CALL, started)
    assert answered["start_time"] is None and answered["rate"] is None and answered["network"] is None
    assert "direction" not in event_payload("disconnected", CALL, started)
    assert event_payload("failed", CALL, started, reason="answer webhook failed")["reason"] == "answer webhook failed"
    for status in EVENT_STATUSES - {"completed"}:
        assert CallEvent.parse(event_payload(status, CALL, started)).status == status
    with pytest.raises(ValueError):
        event_payload("completed", CALL, started)
    with pytest.raises(ValueError):
        event_payload("exploded", CALL, started)


def test_the_input_payload_is_what_the_app_reads() -> None:
    pin = PinInput.parse(input_payload(CALL, "4321", True, 1_800_000_000.0))
    assert (pin.digits, pin.timed_out, pin.call.uuid) == ("4321", True, "call-1")
