"""Group commit: the writes that requests make during one turn of the event loop share one transaction.

Why: on SQLite a commit costs 50-100 us (every changed table and index page is appended to the WAL), far more
than the rows it carries. Under load many requests are in flight at once; their writes are queued and committed
together at the end of the loop turn, so the commit's cost is shared. Durability is unchanged: a request learns
its write succeeded only after COMMIT returned, and only then answers.

Measured before choosing this over a writer thread: with a thread, each read on the event loop waited for the
GIL while the writer ran Python code, and the webhooks got slower, not faster.

A write that fails (a constraint, say) is rolled back alone and reported to its own caller; the others in the
batch still commit. Writes seldom fail, so a batch first runs without savepoints (a SAVEPOINT and RELEASE per
write were two of a webhook's five statements); only if one fails is the whole batch rolled back and run again
with a SAVEPOINT around each write. A work item may therefore run twice: it must act only on the database, through
`run`, so that its rolled-back first run leaves no trace. Code outside the event loop (start-up, tests) writes at
once with `write_now`, after anything already queued; on the loop it would stop every request while it waited.

Checkpoints (SQLite's copy of the write-ahead log back into the database file, with its fsyncs) are kept off the
event loop: left to SQLite, the commit that crosses the WAL's size threshold does it, and that commit blocked the
loop for up to tens of milliseconds (measured: 17 of 1,014 batches over 2 ms, one 64 ms) — every request in flight
waited. The store turns SQLite's automatic checkpoint off on this connection and hands `checkpoint` here; it is run
on the loop's executor thread at most every `CHECKPOINT_INTERVAL_S` while writes are being committed (SQLite
releases the GIL while it copies and syncs).

Waiting for another process's write lock (several workers on one SQLite file) does not stop the loop either:
SQLite's busy handler sleeps inside BEGIN, in 1-100 ms steps, with every request in flight waiting. When the store
gives an `is_busy` test, its connection does not wait (busy_timeout=0): a batch whose BEGIN finds the lock taken
goes back in the queue and is retried `BUSY_RETRY_S` later, collecting the writes that arrive meanwhile; after
`BUSY_TIMEOUT_S` of that it fails, as SQLite's own timeout did. Outside the loop (`write_now`, `close`) the wait
is a plain sleep, as before.

PostgreSQL (`commit_on_thread`): there the batch is committed on a thread of the writer's own, and the loop only
hands batches over and hears back. A commit there is a network round trip and the server's fsync, and a write may
wait inside a statement for a lock another instance holds (a room's row `FOR UPDATE`, the PIN decisions' advisory
lock) — no BEGIN to retry, so on the loop it stalled every request for as long as the lock was held. psycopg
releases the GIL while it waits on the socket, so the thread costs the loop little. Writes arriving while a batch
is on the thread form the next batch, sent when that one has committed: one transaction in flight at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Run = Callable[..., Any]  # run(prepared_statement, **values) -> cursor
Work = Callable[[Run], Any]

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL_S = 0.5
BUSY_RETRY_S = 0.001
BUSY_TIMEOUT_S = 10.0


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _NoLock:
    """Inline commits: `_lock` already serialises the connection's use."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _answer(live: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
    """Give each writer its outcome (on the futures' loop, or from code outside any loop: start-up, close)."""
    for (_work, future), outcome in zip(live, outcomes, strict=True):
        if future.cancelled():
            continue
        if isinstance(outcome, _Failed):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)


class GroupCommitWriter:
    def __init__(
        self,
        connect: Callable[[], Any],
        begin: str,
        checkpoint: Callable[[], None] | None = None,
        is_busy: Callable[[BaseException], bool] | None = None,
        commit_on_thread: bool = False,
    ) -> None:
        self._connect = connect
        self._is_busy = is_busy
        self._busy_since: float | None = None
        self._begin = begin
        self._connection: Any = None
        self._snapshot_open = False  # a read snapshot (`read`) is open on the connection
        self._lock = threading.Lock()
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._checkpoint = checkpoint
        self._checkpoint_lock = threading.Lock()  # held while a checkpoint runs
        self._checkpoint_due = 0.0  # time.monotonic() after which the next commit asks for one
        self._checkpoint_running = False
        # commit_on_thread: batches run there, one at a time, holding `_connection_lock`; `_lock` then guards only
        # the queue, so the loop never waits for SQL. Inline, `_lock` guards both.
        self._committer = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dialbridge-db-writer") if commit_on_thread else None
        )
        self._connection_lock = threading.Lock() if commit_on_thread else _NoLock()
        self._committing = False  # a batch is on the committer thread
        self._closed = False

    def write(self, work: Callable[[Run], T]) -> asyncio.Future[T]:
        """Queue `work` for this loop turn's transaction; await the result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._pending.append((work, future))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self.flush)
        return future

    def read(self, sql: str, parameters: Any, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """Run a query on the writer's own connection, inside this loop turn's read snapshot.

        Why the writer's connection: SQLite throws a connection's page cache away whenever the database changed
        since its last transaction. A separate reader connection saw a change after every one of this process's
        commits, so each lookup re-read its B-tree pages; the connection that made the change keeps its cache.
        Why a snapshot per turn: starting a read transaction takes the WAL's read lock (fcntl on the -shm file)
        and, after another process's commit, drops the cache too — once per turn instead of once per query. A
        turn's reads see the database as it was at the first of them, which is all they could see anyway (the
        turn's writes commit at its end), and every commit here ends the snapshot, so a later read sees it.
        Call only on `loop`'s thread, while it runs; other threads keep connections of their own (store.py).
        """
        with self._lock:
            connection = self._connected()
            if not self._snapshot_open:
                connection.execute("BEGIN")
                self._snapshot_open = True
                loop.call_soon(self._end_read)
            cursor = connection.cursor()
            try:
                cursor.execute(sql, parameters)
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def _connected(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _end_read(self) -> None:
        with self._lock:
            self._end_snapshot()

    def _end_snapshot(self) -> None:
        """End the read snapshot, if one is open. Kept as a flag of our own: asking the connection (sqlite3's
        `in_transaction`) ties the writer to one driver, and psycopg has no such attribute."""
        if self._snapshot_open:
            self._snapshot_open = False
            if self._connection is not None:
                self._connection.execute("COMMIT")

    def write_now(self, work: Callable[[Run], T]) -> T:
        """Run `work` in a transaction of its own, now (after anything queued), and return its result."""
        with self._lock, self._connection_lock:  # on the committer's thread, a batch being committed comes first
            self._flush_locked(wait=True)
            outcomes = self._commit([work], wait=True)
        assert outcomes is not None  # waiting, _commit either commits or fails
        (outcome,) = outcomes
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome  # type: ignore[no-any-return]

    def flush(self) -> None:
        """The loop's end-of-turn callback: commit what is queued, or retry shortly if another process writes."""
        if self._committer is not None:
            self._hand_over()
            return
        with self._lock:
            self._flush_locked(wait=False)

    def _hand_over(self) -> None:
        """commit_on_thread: send what is queued to the committer, unless a batch is there already (its end sends
        the next one)."""
        with self._lock:
            self._flush_scheduled = False
            if self._committing or self._closed or not self._pending:
                return
            batch, self._pending = self._pending, []
            self._committing = True
        assert self._committer is not None
        self._committer.submit(self._commit_handed_over, batch, asyncio.get_running_loop())

    def _commit_handed_over(
        self, batch: list[tuple[Work, asyncio.Future[Any]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        """On the committer's thread: commit `batch`, then tell the loop."""
        live = [(work, future) for work, future in batch if not future.cancelled()]
        try:
            with self._connection_lock:
                outcomes = self._commit([work for work, _ in live], wait=True)
            assert outcomes is not None  # waiting, _commit either commits or fails
        except Exception as exc:  # connecting failed, say: every caller hears of it rather than waiting for ever
            log.exception("database write batch of %d failed", len(live))
            outcomes = [_Failed(exc)] * len(live)
        try:
            loop.call_soon_threadsafe(self._handed_over_committed, live, outcomes)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            log.debug("event loop closed before a write batch of %d was answered", len(live))

    def _handed_over_committed(self, live: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
        """On the loop: answer the batch's writers, then send what queued meanwhile."""
        _answer(live, outcomes)
        with self._lock:
            self._committing = False
        self._hand_over()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        if self._committer is not None:
            self._committer.shutdown(wait=True)  # the batch on the thread commits first
        with self._lock, self._connection_lock:
            self._flush_locked(wait=True)
            self._end_snapshot()
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        with self._checkpoint_lock:  # let a running checkpoint finish before the store closes its connection
            self._checkpoint_due = float("inf")

    def _committed(self) -> None:
        """After a commit: start a checkpoint if one is due, in the loop's executor (inline without a loop)."""
        if self._checkpoint is None or self._checkpoint_running:
            return
        now = time.monotonic()
        if now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_INTERVAL_S
        self._checkpoint_running = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_checkpoint()
        else:
            loop.run_in_executor(None, self._run_checkpoint)

    def _run_checkpoint(self) -> None:
        try:
            with self._checkpoint_lock:
                if self._checkpoint is not None and self._checkpoint_due != float("inf"):
                    self._checkpoint()
        except Exception:
            log.warning("WAL checkpoint failed; the next commits will retry it", exc_info=True)
        finally:
            self._checkpoint_running = False

    def _flush_locked(self, wait: bool) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        live = [(work, future) for work, future in batch if not future.cancelled()]
        outcomes = self._commit([work for work, _ in live], wait=wait)
        if outcomes is None:  # another process holds the write lock: try again shortly, with what arrives meanwhile
            self._pending = live
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(BUSY_RETRY_S, self.flush)
            return
        _answer(live, outcomes)

    def _begin_transaction(self, cursor: Any, wait: bool) -> bool:
        """BEGIN; False if the write lock is another process's and `wait` is False (nothing has run then)."""
        delay = BUSY_RETRY_S
        while True:
            try:
                cursor.execute(self._begin)
            except Exception as exc:
                if self._is_busy is None or not self._is_busy(exc):
                    raise
                now = time.monotonic()
                if self._busy_since is None:
                    self._busy_since = now
                if now - self._busy_since >= BUSY_TIMEOUT_S:
                    self._busy_since = None
                    raise
                if not wait:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                self._busy_since = None
                return True

    def _commit(self, works: list[Work], wait: bool) -> list[Any] | None:
        """Run every work item in one transaction; each item's result, or its `_Failed`, in order. None when
        `wait` is False and another process holds the write lock: nothing ran, try again later."""
        connection = self._connected()
        self._end_snapshot()
        cursor = connection.cursor()

        def run(statement: Any, **values: Any) -> Any:
            cursor.execute(statement.sql, statement.parameters(values))
            return cursor

        outcomes: list[Any] = []
        try:
            if not self._begin_transaction(cursor, wait):
                return None
            try:
                outcomes = [work(run) for work in works]
            except Exception:
                # Someone's write failed: start again, each write in its own savepoint this time.
                cursor.execute("ROLLBACK")
                self._begin_transaction(cursor, wait=True)  # rare path: a short wait for the lock is fine here
                outcomes = []
                for work in works:
                    cursor.execute("SAVEPOINT write")
                    try:
                        outcomes.append(work(run))
                    except Exception as exc:
                        cursor.execute("ROLLBACK TO write")
                        outcomes.append(_Failed(exc))
                    cursor.execute("RELEASE write")
            cursor.execute("COMMIT")
        except Exception as exc:  # BEGIN or COMMIT failed (disk full, lock held too long): nothing was kept
            log.exception("database write batch of %d failed", len(works))
            try:
                cursor.execute("ROLLBACK")
            except Exception:
                log.debug("rollback after a failed batch also failed", exc_info=True)
            return [_Failed(exc)] * len(works)
        finally:
            cursor.close()
        self._committed()
        return outcomes
