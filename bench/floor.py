"""The floor under any Python voice engine: a bare uvloop relay moving the packets N G.711 callers make.

bench/voice.py runs it beside the engine's own figures, on the same core and machine: per caller, 50 RTP packets a
second in (each read by a reader callback with one recvfrom, as `UdpMediaPorts` does) and, on a 20 ms clock, 50
out (one sendto each, from the caller's own socket), and nothing else: no parsing, no jitter buffer, no mixing.
What the engine costs per caller, as a multiple of this, is a figure that holds from one machine to the next.

    python bench/floor.py relay N BASE_PORT SINK_PORT   # N sockets at BASE_PORT.., sending to SINK_PORT each tick
    python bench/floor.py load N BASE_PORT SINK_PORT    # 50 packets a second to each, and drains what comes back
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Final

TICK_S: Final = 0.020
PACKET: Final = b"\x80\x08" + bytes(10) + b"\xd5" * 160  # an RTP header and 20 ms of PCMA silence: 172 bytes
HOST: Final = "127.0.0.1"


def _sockets(count: int, base: int) -> list[socket.socket]:
    found = []
    for port in range(base, base + count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((HOST, port))
        found.append(sock)
    return found


async def relay(count: int, base: int, sink_port: int) -> None:
    loop = asyncio.get_running_loop()
    sockets = _sockets(count, base)
    sink = (HOST, sink_port)
    print("ready", flush=True)

    def drain(sock: socket.socket) -> None:
        try:
            sock.recvfrom(2048)
        except OSError:
            return

    for sock in sockets:
        loop.add_reader(sock.fileno(), drain, sock)
    next_at = loop.time()
    while True:
        next_at += TICK_S
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        for sock in sockets:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per packet, as in UdpMediaPorts
                sock.sendto(PACKET, sink)
            except OSError:
                pass


async def load(count: int, base: int, sink_port: int) -> None:
    loop = asyncio.get_running_loop()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    sink = _sockets(1, sink_port)[0]
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def drain() -> None:
        for _ in range(64):
            try:
                sink.recvfrom(2048)
            except OSError:
                return

    loop.add_reader(sink.fileno(), drain)
    print("ready", flush=True)
    targets = [(HOST, port) for port in range(base, base + count)]
    next_at = loop.time()
    while True:
        next_at += TICK_S
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        for target in targets:
            try:  # noqa: SIM105 - as above
                out.sendto(PACKET, target)
            except OSError:
                pass


def main() -> None:
    import uvloop

    mode, count, base, sink_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    uvloop.run((relay if mode == "relay" else load)(count, base, sink_port))


if __name__ == "__main__":
    main()
