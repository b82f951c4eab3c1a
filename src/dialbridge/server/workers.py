"""Several worker processes behind one port, each connection handed to the worker holding the fewest.

Why not uvicorn's own `--workers`: there every worker accepts from the one shared listening socket, and whichever
is awake first takes every connection waiting (uvloop accepts until the queue is empty). Webhook clients keep a
few connections open and reuse them, so the split stays as it fell: measured with the benchmark's 32 keep-alive
connections, 22/10, 27/5, even 32/0 — one worker saturated while the other idled, throughput down to that of a
single worker and the tail latency of an overloaded one. SO_REUSEPORT makes the split random (by hash):
measured, 32 connections to two SO_REUSEPORT listeners split from 16/16 to 10/22 over 20 runs, median 14/18.
Node's cluster module has the same problem and the same answer: the supervisor accepts and hands each connection
to a worker (SCM_RIGHTS over a Unix socket); here, to the one with the fewest open connections, so the split also
holds as connections come and go.

The supervisor's choice is `LeastConnections` (no I/O, unit-tested); `WorkerPool` is the supervisor's loop
(accept, hand over, read the workers' reports, replace a worker that died or hangs, replace all on SIGHUP, stop on
SIGINT/SIGTERM);
`HandedConnectionsServer` is uvicorn's server inside each worker, taking its connections from the supervisor
instead of a listening socket. Everything else — HTTP, keep-alive, graceful shutdown — is uvicorn's as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from dialbridge.server.supervised import stop_first_then

log = logging.getLogger("dialbridge.workers")
READY = b"ready"
STOP_GRACE_S = 30.0  # how long stopping workers may take to finish their responses before they are killed
FDS_PER_READ = 64


@dataclass
class LeastConnections:
    """Which worker gets the next connection: the one holding the fewest (the lowest index among equals).

    A worker's count is what it last reported plus the connections handed to it that it had not yet received
    when it reported, so connections in transit count from the moment they are handed over."""

    workers: int
    handed: list[int] = field(init=False)  # connections handed to each worker, ever
    received: list[int] = field(init=False)  # of those, how many the worker had received at its last report
    live: list[int] = field(init=False)  # open connections at the worker's last report
    available: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.handed = [0] * self.workers
        self.received = [0] * self.workers
        self.live = [0] * self.workers
        self.available = [False] * self.workers

    def load(self, worker: int) -> int:
        return self.live[worker] + self.handed[worker] - self.received[worker]

    def pick(self, exclude: Iterable[int] = ()) -> int | None:
        """The worker for the next connection, or None when no worker can take one."""
        skipped = set(exclude)
        candidates = [n for n in range(self.workers) if self.available[n] and n not in skipped]
        return min(candidates, key=self.load) if candidates else None

    def handed_to(self, worker: int) -> None:
        self.handed[worker] += 1

    def reported(self, worker: int, received: int, live: int) -> None:
        self.received[worker] = received
        self.live[worker] = live

    def started(self, worker: int) -> None:
        """A (re)started worker: nothing handed, nothing open."""
        self.handed[worker] = self.received[worker] = self.live[worker] = 0
        self.available[worker] = True

    def stopped(self, worker: int) -> None:
        self.available[worker] = False


def parse_report(message: bytes) -> tuple[int, int] | None:
    """A worker's report `b"<received> <live>"`, or None if it is not one."""
    fields = message.split()
    if len(fields) != 2 or not all(part.isdigit() for part in fields):
        return None
    return int(fields[0]), int(fields[1])


class _CountedConnections(set[Any]):
    """uvicorn's set of open connections (its protocols add and discard themselves), telling when it changes."""

    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__()
        self._changed = changed

    def add(self, item: Any) -> None:
        super().add(item)
        self._changed()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._changed()


class HandedConnectionsServer(uvicorn.Server):
    """uvicorn's server in a worker: no listening socket; connections arrive over `channel` from the supervisor,
    and the worker reports back how many it received and how many are open."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self.received = 0
        self._report_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taking_over: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.server_state.connections = _CountedConnections(self._connections_changed)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        loop = self._loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._receive)
        self._send(READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.channel.fileno())
        await super().shutdown(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s: a report at least every second tells the supervisor
            self._connections_changed()  # this worker's loop is alive
        return await super().on_tick(counter)

    def _protocol(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    def _receive(self) -> None:
        assert self._loop is not None
        while True:
            try:
                message, fds, _flags, _address = socket.recv_fds(self.channel, 16, FDS_PER_READ)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the supervisor is gone: stop, as on SIGTERM
                self._loop.remove_reader(self.channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                self.received += 1
                task = self._loop.create_task(self._take_over(socket.socket(fileno=fd)))
                self._taking_over.add(task)
                task.add_done_callback(self._took_over)
            self._connections_changed()

    async def _take_over(self, connection: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self._protocol, connection)
        except OSError:  # the client left before the worker took the connection over
            log.debug("a handed-over connection could not be served", exc_info=True)
            connection.close()

    def _took_over(self, task: asyncio.Task[None]) -> None:
        self._taking_over.discard(task)
        self._connections_changed()

    def _connections_changed(self) -> None:
        """Report once per loop turn, however many connections came and went in it."""
        if self._report_scheduled or self._loop is None:
            return
        self._report_scheduled = True
        self._loop.call_soon(self._report)

    def _report(self) -> None:
        self._report_scheduled = False
        if self._taking_over:
            # A connection being taken over may or may not be in uvicorn's set yet: a count now could be one off
            # either way, and the supervisor would hand the next connections unevenly. The last hand-over's end
            # reports instead; until then the supervisor counts these connections as in transit.
            return
        self._send(b"%d %d" % (self.received, len(self.server_state.connections)))

    def _send(self, message: bytes) -> None:
        try:
            self.channel.send(message)
        except BlockingIOError:  # the supervisor is behind: the next report says the same and more
            pass
        except OSError:
            self.should_exit = True  # the supervisor is gone


def worker_main(config: uvicorn.Config, channel: socket.socket) -> None:
    """A worker process: uvicorn's logging, then its server on handed-over connections."""
    config.configure_logging()
    HandedConnectionsServer(config, channel).run()


@dataclass(eq=False)
class _Worker:
    slot: int
    process: Any  # multiprocessing's SpawnProcess
    channel: socket.socket
    last_heard: float
    ready: bool = False


class WorkerStartupFailed(RuntimeError):
    pass


class WorkerPool:
    """The supervisor: owns the listening socket, runs `count` workers and hands them the connections.

    A worker is given connections only once it is ready (its application started): until then they would wait
    in its queue for its start-up, seconds at times. Signals, as with uvicorn's own supervisor: SIGINT/SIGTERM stop
    everything gracefully; SIGHUP replaces every worker (new code; settings from `.env`) without refusing or
    delaying a connection — each replacement starts beside the worker it replaces, which keeps serving until the
    replacement is ready and then finishes what it holds. A replacement that fails to start (a bad `.env`, say)
    leaves the running worker in place, with an error saying why; a failed start never stops the workers that
    serve, whenever it comes — only a start-up in which no worker serves stops `serve`. A worker silent for
    `liveness_timeout_s` (its loop stuck: each worker reports at least once a second) is killed and replaced."""

    def __init__(
        self,
        config: uvicorn.Config,
        count: int,
        listener: socket.socket,
        liveness_timeout_s: float = 30.0,
        before_stop: Callable[[], None] | None = None,
    ) -> None:
        """`before_stop` runs on a thread at the first SIGINT/SIGTERM while the workers still serve (the voice
        engine's last events must reach them); the workers stop when it returns, or at a second signal."""
        self.config = config
        self.before_stop = before_stop
        self._stopping_others = False
        self.count = count
        self.listener = listener
        self.liveness_timeout_s = liveness_timeout_s
        self.balance = LeastConnections(count)
        self.workers: list[_Worker | None] = [None] * count  # serving: ready, given connections
        self.starting: list[_Worker | None] = [None] * count  # started for the slot, not yet ready
        self.retiring: list[_Worker] = []
        self.selector = selectors.DefaultSelector()
        self._spawn = multiprocessing.get_context("spawn")
        self._stopping = False
        self._replace_all = False
        self._accepting = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM; raises `WorkerStartupFailed` if a worker dies before it is ready."""
        self.listener.setblocking(False)
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(self._wakeup_w.fileno())
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in range(self.count):
                self._start(slot)
            self.selector.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
            while not self._stopping:
                for key, _events in self.selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wakeup":
                        self._drain_wakeup()
                    elif key.data[0] == "channel":
                        self._read_channel(key.data[1])
                    elif key.data[0] == "exited":
                        self._exited(key.data[1])
                if self._replace_all and not self._stopping:
                    self._replace_all = False
                    self._replace_workers()
                self._check_liveness()
                self._accept_while_serving()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    # ---- workers -----------------------------------------------------------------------------------------------
    def _start(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._spawn.Process(target=worker_main, args=(self.config, theirs), name=f"dialbridge-worker-{slot}")
        process.start()
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(slot, process, ours, time.monotonic())
        earlier = self.starting[slot]
        if earlier is not None:  # a second SIGHUP before the first's replacement was ready: that one goes too
            self.retiring.append(earlier)
            self._signal(earlier, signal.SIGTERM)
        self.starting[slot] = worker
        self.selector.register(ours, selectors.EVENT_READ, ("channel", worker))
        self.selector.register(process.sentinel, selectors.EVENT_READ, ("exited", worker))
        log.info("started worker process [%d]", process.pid)

    def _retire(self, worker: _Worker) -> None:
        """Take `worker` out of the pool: it gets no more connections; its slot is free for a replacement."""
        if self.workers[worker.slot] is worker:
            self.workers[worker.slot] = None
            self.balance.stopped(worker.slot)
        self.retiring.append(worker)

    def _ready(self, worker: _Worker) -> None:
        """A started worker is ready: it takes its slot, and the worker it replaces (if any) retires."""
        worker.ready = True
        if self.starting[worker.slot] is not worker:
            return
        self.starting[worker.slot] = None
        old = self.workers[worker.slot]
        if old is not None:
            self._retire(old)
            self._signal(old, signal.SIGTERM)
        self.workers[worker.slot] = worker
        self.balance.started(worker.slot)
        log.info("worker process [%d] is ready and takes connections", worker.process.pid)

    def _replace_workers(self) -> None:
        log.info("SIGHUP: starting a replacement for every worker; each retires once its replacement is ready")
        for slot in range(self.count):
            self._start(slot)

    def _accept_while_serving(self) -> None:
        """Take connections only while some worker can serve them; until then they wait in the listen queue."""
        serving = any(worker is not None for worker in self.workers)
        if serving != self._accepting:
            self._accepting = serving
            if serving:
                self.selector.register(self.listener, selectors.EVENT_READ, "accept")
            else:
                self.selector.unregister(self.listener)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            # Only once ready: start-up (imports, migrations) may take long and says so itself if it fails.
            if worker is not None and worker.ready and now - worker.last_heard > self.liveness_timeout_s:
                log.warning(
                    "worker process [%d] has not answered for %.0f s; killing and replacing it",
                    worker.process.pid,
                    now - worker.last_heard,
                )
                self._retire(worker)
                self._signal(worker, signal.SIGKILL)
                self._start(worker.slot)

    def _in_pool(self, worker: _Worker) -> bool:
        """Whether `worker` still holds its slot (not retired, not replaced after it died)."""
        return self.workers[worker.slot] is worker

    def _exited(self, worker: _Worker) -> None:
        self._forget(worker)
        worker.process.join()
        pid, code = worker.process.pid, worker.process.exitcode
        if self._stopping:
            return
        if self.starting[worker.slot] is worker:  # it died before it was ready
            self.starting[worker.slot] = None
            if code < 0:  # killed (the OOM killer, an operator): replaced like any other
                log.warning("worker process [%d] was killed while starting (signal %d); starting another", pid, -code)
                self._start(worker.slot)
            elif self.workers[worker.slot] is not None:  # a reload: the running worker stays
                log.error(
                    "reload failed: the new worker process [%d] exited during start-up (exit code %d; the lines above "
                    "say why); the running worker [%d] keeps serving. Fix it and send SIGHUP again.",
                    pid,
                    code,
                    self.workers[worker.slot].process.pid,  # type: ignore[union-attr]
                )
            elif any(serving is not None for serving in self.workers):
                # Its slot had no worker serving yet (a reload came while it was still starting, or it replaced one
                # that died), but others serve: they go on, whatever failed. Another start would fail alike.
                log.error(
                    "worker process [%d] exited during start-up (exit code %d; the lines above say why); its slot "
                    "stays empty and the other workers keep serving. Fix it and send SIGHUP to start it again.",
                    pid,
                    code,
                )
            else:  # nothing serves, and it gave up by itself (a database it cannot migrate, say): another would too
                self._stopping = True
                raise WorkerStartupFailed(
                    f"worker process [{pid}] exited during start-up (exit code {code}); the lines above say why"
                )
            return
        if not self._in_pool(worker):  # retired, or replaced after it stopped answering
            return
        self.workers[worker.slot] = None
        self.balance.stopped(worker.slot)
        log.warning("worker process [%d] exited (code %s); starting another", pid, code)
        self._start(worker.slot)

    def _forget(self, worker: _Worker) -> None:
        for registered in (worker.channel, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(registered)
        worker.channel.close()
        if worker in self.retiring:
            self.retiring.remove(worker)

    def _read_channel(self, worker: _Worker) -> None:
        if worker.channel.fileno() == -1:  # forgotten earlier in this round of events (its process exited)
            return
        while True:
            try:
                message = worker.channel.recv(64)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:  # closed: its exit is handled when its process sentinel fires
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(worker.channel)
                if self._in_pool(worker):
                    self.balance.stopped(worker.slot)
                return
            worker.last_heard = time.monotonic()
            if message == READY:
                self._ready(worker)
                continue
            report = parse_report(message)
            if report is not None and self._in_pool(worker):
                self.balance.reported(worker.slot, *report)

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        if worker.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signum)

    # ---- connections -------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                connection, _address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. out of file descriptors: log, and try again on the next wake-up
                log.warning("accepting a connection failed: %s", exc)
                return
            with connection:
                self._hand_over(connection)

    def _hand_over(self, connection: socket.socket) -> None:
        # Per socket, so set here once for whichever worker: without it, small responses wait for delayed ACKs.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tried: list[int] = []
        while (slot := self.balance.pick(exclude=tried)) is not None:
            worker = self.workers[slot]
            assert worker is not None
            try:
                socket.send_fds(worker.channel, [b"c"], [connection.fileno()])
            except OSError:  # this worker's queue is full (it is stuck) or it is gone: the next one
                tried.append(slot)
                continue
            self.balance.handed_to(slot)
            return
        log.warning("no worker could take a connection; it is closed")

    # ---- stopping ----------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._replace_all = True
        elif self.before_stop is not None and not self._stopping_others:
            self._stopping_others = True
            stop_first_then(self.before_stop, self._stop_soon)
        else:
            self._stopping = True

    def _stop_soon(self) -> None:
        """From another thread: stop as on a signal."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")  # the loop may be waiting in select() for up to a second

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _stop_all(self) -> None:
        """Stop accepting, ask every worker to stop (they finish what is in flight), kill what is left."""
        self._stopping = True
        self.listener.close()
        workers = [worker for worker in [*self.workers, *self.starting] if worker is not None] + self.retiring
        for worker in workers:
            self._signal(worker, signal.SIGTERM)
            self._signal(worker, signal.SIGCONT)  # a stopped worker could not act on SIGTERM
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("worker process [%d] did not stop in time; killing it", worker.process.pid)
                worker.process.kill()
                worker.process.join()
        for worker in workers:
            self._forget(worker)
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
