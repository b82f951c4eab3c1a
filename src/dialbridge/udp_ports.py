"""RTP/RTCP port pairs from a range, bound on this machine and read through the event loop: the I/O shell that both
the voice engine and the gateway put their sans-I/O RTP sessions behind."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

Address = tuple[str, int]


class NoMediaPorts(OSError):
    pass


class UdpMediaPorts:
    """RTP/RTCP port pairs from a range, each bound to `host` and read through the loop's `add_reader`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        low: int,
        high: int,
        on_rtp: Callable[[int, bytes, Address], None],
        on_rtcp: Callable[[int, bytes, Address], None],
        setting: str = "DIALBRIDGE_RTP_PORTS",
    ) -> None:
        self._range, self._setting = f"{low}-{high}", setting
        self._loop, self._host = loop, host
        self._free = list(range(low + (low % 2), high, 2))  # even RTP ports whose RTCP port is inside the range
        self._next = 0
        self._open: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._on_rtp, self._on_rtcp = on_rtp, on_rtcp

    def open(self) -> int:
        for _ in range(len(self._free)):
            port = self._free[self._next]
            self._next = (self._next + 1) % len(self._free)
            if port in self._open:
                continue
            try:
                rtp = _udp_socket(self._host, port)
            except OSError:
                continue
            try:
                rtcp = _udp_socket(self._host, port + 1)
            except OSError:
                rtp.close()
                continue
            self._open[port] = (rtp, rtcp)
            self._loop.add_reader(rtp.fileno(), self._drain, rtp, port, self._on_rtp)
            self._loop.add_reader(rtcp.fileno(), self._drain, rtcp, port, self._on_rtcp)
            return port
        raise NoMediaPorts(
            errno.EADDRINUSE,
            "no free RTP port pair: widen the RTP port range (DIALBRIDGE_RTP_PORTS, DIALBRIDGE_GATEWAY_RTP_PORTS)",
        )

    def close(self, port: int) -> None:
        pair = self._open.pop(port, None)
        if pair is None:
            return
        for sock in pair:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def send(self, port: int, data: bytes, destination: Address) -> None:
        pair = self._open.get(port - (port % 2))
        if pair is None:
            return
        # A full buffer (BlockingIOError) or an unreachable peer loses the packet, as UDP does. try/except, not
        # contextlib.suppress: this runs for every packet sent, and suppress costs a context manager each time.
        try:  # noqa: SIM105
            pair[port % 2].sendto(data, destination)
        except OSError:
            pass

    def _drain(self, sock: socket.socket, port: int, handler: Callable[[int, bytes, Address], None]) -> None:
        # One datagram per call: the loop polls level-triggered and calls again while more are queued, so a
        # flooded socket gets one turn per loop iteration like every other (it cannot starve the clock), and the
        # usual case costs one recvfrom instead of a second one failing with EAGAIN.
        try:
            data, source = sock.recvfrom(2048)
        except OSError:  # EAGAIN after a spurious wake-up, or ICMP port unreachable (Linux reports it here)
            return
        handler(port, data, source if len(source) == 2 else (source[0], source[1]))

    def close_all(self) -> None:
        for port in list(self._open):
            self.close(port)


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
