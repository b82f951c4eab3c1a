"""The gateway's SIP over TCP: client connections to the peers it dials with `;transport=tcp`.

One connection per peer address, opened when a call to it is dialled and shared by the calls to that peer; bounded
(at most `max_connections`); closed `LINGER_S` after the last call using it is released, so that what runs after
a call's end (a CANCEL's 487 and its ACK, a BYE's answer) still has its connection. Bytes arriving on a connection
are cut into whole messages (`SipStreamFramer`) and handed to the gateway; a connection that closes or cannot be
framed is reported (`on_lost`) so the SIP agent fails whatever still used it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, cast

from dialbridge.sip.message import SipParseError, SipStreamFramer

log = logging.getLogger(__name__)

Address = tuple[str, int]
CONNECT_TIMEOUT_S: Final = 5.0
LINGER_S: Final = 4.0


class TcpUnavailable(Exception):
    """No connection could be made (refused, unreachable, timed out, or the gateway holds too many)."""


class _Connection(asyncio.Protocol):
    def __init__(self, owner: SipTcpConnections, peer: Address) -> None:
        self._owner = owner
        self._peer = peer
        self._framer = SipStreamFramer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except SipParseError as exc:  # the stream cannot be resynchronised: drop it
            log.warning("gateway: unframeable SIP from %s over TCP (%s); closing the connection", self._peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self._owner.on_message(message, self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost(self._peer, self)


class SipTcpConnections:
    def __init__(
        self,
        on_message: Callable[[bytes, Address], None],
        on_lost: Callable[[Address], None],
        max_connections: int,
    ) -> None:
        self.on_message = on_message
        self._on_lost = on_lost
        self._max = max_connections
        self._open: dict[Address, _Connection] = {}
        self._closers: dict[Address, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def connect(self, peer: Address) -> None:
        """Have a connection to `peer` (the one already open, or a new one)."""
        self._keep(peer)
        if peer in self._open:
            return
        if len(self._open) >= self._max:
            raise TcpUnavailable(f"the gateway holds {self._max} TCP connections (DIALBRIDGE_GATEWAY_MAX_CALLS)")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, peer), *peer), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise TcpUnavailable(f"cannot connect to {peer[0]}:{peer[1]} over TCP: {exc or 'timed out'}") from None
        if peer in self._open:  # another dial to this peer connected meanwhile: keep one
            if connection.transport is not None:
                connection.transport.close()
            return
        self._open[peer] = connection

    def send(self, peer: Address, data: bytes) -> bool:
        connection = self._open.get(peer)
        if connection is None or connection.transport is None or connection.transport.is_closing():
            return False
        connection.transport.write(data)
        return True

    def release(self, peer: Address) -> None:
        """No call uses `peer`'s connection any more: close it after `LINGER_S`, unless a call takes it again."""
        if peer in self._open and peer not in self._closers:
            self._closers[peer] = asyncio.get_running_loop().call_later(LINGER_S, self._close, peer)

    def lost(self, peer: Address, connection: _Connection) -> None:
        if self._open.get(peer) is connection:
            del self._open[peer]
            self._keep(peer)
            self._on_lost(peer)

    def close_all(self) -> None:
        for peer in list(self._open):
            self._close(peer)

    def _keep(self, peer: Address) -> None:
        closer = self._closers.pop(peer, None)
        if closer is not None:
            closer.cancel()

    def _close(self, peer: Address) -> None:
        self._closers.pop(peer, None)
        connection = self._open.pop(peer, None)
        if connection is not None and connection.transport is not None:
            with contextlib.suppress(Exception):
                connection.transport.close()
