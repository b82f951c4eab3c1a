"""The SIP-over-TCP connections we open (sip/tcp_client.py) against a real TCP server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from dialbridge.sip import tcp_client as tcp
from dialbridge.sip.tcp_client import SipTcpClient, TcpUnavailable
from tests.aio import run_in_thread

MESSAGE = b"SIP/2.0 180 Ringing\r\nCall-ID: a\r\nContent-Length: 4\r\n\r\nbody"


class Peer:
    """A SIP peer that takes connections, can write to the last one and sees when it is closed."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return ("127.0.0.1", int(self.server.sockets[0].getsockname()[1]))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while await reader.read(65536):
            pass
        self.closed.set()


def test_connections_are_shared_bounded_framed_and_closed_when_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "LINGER_S", 0.05)

    async def main() -> None:
        received: list[tuple[bytes, tuple[str, int]]] = []
        lost: list[tuple[str, int]] = []
        connections = SipTcpClient(lambda data, peer: received.append((data, peer)), lost.append, 1)
        peer, other = Peer(), Peer()
        address, other_address = await peer.start(), await other.start()
        await connections.connect(address)
        await connections.connect(address)  # a second call to the same peer shares it
        assert len(connections) == 1 and len(peer.writers) == 1
        with pytest.raises(TcpUnavailable, match="holds 1 TCP connections"):
            await connections.connect(other_address)
        # A message split across writes arrives whole, with the peer's address.
        peer.writers[0].write(MESSAGE[:20])
        await peer.writers[0].drain()
        await asyncio.sleep(0.05)
        peer.writers[0].write(MESSAGE[20:])
        await asyncio.sleep(0.05)
        assert received == [(MESSAGE, address)]
        assert connections.send(address, b"ACK ...") and not connections.send(other_address, b"x")
        # Released, then taken again before the linger ends: it stays; released for good: closed.
        connections.release(address)
        await connections.connect(address)
        await asyncio.sleep(0.1)
        assert len(connections) == 1 and not peer.closed.is_set()
        connections.release(address)
        await asyncio.wait_for(peer.closed.wait(), 2)
        assert len(connections) == 0 and lost == []  # closed by us: nothing to fail
        # The peer closes a connection: whatever used it is failed.
        await connections.connect(other_address)
        other.writers[0].close()
        await asyncio.sleep(0.1)
        assert lost == [other_address] and len(connections) == 0
        with pytest.raises(TcpUnavailable, match="cannot connect"):
            assert peer.server is not None
            peer.server.close()
            await peer.server.wait_closed()
            await connections.connect(address)

    run_in_thread(main)


def test_send_or_connect_opens_a_connection_on_demand_and_sends_what_waited_in_order() -> None:
    async def main() -> None:
        received: list[tuple[bytes, tuple[str, int]]] = []
        lost: list[tuple[str, int]] = []
        resolved: list[tuple[tuple[str, int], bool]] = []
        peer = Peer()
        address = await peer.start()

        async def resolve(named: tuple[str, int], port_named: bool) -> tuple[str, int]:
            resolved.append((named, port_named))
            return (address[0], named[1]) if named[0] == "phone.test" else named

        connections = SipTcpClient(lambda d, p: received.append((d, p)), lost.append, 4, resolve=resolve)
        named = ("phone.test", address[1])
        connections.send_or_connect(named, b"BYE 1\r\n", port_named=False)  # resolve is told: SRV first
        connections.send_or_connect(named, b"BYE 2\r\n")  # while it is being opened: waits its turn
        for _ in range(50):
            if peer.writers:
                break
            await asyncio.sleep(0.02)
        assert resolved == [(named, False)] and connections.peers == {named}
        reader_side = peer.writers[0]
        reader_side.write(MESSAGE)  # its answer comes back under the name it was sent to
        await asyncio.sleep(0.1)
        assert received == [(MESSAGE, named)]
        assert connections.send(named, b"BYE 3\r\n")
        assert lost == []
        connections.close_all()
        await asyncio.wait_for(peer.closed.wait(), 2)

    run_in_thread(main)


def test_send_or_connect_to_a_peer_that_refuses_fails_its_transactions_once_and_bounds_what_waits() -> None:
    async def main() -> None:
        lost: list[tuple[str, int]] = []
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        refusing = ("127.0.0.1", int(listener.sockets[0].getsockname()[1]))
        listener.close()
        await listener.wait_closed()
        connections = SipTcpClient(lambda d, p: None, lost.append, 1)
        for n in range(tcp.MAX_WAITING_MESSAGES + 1):
            connections.send_or_connect(refusing, f"BYE {n}\r\n".encode())
        await asyncio.sleep(0.3)
        assert lost == [refusing, refusing]  # the one over the queue's bound at once, then the refusal
        assert connections.peers == set()
        connections.send_or_connect(refusing, b"again")
        connections.send_or_connect(("127.0.0.1", 9), b"a second peer over the bound of 1")
        await asyncio.sleep(0.3)
        assert lost.count(("127.0.0.1", 9)) == 1

    run_in_thread(main)
