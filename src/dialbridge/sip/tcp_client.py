"""SIP over TCP, the connections we open: the gateway's to the peers it dials with `;transport=tcp`, and the engine's
to a peer whose own connection is gone (RFC 3261 18: a request in a dialog whose connection was closed goes to the
next hop over a new one; a response to the Via's address, 18.2.2).

One connection per peer address, shared by everything sent there. Opened by `connect` (the gateway, dialling: it
refuses the dial at once when no connection can be made) or on demand by `send_or_connect` (the messages wait,
bounded, until it is up; the name in the address is resolved first, off the loop, by the `resolve` given). Bounded:
at most `max_connections` open or opening. Closed `LINGER_S` after `release` (nothing uses the peer any more) unless
something takes it again, so that what runs after a call's end (a CANCEL's 487 and its ACK, a BYE's answer) still
has its connection. Bytes arriving are cut into whole messages (`SipStreamFramer`) and handed on; a connection that
closes, cannot be framed or cannot be opened is reported (`on_lost`), so that the SIP agent fails what still used it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final, cast

from dialbridge.log_text import escaped_for_log
from dialbridge.rate import SourceRate
from dialbridge.sip.message import SipParseError, SipStreamFramer

log = logging.getLogger(__name__)

Address = tuple[str, int]
CONNECT_TIMEOUT_S: Final = 5.0
LINGER_S: Final = 4.0
MAX_WAITING_MESSAGES: Final = 32  # per connection being opened: a call's requests and answers, not a stream
FAILURE_LOG_WINDOW_S: Final = 60.0  # one warning per peer a minute


class TcpUnavailable(Exception):
    """No connection could be made (refused, unreachable, timed out, not resolvable, or too many are open)."""


async def _as_is(peer: Address, port_named: bool) -> Address:
    return peer


class _Connection(asyncio.Protocol):
    def __init__(self, owner: SipTcpClient, peer: Address) -> None:
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
            log.warning(
                "%s: unframeable SIP from %s over TCP (%s); closing the connection",
                self._owner.label,
                escaped_for_log(f"{self._peer[0]}:{self._peer[1]}"),
                exc,
            )
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self._owner.on_message(message, self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost(self._peer, self)


class SipTcpClient:
    def __init__(
        self,
        on_message: Callable[[bytes, Address], None],
        on_lost: Callable[[Address], None],
        max_connections: int,
        *,
        resolve: Callable[[Address, bool], Awaitable[Address]] = _as_is,
        label: str = "SIP",
        limit_setting: str = "",
    ) -> None:
        """`resolve`: the address to connect to for a peer address (a name in it resolved; the flag: its URI named
        the port, else its SRV records are asked first, as `Outgoing.port_named` says); it raises
        `TcpUnavailable` (or OSError) when there is none. `limit_setting` names the setting `max_connections` is."""
        self.on_message = on_message
        self._on_lost = on_lost
        self._max = max_connections
        self._resolve = resolve
        self.label = label
        self._limit_setting = limit_setting
        self._open: dict[Address, _Connection] = {}
        self._opening: dict[Address, list[bytes]] = {}  # peer -> messages waiting for its connection
        self._closers: dict[Address, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: SourceRate[str] = SourceRate(1, FAILURE_LOG_WINDOW_S)

    def __len__(self) -> int:
        return len(self._open)

    @property
    def peers(self) -> set[Address]:
        """The peers with a connection open or being opened."""
        return set(self._open) | set(self._opening)

    async def connect(self, peer: Address) -> None:
        """Have a connection to `peer` (the one already open, or a new one); TcpUnavailable when none can be made."""
        self._keep(peer)
        if peer in self._open:
            return
        self._check_room(peer)
        connection = await self._open_connection(peer)
        if peer in self._open:  # another dial to this peer connected meanwhile: keep one
            if connection.transport is not None:
                connection.transport.close()
            return
        self._open[peer] = connection

    def send(self, peer: Address, data: bytes) -> bool:
        """Write on `peer`'s open connection; False when there is none."""
        connection = self._open.get(peer)
        if connection is None or connection.transport is None or connection.transport.is_closing():
            return False
        connection.transport.write(data)
        return True

    def send_or_connect(self, peer: Address, data: bytes, *, port_named: bool = True) -> None:
        """Write on `peer`'s connection, opening one first if there is none; `on_lost(peer)` (soon, never from
        inside this call) when it cannot be opened or too many messages already wait for it. `port_named`: as
        `Outgoing.port_named`, for `resolve`."""
        self._keep(peer)
        if self.send(peer, data):
            return
        waiting = self._opening.get(peer)
        if waiting is not None:
            if len(waiting) < MAX_WAITING_MESSAGES:
                waiting.append(data)
            else:
                self._fail_soon(peer, f"{MAX_WAITING_MESSAGES} messages already wait for the connection")
            return
        try:
            self._check_room(peer)
        except TcpUnavailable as exc:
            self._fail_soon(peer, str(exc))
            return
        self._opening[peer] = [data]
        task = asyncio.get_running_loop().create_task(self._open_and_flush(peer, port_named))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, peer: Address) -> None:
        """Nothing uses `peer`'s connection any more: close it after `LINGER_S`, unless something takes it again."""
        if peer in self._open and peer not in self._closers:
            self._closers[peer] = asyncio.get_running_loop().call_later(LINGER_S, self._close, peer)

    def lost(self, peer: Address, connection: _Connection) -> None:
        if self._open.get(peer) is connection:  # not one closed as a duplicate, nor one already replaced
            del self._open[peer]
            self._keep(peer)
            self._on_lost(peer)

    def close_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._opening.clear()
        for peer in list(self._open):
            self._close(peer)

    # -- internals ------------------------------------------------------------------------------------------------

    def _check_room(self, peer: Address) -> None:
        if len(self._open) + len(self._opening) >= self._max:
            setting = f" ({self._limit_setting})" if self._limit_setting else ""
            raise TcpUnavailable(f"the {self.label} holds {self._max} TCP connections{setting}")

    async def _open_connection(self, peer: Address, port_named: bool = True) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            address = await self._resolve(peer, port_named)
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, peer), *address), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise TcpUnavailable(f"cannot connect to {peer[0]}:{peer[1]} over TCP: {exc or 'timed out'}") from None
        return connection

    async def _open_and_flush(self, peer: Address, port_named: bool) -> None:
        try:
            connection = await self._open_connection(peer, port_named)
        except TcpUnavailable as exc:
            self._opening.pop(peer, None)
            self._report_lost(peer, str(exc))
            return
        waiting = self._opening.pop(peer, [])
        existing = self._open.get(peer)
        if existing is not None and connection.transport is not None:  # `connect` won the race: use that one
            connection.transport.close()
            connection = existing
        self._open[peer] = connection
        if connection.transport is not None:
            for data in waiting:
                connection.transport.write(data)

    def _fail_soon(self, peer: Address, reason: str) -> None:
        asyncio.get_running_loop().call_soon(self._report_lost, peer, reason)

    def _report_lost(self, peer: Address, reason: str) -> None:
        if self._warned.allow(peer[0], asyncio.get_running_loop().time()):
            log.warning("%s: %s (logged once a minute per peer)", self.label, escaped_for_log(reason))
        self._on_lost(peer)

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
