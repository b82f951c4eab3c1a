"""The asyncio shell around `SignallingSession`: owns each session's state and each member's live socket.

Every state change happens synchronously on the event loop (no await between a transition and queueing its
messages), so the per-session objects need no locks. Each member has its own outbox drained by its own writer
task: a slow or dead browser delays nobody else, and one that falls `outbox_limit` messages behind is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dialbridge.engine.rooms.signalling import (
    CLOSE_SLOW_CONSUMER,
    Deliver,
    Hangup,
    Message,
    Output,
    SignallingSession,
)

log = logging.getLogger(__name__)


class MessageSocket(Protocol):
    """What the hub needs of a WebSocket (Starlette's fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(eq=False)
class Member:
    """One joined connection and its outbox. Returned by `join`; pass it back to `receive` and `leave`."""

    session_id: str
    connection_id: str
    socket: MessageSocket
    outbox: deque[str | Hangup] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    hung_up: bool = False  # the server is closing this socket (force-disconnect, slow consumer)


class SignallingHub:
    def __init__(self, *, outbox_limit: int = 512) -> None:
        self.outbox_limit = outbox_limit
        #: Called with (session id, connection id, its token data) when a member's socket closes without the
        #: server having removed it: the participant went away on its own (or its process died).
        self.on_left: Callable[[str, str, str], None] | None = None
        self._sessions: dict[str, SignallingSession] = {}
        self._members: dict[tuple[str, str], Member] = {}

    def session(self, session_id: str) -> SignallingSession | None:
        return self._sessions.get(session_id)

    def join(
        self,
        socket: MessageSocket,
        *,
        session_id: str,
        connection_id: str,
        data: str,
        may_publish: bool,
        now: float,
    ) -> Member:
        """Admit an accepted socket; raises `JoinRefused` (duplicate connection id, full room)."""
        state = self._sessions.get(session_id) or SignallingSession(session_id)
        outputs = state.join(connection_id, data=data, may_publish=may_publish, now=now)
        self._sessions[session_id] = state
        member = Member(session_id, connection_id, socket)
        member.writer = asyncio.get_running_loop().create_task(
            self._write(member), name=f"signalling-writer-{connection_id}"
        )
        self._members[(session_id, connection_id)] = member
        self._apply(state, outputs)
        return member

    def receive(self, member: Member, text: str, *, now: float) -> None:
        state = self._sessions.get(member.session_id)
        if state is not None and self._members.get((member.session_id, member.connection_id)) is member:
            self._apply(state, state.receive(member.connection_id, text, now=now))

    def reply(self, member: Member, message: Message) -> None:
        """Send one message the shell made up itself (e.g. an error about a frame the state never saw)."""
        self._queue(member, json.dumps(message))

    async def leave(self, member: Member) -> None:
        """The socket is gone: tell the others, and stop its writer. Safe after a force-disconnect."""
        if self._members.get((member.session_id, member.connection_id)) is member:
            del self._members[(member.session_id, member.connection_id)]
            state = self._sessions.get(member.session_id)
            if state is not None:
                data = state.data_of(member.connection_id)
                self._apply(state, state.leave(member.connection_id))
                self._forget_if_empty(state)
                if data is not None and self.on_left is not None:
                    try:
                        self.on_left(member.session_id, member.connection_id, data)
                    except Exception:
                        log.exception("signalling: on_left failed")
        writer = member.writer
        if writer is not None and not writer.done():
            # A hung-up member's writer is closing the socket: let it finish; otherwise there is nobody to write to.
            if member.hung_up:
                await asyncio.wait({writer}, timeout=5)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def force_disconnect(self, session_id: str, connection_id: str) -> bool:
        """Remove a connection as the server: it hears sessionDisconnected, the others its streams' and its
        own destruction. Returns False when no such connection is connected here."""
        state = self._sessions.get(session_id)
        member = self._members.get((session_id, connection_id))
        if state is None or member is None:
            return False
        self._apply(state, state.force_disconnect(connection_id))
        self._forget_if_empty(state)
        if member.writer is not None:
            await asyncio.wait({member.writer}, timeout=5)  # return once the close frame has gone out
        return True

    def signal(self, session_id: str, signal_type: str, data: str) -> int:
        """The server's signal to every member of the session connected here; how many it was queued for."""
        state = self._sessions.get(session_id)
        if state is None:
            return 0
        outputs = state.server_signal(signal_type, data)
        self._apply(state, outputs)
        return len(outputs)

    def connections(self, session_id: str) -> list[tuple[str, str]]:
        """(connection id, connection data) of the session's members connected here."""
        state = self._sessions.get(session_id)
        return [] if state is None else state.connection_data()

    # --- internals ----------------------------------------------------------------------------------------

    def _apply(self, state: SignallingSession, outputs: list[Output]) -> None:
        pending = deque(outputs)
        while pending:
            output = pending.popleft()
            to = output.to if isinstance(output, Deliver) else output.connection_id
            member = self._members.get((state.session_id, to))
            if member is None:
                continue
            if isinstance(output, Hangup):
                del self._members[(member.session_id, member.connection_id)]
                member.hung_up = True
                member.outbox.append(output)
                member.wake.set()
            elif len(member.outbox) >= self.outbox_limit:
                log.warning("dropping signalling connection %s: it stopped reading", member.connection_id)
                member.outbox.clear()
                pending.append(Hangup(member.connection_id, CLOSE_SLOW_CONSUMER, "too slow reading signalling"))
                pending.extend(state.leave(member.connection_id, reason="networkDisconnected"))
            else:
                self._queue(member, json.dumps(output.message))

    def _queue(self, member: Member, text: str) -> None:
        member.outbox.append(text)
        member.wake.set()

    def _forget_if_empty(self, state: SignallingSession) -> None:
        if state.is_empty and self._sessions.get(state.session_id) is state:
            del self._sessions[state.session_id]

    async def _write(self, member: Member) -> None:
        try:
            while True:
                await member.wake.wait()
                member.wake.clear()
                while member.outbox:
                    item = member.outbox.popleft()
                    if isinstance(item, Hangup):
                        await member.socket.close(item.code, item.reason)
                        return
                    await member.socket.send_text(item)
        except Exception as exc:  # the peer went away mid-send; the reader side will call leave()
            log.debug("signalling writer for %s stopped: %r", member.connection_id, exc)
