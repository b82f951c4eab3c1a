"""The server's HTTP protocol: uvicorn's (httptools), with two changes for the webhooks' sake.

1. Each small response leaves in one TCP segment instead of two. uvicorn writes a response's head and its body
   with two `transport.write` calls, so an answer costs two send() calls and two segments, each of which the kernel
   and the client must process. Here the head is held back until the body's write joins it; whatever else happens
   (a HEAD request, a 100 Continue, a streamed body that pauses), the held head is sent at the end of the current
   event-loop turn, so nothing waits longer.

2. Webhook requests skip the ASGI machinery. Vonage sends a webhook for every call and keypress, each a few
   hundred bytes answered by a few hundred bytes; per request, uvicorn builds a scope, a request-response cycle
   with its event, the ASGI receive/send messages and walks the response headers in Python — measured, more of
   the server's time than the webhook's own work. A request for a webhook path on an idle connection is instead
   collected here and handed to `WebhookEndpoints.answer` (the same code the ASGI path ends in, so answers,
   errors and metrics are the same), and its answer written in one piece. Everything uvicorn does for the
   connection is kept: keep-alive and its timeout, pipelined requests (queued behind this one as behind any),
   `Connection: close`, HTTP/1.0, graceful shutdown. Anything unusual — `Expect: 100-continue`, an upgrade, HEAD,
   a percent-encoded path, a concurrency limit, an app that is not dialbridge's — takes uvicorn's own path.
   (uvicorn's access log, off in `dialbridge serve`, does not see these requests; the request metrics do.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from dialbridge.web.webhooks import (
    MAX_BODY,
    WEBHOOKS,
    Webhook,
    WebhookAnswer,
    WebhookEndpoints,
    header,
    too_large,
)

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class _JoiningTransport:
    """A transport that joins a response head with the write that follows it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + bytes(data))
        elif isinstance(data, bytes) and data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = data
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def write_whole(self, data: bytes) -> None:
        """Write a complete response (after anything held)."""
        self._release()
        self._transport.write(data)

    def _release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _webhook_endpoints(app: Any) -> WebhookEndpoints | None:
    """dialbridge's webhook layer inside the loaded app (uvicorn wraps it in middleware of its own), if there."""
    for _ in range(8):
        endpoints = getattr(app, "webhook_endpoints", None)
        if isinstance(endpoints, WebhookEndpoints):
            return endpoints
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class _WebhookExchange:
    """One webhook request on the direct path, standing where uvicorn keeps its request-response cycle.

    uvicorn's protocol reads and sets `body`, `more_body`, `response_complete`, `keep_alive` and `disconnected`
    on the current cycle and calls `message_event.set()` when body arrives, the message completes or the
    connection is lost; that call is what moves this exchange on."""

    __slots__ = (
        "authorization",
        "body",
        "disconnected",
        "endpoints",
        "keep_alive",
        "method",
        "more_body",
        "protocol",
        "query",
        "response_complete",
        "started",
        "webhook",
    )

    def __init__(
        self,
        protocol: DialbridgeHttpProtocol,
        endpoints: WebhookEndpoints,
        webhook: Webhook,
        method: str,
        query: bytes,
        authorization: str | None,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.endpoints = endpoints
        self.webhook = webhook
        self.method = method
        self.query = query
        self.authorization = authorization
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.response_complete = False
        self.disconnected = False
        self.started = False

    @property
    def message_event(self) -> _WebhookExchange:
        """What uvicorn signals on; a property rather than an attribute, so no exchange refers to itself (a
        reference cycle per request would be left to the garbage collector)."""
        return self

    def set(self) -> None:
        if self.started or self.disconnected:
            return
        if len(self.body) > MAX_BODY:
            self.start(self.endpoints.refused(self.webhook, self.method, too_large()))
        elif not self.more_body:
            self.start(None)

    def start(self, answer: WebhookAnswer | None) -> None:
        self.started = True
        protocol = self.protocol
        task = protocol.loop.create_task(self.run(answer))
        protocol.tasks.add(task)
        task.add_done_callback(protocol.tasks.discard)

    async def run(self, answer: WebhookAnswer | None) -> None:
        protocol = self.protocol
        if answer is None:
            payload = self.query if self.method == "GET" else bytes(self.body)
            answer = await self.endpoints.answer(self.webhook, self.method, payload, self.authorization)
        self.response_complete = True
        if self.disconnected or protocol.transport.is_closing():
            return
        head = [STATUS_LINE[answer.status], protocol.default_head()]
        for name, value in answer.headers:
            head += [name, b": ", value, b"\r\n"]
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", answer.content]
        protocol.joining.write_whole(b"".join(head))
        if not self.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()


class DialbridgeHttpProtocol(HttpToolsProtocol):
    endpoints: WebhookEndpoints | None = None
    _default_headers: list[tuple[bytes, bytes]] | None = None
    _default_head = b""

    def default_head(self) -> bytes:
        """uvicorn's default response headers (date, server) as header lines; uvicorn replaces the list when the
        date changes, so they are rendered once per list, not per response."""
        headers = self.server_state.default_headers
        if headers is not self._default_headers:
            self._default_headers = headers
            self._default_head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return self._default_head

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.joining = _JoiningTransport(transport, asyncio.get_running_loop())
        self.endpoints = _webhook_endpoints(self.app)
        joined: Any = self.joining
        super().connection_made(joined)

    def on_headers_complete(self) -> None:
        exchange = self._webhook_exchange()
        if exchange is None:
            super().on_headers_complete()
            return
        self.cycle = exchange  # type: ignore[assignment]
        early = exchange.endpoints.refuse_early(
            exchange.webhook, exchange.method, header(self.headers, b"content-length")
        )
        if early is not None:
            exchange.start(early)

    def _webhook_exchange(self) -> _WebhookExchange | None:
        """A direct-path exchange for this request, if it is a webhook request the direct path can take."""
        endpoints = self.endpoints
        if (
            endpoints is None
            or self.expect_100_continue
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
            or (self.cycle is not None and not self.cycle.response_complete)  # pipelined: queue as uvicorn does
        ):
            return None
        method = self.parser.get_method().decode("ascii")
        if method == "HEAD":  # its answer has no body: uvicorn knows how to leave it out
            return None
        raw_path, _, query = self.url.partition(b"?")
        if b"%" in raw_path or not raw_path.startswith(b"/") or not raw_path.isascii():  # uvicorn handles those
            return None
        webhook = WEBHOOKS.get(self.root_path + raw_path.decode("ascii"))
        if webhook is None:
            return None
        http_version = self.parser.get_http_version()
        return _WebhookExchange(
            self,
            endpoints,
            webhook,
            method,
            query.partition(b"#")[0],
            header(self.headers, b"authorization"),
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
        )
