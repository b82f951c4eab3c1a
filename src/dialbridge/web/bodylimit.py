"""Request bodies past a small limit are refused with 413 before they are read (the webhooks have their own limit).

FastAPI reads a body whole before validating it: a 200 MB `POST /api/rooms` took the server from 96 MB to 514 MB
and only then got its 422. Here a declared `Content-Length` over the limit is answered at once, without reading
a byte of the body; a body without one (chunked) is counted as it arrives and refused when it crosses the limit,
the application then seeing the client as gone (and anything it still tries to send is dropped).
"""

from __future__ import annotations

from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_API_BODY: Final = 64 * 1024  # the API's largest request (a dial-out, a browser phone's SDP offer) is a few KB


class BoundedBodies:
    def __init__(self, app: ASGIApp, limit: int = MAX_API_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        received = 0
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after a refusal the answer has been sent: the application's is dropped
                await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            {"error": {"code": "payload_too_large", "message": f"request bodies are limited to {self.limit} bytes"}}
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
