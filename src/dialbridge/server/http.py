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

3. Nothing a client sends can hold the server (server/limits.py): a request target over 8 KiB is refused with
   414 and a head over 32 KiB or 100 headers with 431 as the bytes arrive, not after they are buffered; a request
   must arrive whole within `request_timeout_s` of its first byte (else 408) and a connection may sit idle,
   even before its first request, for uvicorn's keep-alive timeout; a process full of connections lets go of
   the one that has kept it waiting longest. A client that half-closes after a whole request still gets its
   answer (uvicorn closed the connection on end-of-file, dropping it).

The protocol relies on uvicorn internals that are not its API: `server/choice.py` checks them before use and falls
back to uvicorn's own protocol, with a warning, when a uvicorn release changes them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from dialbridge.server.limits import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_TARGET,
    ClientWaits,
    ServerLimits,
    connection_cap,
    descriptor_limit,
)
from dialbridge.web.errors import error_response
from dialbridge.web.webhooks import (
    MAX_BODY,
    WEBHOOKS,
    Webhook,
    WebhookAnswer,
    WebhookEndpoints,
    header,
    too_large,
)

log = logging.getLogger("dialbridge.http")
_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"
DEFAULT_REQUEST_TIMEOUT_S = 5.0
SWEEP_EVERY_S = 1.0
LINGER_S = 2.0  # how long a refused connection is read (and discarded) so that the client sees the refusal


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


class _Served:
    """What every connection of one served application shares: its webhook layer, its limits, and the record of
    which connections wait on their clients, swept once a second."""

    def __init__(self, app: Any, idle_timeout_s: float) -> None:
        dialbridge = _dialbridge_app(app)
        settings = getattr(getattr(dialbridge, "services", None), "settings", None)
        self.endpoints: WebhookEndpoints | None = getattr(dialbridge, "webhook_endpoints", None)
        self.limits = ServerLimits(
            request_timeout_s=getattr(settings, "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S),
            idle_timeout_s=idle_timeout_s,
            max_connections=connection_cap(getattr(settings, "max_connections", None), descriptor_limit()),
        )
        self.waits: ClientWaits[DialbridgeHttpProtocol] = ClientWaits()
        self._sweeping: asyncio.TimerHandle | None = None

    def start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeping is None:
            self._sweeping = loop.call_later(SWEEP_EVERY_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        slow, idle = self.waits.overdue(loop.time(), self.limits)
        for connection in slow:
            connection.request_overdue()
        for connection in idle:
            connection.let_go()
        if len(self.waits):
            self.start_sweeping(loop)


_SERVED: weakref.WeakKeyDictionary[Any, _Served] = weakref.WeakKeyDictionary()


def _dialbridge_app(app: Any) -> Any:
    """dialbridge's application inside the loaded app (uvicorn wraps it in middleware of its own), if there."""
    for _ in range(8):
        if isinstance(getattr(app, "webhook_endpoints", None), WebhookEndpoints):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class _Refused(Exception):
    """Raised from a parser callback once the request has been answered with a refusal: stops the parser."""


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
        "response_started",
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
        self.response_started = False  # its answer is on the way: nothing else may be written for it

    @property
    def message_event(self) -> _WebhookExchange:
        """What uvicorn signals on; a property rather than an attribute, so no exchange refers to itself (a
        reference cycle per request would be left to the garbage collector)."""
        return self

    def set(self) -> None:
        if self.response_started or self.disconnected:
            return
        if len(self.body) > MAX_BODY:
            self.start(self.endpoints.refused(self.webhook, self.method, too_large()))
        elif not self.more_body:
            self.start(None)

    def start(self, answer: WebhookAnswer | None) -> None:
        self.response_started = True
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
        protocol.write_response(answer.status, answer.headers, answer.content, self.keep_alive)
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

    def write_response(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes, keep_alive: bool) -> None:
        """Write a whole response in one piece; without keep-alive, close the connection after it."""
        self.joining.write_whole(self.response_bytes(status, headers, content, keep_alive))
        if not keep_alive:
            self.transport.close()

    def response_bytes(
        self, status: int, headers: list[tuple[bytes, bytes]], content: bytes, keep_alive: bool
    ) -> bytes:
        head = [STATUS_LINE[status], self.default_head()]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", content]
        return b"".join(head)

    # The connection's life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        self.joining = _JoiningTransport(transport, loop)
        served = _SERVED.get(self.app)
        if served is None:
            served = _SERVED[self.app] = _Served(self.app, self.timeout_keep_alive)
        self.served = served
        self.endpoints = served.endpoints
        self.in_request = False  # a request has begun and not yet arrived whole
        self.in_head = False  # ... and its head has not either
        self.began_here = False  # the request being received began in the bytes being parsed
        self.head_size = 0  # of the head being received, what the parser has handed over
        self.streamed_head = 0  # ... and what has arrived
        self.header_count = 0
        self.refused = False
        joined: Any = self.joining
        super().connection_made(joined)
        served.waits.idle(self, loop.time())  # a connection that never sends a byte is let go too
        served.start_sweeping(loop)
        if len(self.connections) > served.limits.max_connections:
            oldest = served.waits.longest_waiting(besides=self)
            if oldest is not None:
                oldest.let_go()
            else:  # every other connection is being answered: this one must wait its turn
                self.refuse(503, "server_busy", "the server holds as many connections as it may; retry shortly")

    def connection_lost(self, exc: Exception | None) -> None:
        self.served.waits.gone(self)
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client has finished sending. A request that arrived whole is still answered (then the connection
        closes); asyncio's default, closing at once, would drop the answer."""
        cycle = self.pipeline[0][0] if self.pipeline else self.cycle
        if self.refused or self.in_request or cycle is None or cycle.response_complete:
            return None
        cycle.keep_alive = False
        return True

    def let_go(self) -> None:
        """Close a connection the server can no longer keep: idle, or too slow while others wait."""
        if self.in_request:
            self.request_overdue()
        elif not self.transport.is_closing():
            self.served.waits.gone(self)
            self.transport.close()

    def request_overdue(self) -> None:
        if self.flow.read_paused:  # the server stopped reading, not the client sending: not the client's delay
            self.served.waits.receiving(self, self.loop.time())
            return
        timeout = self.served.limits.request_timeout_s
        self.refuse(408, "request_timeout", f"the request did not arrive whole within {timeout:g} s of its first byte")

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer the request being received with an error and close the connection; a request whose answer has
        begun, or one behind another still being answered, is only cut off (an answer now would be out of turn)."""
        self.refused = True
        self.served.waits.gone(self)
        if self.transport.is_closing():
            return
        answering = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if answering is not None:
            answering.keep_alive = False
            answering.disconnected = True  # what the application still sends for it is dropped
            answering.message_event.set()
        if answering is None or (not answering.response_started and not self.pipeline and not self.in_head):
            refusal = error_response(status, code, message)
            self.joining.write_whole(self.response_bytes(status, refusal.raw_headers, bytes(refusal.body), False))
            self.close_after_reading()
        else:
            self.transport.close()

    def close_after_reading(self) -> None:
        """Close once the client has read the refusal: a socket closed with the client's bytes still unread
        sends a reset, and the reset makes the client's kernel drop the refusal it had received (seen: a client
        still sending an oversized header got no 431 at all). So: no more writes (FIN after the refusal), what
        arrives is discarded, and the connection closes at the client's end-of-file or after `LINGER_S`."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    # Bytes in

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        self.began_here = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Refused):
                log.debug("invalid HTTP request from %s: %s", self.client, exc)
                self.refuse(400, "bad_request", f"the request is not valid HTTP/1.1 ({exc})")
            return
        if self.in_head:
            # The parser hands a header over only once it is whole and holds the part it has: what the callbacks
            # saw undercounts, so bytes that arrived while the head was all that was coming count too.
            self.streamed_head = self.head_size if self.began_here else self.streamed_head + len(data)
            if self.streamed_head > MAX_HEAD:
                self.refuse(431, "headers_too_large", f"request heads are limited to {MAX_HEAD} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_request = self.in_head = self.began_here = True
        self.head_size = self.streamed_head = self.header_count = 0
        self.served.waits.receiving(self, self.loop.time())

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.head_size += len(url)
        if len(self.url) > MAX_TARGET:
            self.refuse(414, "uri_too_long", f"request targets (path and query) are limited to {MAX_TARGET} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.header_count += 1
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD or self.header_count > MAX_HEADERS:
            limits = f"request heads are limited to {MAX_HEAD} bytes and {MAX_HEADERS} headers"
            self.refuse(431, "headers_too_large", limits)
            raise _Refused

    def on_headers_complete(self) -> None:
        self.in_head = False
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

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_request = False
        self.served.waits.busy(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.in_request and not self.pipeline and not self.transport.is_closing():
            self.served.waits.idle(self, self.loop.time())

    def handle_websocket_upgrade(self) -> None:
        self.served.waits.gone(self)  # a WebSocket has its own keep-alive (pings) and message size limit
        super().handle_websocket_upgrade()

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
