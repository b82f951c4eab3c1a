"""RTP/RTCP port pairs from a range, bound on this machine and read through the event loop: the I/O shell that both
the voice engine and the gateway put their sans-I/O RTP sessions behind."""

from __future__ import annotations

import asyncio
import errno
import random as random_module
import socket
from collections.abc import Callable

Address = tuple[str, int]


class NoMediaPorts(OSError):
    pass


class UdpMediaPorts:
    """RTP/RTCP port pairs from a range, each bound to `host` and read through the loop's `add_reader`.

    Each pair is drawn at random from the free ones, not the next in order: a port that can be guessed lets a stranger
    send to a call's port before its caller does (see RtpSession's latching)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        low: int,
        high: int,
        on_rtp: Callable[[int, bytes, Address], None],
        on_rtcp: Callable[[int, bytes, Address], None],
        setting: str = "DIALBRIDGE_RTP_PORTS",
        *,
        random: random_module.Random | None = None,
    ) -> None:
        self._range, self._setting = f"{low}-{high}", setting
        self._loop, self._host = loop, host
        self._random = random if random is not None else random_module.SystemRandom()
        self._free = list(range(low + (low % 2), high, 2))  # even RTP ports whose RTCP port is inside the range, idle
        self._open: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._on_rtp, self._on_rtcp = on_rtp, on_rtcp

    def open(self) -> int:
        busy: list[int] = []  # pairs another program holds now: freed again afterwards, to be tried next time
        try:
            while self._free:
                index = self._random.randrange(len(self._free))
                self._free[index], self._free[-1] = self._free[-1], self._free[index]
                port = self._free.pop()
                try:
                    rtp = _udp_socket(self._host, port)
                except OSError:
                    busy.append(port)
                    continue
                try:
                    rtcp = _udp_socket(self._host, port + 1)
                except OSError:
                    rtp.close()
                    busy.append(port)
                    continue
                self._open[port] = (rtp, rtcp)
                self._loop.add_reader(rtp.fileno(), self._drain, rtp, port, self._on_rtp)
                self._loop.add_reader(rtcp.fileno(), self._drain, rtcp, port, self._on_rtcp)
                return port
        finally:
            self._free += busy
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
        self._free.append(port)

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
