"""Request bodies past a small limit are refused with 413 before they are read (the webhooks have their own limit).

FastAPI reads a body whole before validating it: a 200 MB `POST /api/rooms` took the server from 96 MB to 514 MB
and only then got its 422. Here a declared `Content-Length` over the limit is answered at once, without reading
a byte of the body; a body without one (chunked) is counted as it arrives and refused when it crosses the limit,
the application then seeing the client as gone (and anything it still tries to send is dropped). It sits inside
the request metrics (app.py), so either refusal is counted as the 413 it was.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dialbridge.web.errors import error_response
from dialbridge.web.webhooks import header

MAX_API_BODY: Final = 64 * 1024  # the API's largest request (a dial-out, a browser phone's SDP offer) is a few KB


class BoundedBodies:
    def __init__(self, app: ASGIApp, limit: int = MAX_API_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope["headers"], b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
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
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after a refusal the answer has been sent: the application's is dropped
                await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request bodies are limited to {self.limit} bytes"
        await error_response(413, "payload_too_large", message, {"connection": "close"})(scope, receive, send)
