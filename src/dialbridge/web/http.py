"""uvicorn's HTTP protocol, sending each small response in one TCP segment instead of two.

uvicorn (httptools) writes a response's head and its body with two `transport.write` calls, so a webhook's answer
leaves in two send() calls and two segments, each of which the kernel and the client must process. Here the head
is held back until the body's write joins it; whatever else happens (a HEAD request, a 100 Continue, a streamed
body that pauses), the held head is sent at the end of the current event-loop turn, so nothing waits longer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class JoiningHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined: Any = _JoiningTransport(transport, asyncio.get_running_loop())
        super().connection_made(joined)
