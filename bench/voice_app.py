"""The smallest NCCO application for bench/voice.py: a PIN prompt, then the conference named after the PIN.

answer (GET or POST) → talk (barge-in) + input (DTMF, up to 8 digits, # submits, 5 s time-out)
input (POST)         → conversation "room-<digits>" (no "you are joining" talk, so the bench's "last digit →
                       conference audio" measures the engine and not the length of a prompt)
anything else        → 204 (the event webhook)

Plain asyncio HTTP/1.1 with keep-alive (the engine's httpx client reuses its connections), no framework: the app
must cost next to nothing on the SIPp core, and it must not be what the set-up latency measures.

Run: .venv/bin/python bench/voice_app.py --port 8390   (bench/voice.py starts it pinned to core 1)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

PROMPT = "Welcome. Please enter the PIN of your meeting, followed by the hash key."
MAX_HEADER_BYTES = 16 * 1024


def answer_ncco(base: str) -> list[dict[str, Any]]:
    return [
        {"action": "talk", "text": PROMPT, "bargeIn": True},
        {
            "action": "input",
            "type": ["dtmf"],
            "dtmf": {"maxDigits": 8, "submitOnHash": True, "timeOut": 5},
            "eventUrl": [f"{base}/input"],
        },
    ]


def input_ncco(body: bytes) -> list[dict[str, Any]]:
    try:
        digits = str(json.loads(body)["dtmf"]["digits"])
    except (ValueError, KeyError, TypeError):
        digits = ""
    return [{"action": "conversation", "name": f"room-{digits}"}]


class App:
    def __init__(self, base: str) -> None:
        self.base = base
        self.counts: dict[str, int] = {}

    def route(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        route = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        self.counts[route] = self.counts.get(route, 0) + 1
        if route == "answer":
            return 200, json.dumps(answer_ncco(self.base)).encode()
        if route == "input" and method == "POST":
            return 200, json.dumps(input_ncco(body)).encode()
        return 204, b""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                status, payload = self.route(method, path, body)
                reason = "OK" if status == 200 else "No Content"
                content = (
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n" if status == 200 else ""
                )
                writer.write(f"HTTP/1.1 {status} {reason}\r\n{content}\r\n".encode() + payload)
                if headers.get("connection", "").lower() == "close":
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main(host: str, port: int) -> None:
    app = App(f"http://{host}:{port}")
    server = await asyncio.start_server(app.serve, host, port, limit=MAX_HEADER_BYTES, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(json.dumps({"requests": app.counts}), flush=True)  # the bench reads this line: did every call go through?


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8390)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
