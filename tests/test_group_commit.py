"""Group commit: writes made in one loop turn share a transaction, yet each succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select

from dialbridge.conference.webhooks import CallParty
from dialbridge.store import store as store_module
from dialbridge.store import tables as t
from dialbridge.store import writer as writer_module
from dialbridge.store.database import create_db_engine, migrate
from dialbridge.store.prepared import Prepared
from dialbridge.store.store import Store, WebhookReplayed
from dialbridge.store.writer import Run
from tests.conftest import on_both_databases
from tests.helpers import run_async


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = create_db_engine(db_url)
    migrate(engine)
    store = Store(engine)
    yield store
    store.close()


def key_insert(store: Store) -> Prepared:
    statement = insert(t.server_keys).values(name=bindparam("name"), value=bindparam("value"), created_at=0.0)
    return Prepared(statement, store.engine.dialect)


def key_write(statement: Prepared, name: str) -> Callable[[Run], Any]:
    """A write of key `name` (value "v") through `statement` (key_insert's)."""
    return lambda run: run(statement, name=name, value="v")


def stored_keys(store: Store) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {row.name: row.value for row in conn.execute(select(t.server_keys))}


@on_both_databases
def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(store: Store) -> None:
    statement = key_insert(store)
    store._write_now(lambda run: run(statement, name="taken", value="first"))

    async def one_turn() -> list[object]:
        writes = [
            store._write(lambda run: run(statement, name="a", value="1") and "a"),
            store._write(lambda run: run(statement, name="taken", value="second")),  # primary key clash
            store._write(lambda run: run(statement, name="b", value="2") and "b"),
        ]
        return await asyncio.gather(*writes, return_exceptions=True)

    outcomes = run_async(one_turn())
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert isinstance(outcomes[1], store.engine.dialect.loaded_dbapi.IntegrityError)
    assert stored_keys(store) == {"taken": "first", "a": "1", "b": "2"}


@on_both_databases
def test_a_write_is_visible_to_other_connections_before_its_caller_hears_of_it(store: Store, db_url: str) -> None:
    statement = key_insert(store)
    other = create_db_engine(db_url)  # another process's, say

    async def write_then_look() -> dict[str, str]:
        await store._write(lambda run: run(statement, name="k", value="v"))
        # Another connection sees it as soon as the await returns.
        with other.connect() as connection:
            return {row.name: row.value for row in connection.execute(select(t.server_keys))}

    assert run_async(write_then_look()) == {"k": "v"}
    other.dispose()


@on_both_databases
def test_an_immediate_write_runs_after_what_is_already_queued(store: Store) -> None:
    statement = key_insert(store)
    order: list[str] = []

    async def queue_then_write_now() -> None:
        queued = store._write(lambda run: order.append("queued") or run(statement, name="q", value="1"))
        store._write_now(lambda run: order.append("now") or run(statement, name="n", value="2"))
        await queued

    run_async(queue_then_write_now())
    assert order == ["queued", "now"]
    assert stored_keys(store) == {"q": "1", "n": "2"}


@on_both_databases
def test_a_failing_write_leaves_no_trace_and_the_rest_of_its_batch_commits(store: Store) -> None:
    statement = key_insert(store)

    def insert(key: str) -> Any:
        def work(run: Run) -> str:
            run(statement, name=key, value="v")
            return key

        return work

    def half_then_fail(run: Run) -> None:
        run(statement, name="half-written", value="v")
        run(statement, name="a", value="v")  # the first write's key: a constraint failure after a write that must go

    async def one_batch() -> list[Any]:
        writes = [store._write(insert("a")), store._write(half_then_fail), store._write(insert("b"))]
        return await asyncio.gather(*writes, return_exceptions=True)

    first, failed, last = run_async(one_batch())
    assert (first, last) == ("a", "b")
    assert isinstance(failed, store.engine.dialect.loaded_dbapi.IntegrityError)
    assert stored_keys(store) == {"a": "v", "b": "v"}


def test_the_write_ahead_log_is_rewound_when_readers_never_let_it_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process reading throughout every commit keeps SQLite from starting the log over by itself; the
    store's checkpoint makes sure the next commit does, once the log has grown past its threshold."""
    monkeypatch.setattr(store_module, "WAL_REWIND_FRAMES", 50)
    monkeypatch.setattr(store_module, "WAL_REWIND_WAIT_MS", 5000)  # the mechanism, not the timing, on trial here
    statement = key_insert(store)
    path = str(store.engine.url.database)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def write(name: str) -> None:
        store._write_now(lambda run: run(statement, name=name, value="v"))

    for n in range(200):
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM server_keys").fetchone()  # a snapshot held across the commit
        write(f"key-{n}")
        other.execute("COMMIT")
    # As under load: when the checkpoint runs, a reader still uses a snapshot older than the last commit.
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM server_keys").fetchone()
    write("last-before-checkpoint")
    release = threading.Timer(0.05, lambda: other.execute("COMMIT"))
    release.start()
    store._checkpoint()
    release.join()
    write("first-after-checkpoint")

    probe = sqlite3.connect(path)
    _busy, log_frames, _copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    probe.close()
    other.close()
    assert log_frames < 10  # started over, not appended after 200 commits' frames
    assert len(stored_keys(store)) == 202


# ---- a signed webhook's token, recorded by its first write -------------------------------------------------------


@on_both_databases
def test_a_webhook_token_is_recorded_by_the_first_write_and_a_replay_writes_nothing(store: Store) -> None:
    call = CallParty("c1", "CON-1", "15550001", "14155550100")

    async def handle(token: str, status: str) -> None:
        async with store.webhook_token(token, good_until=400.0, now=100.0):
            await store.record_call(call, status, 100.0)
            await store.record_call(call, status + "-again", 100.0)  # a second write is an ordinary one

    async def scenario() -> None:
        await handle("jti:a", "awaiting_pin")
        with pytest.raises(WebhookReplayed):
            await handle("jti:a", "in_conference")

    run_async(scenario())
    record = store.call("c1")
    assert record is not None and record.status == "awaiting_pin-again"  # the replay changed nothing
    assert store.webhook_token_count() == 1


@on_both_databases
def test_a_webhook_that_writes_nothing_records_its_token_on_leaving_and_one_that_fails_records_none(
    store: Store,
) -> None:
    async def scenario() -> None:
        async with store.webhook_token("sig:b", good_until=400.0, now=100.0):
            pass
        with pytest.raises(WebhookReplayed):
            async with store.webhook_token("sig:b", good_until=400.0, now=100.0):
                pass
        with pytest.raises(ValueError):
            async with store.webhook_token("sig:c", good_until=400.0, now=100.0):
                raise ValueError("an invalid payload")
        async with store.webhook_token("sig:c", good_until=400.0, now=100.0):  # refused before: may come again
            pass

    run_async(scenario())
    assert store.webhook_token_count() == 2


@on_both_databases
def test_parallel_copies_of_one_token_write_once(store: Store) -> None:
    call = CallParty("c2", "CON-2", "15550002", "14155550100")

    async def handle(n: int) -> str:
        try:
            async with store.webhook_token("jti:same", good_until=400.0, now=100.0):
                await store.record_call(call, f"status-{n}", 100.0)
        except WebhookReplayed:
            return "replayed"
        return "written"

    async def scenario() -> list[str]:
        return await asyncio.gather(*(handle(n) for n in range(20)))  # one loop turn: one batch, one transaction

    outcomes = run_async(scenario())
    assert sorted(outcomes) == ["replayed"] * 19 + ["written"]
    record = store.call("c2")
    assert record is not None and record.status == f"status-{outcomes.index('written')}"


# ---- another process holds SQLite's write lock -------------------------------------------------------------------


def test_writes_wait_off_the_loop_while_another_process_holds_the_write_lock_then_all_commit(store: Store) -> None:
    statement = key_insert(store)
    store._write_now(lambda run: run(statement, name="before", value="v"))
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None, check_same_thread=False)
    hold_s = 0.3

    async def scenario() -> tuple[list[float], list[bool]]:
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Future[Any]] = []
        turns: list[float] = []  # when the loop got round to this coroutine again
        other.execute("BEGIN IMMEDIATE")  # another process's write lock
        locked_at = loop.time()
        while loop.time() - locked_at < hold_s:  # writes keep arriving, over many loop turns
            writes.append(asyncio.ensure_future(store._write(key_write(statement, f"k{len(writes)}"))))
            turns.append(loop.time())
            await asyncio.sleep(0.01)
        done_while_locked = [write.done() for write in writes]
        other.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(*writes), timeout=5)
        return turns, done_while_locked

    turns, done_while_locked = run_async(scenario())
    other.close()
    assert not any(done_while_locked)  # none was acknowledged before it could commit
    longest_wait = max(later - earlier for earlier, later in itertools.pairwise(turns))
    assert longest_wait < 0.1, f"the event loop stood still for {longest_wait:.3f} s waiting for the lock"
    assert stored_keys(store) == {"before": "v", **{f"k{n}": "v" for n in range(len(turns))}}


def test_a_write_lock_held_past_the_busy_timeout_fails_the_waiting_writes_and_later_ones_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "BUSY_TIMEOUT_S", 0.2)
    statement = key_insert(store)
    store._write_now(lambda run: run(statement, name="before", value="v"))
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None, check_same_thread=False)

    async def scenario() -> BaseException | None:
        other.execute("BEGIN IMMEDIATE")
        try:
            waiting = asyncio.ensure_future(store._write(lambda run: run(statement, name="waiting", value="v")))
            failure = await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), timeout=5)
        finally:
            other.execute("COMMIT")
        await store._write(lambda run: run(statement, name="after", value="v"))
        return failure[0]

    failure = run_async(scenario())
    other.close()
    assert isinstance(failure, sqlite3.OperationalError) and "locked" in str(failure)
    assert stored_keys(store) == {"before": "v", "after": "v"}


# ---- durable: acknowledged writes survive the process ------------------------------------------------------------

WRITE_THEN_WAIT = """
import asyncio, sys
from sqlalchemy import bindparam, insert
from dialbridge.store import tables as t
from dialbridge.store import writer as writer_module
from dialbridge.store.database import create_db_engine
from dialbridge.store.prepared import Prepared
from dialbridge.store.store import Store

store = Store(create_db_engine(sys.argv[1]))
statement = Prepared(
    insert(t.server_keys).values(name=bindparam("name"), value=bindparam("value"), created_at=0.0),
    store.engine.dialect,
)

async def main() -> None:
    await store._write(lambda run: run(statement, name="durable", value="acknowledged"))
    print("acknowledged", flush=True)
    await asyncio.sleep(60)  # killed here, its connection still open, nothing closed or flushed

asyncio.run(main())
"""


@on_both_databases
def test_a_write_acknowledged_to_its_caller_survives_the_process_being_killed(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    engine.dispose()  # nothing else has the database open while the writer's process dies
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITE_THEN_WAIT, db_url], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "acknowledged\n"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    reopened = create_db_engine(db_url)
    with reopened.connect() as connection:
        rows = {row.name: row.value for row in connection.execute(select(t.server_keys))}
    reopened.dispose()
    assert rows.get("durable") == "acknowledged"


# ---- commits on the writer's own thread (PostgreSQL's mode) --------------------------------------------------------


def threaded_writer(path: Path, begins: list[str]) -> writer_module.GroupCommitWriter:
    """A writer in commit_on_thread mode on a SQLite file, counting the transactions it begins."""

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
        connection.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY)")
        return connection

    return writer_module.GroupCommitWriter(connect, "BEGIN", commit_on_thread=True)


class Raw:
    """A statement for `run` without SQLAlchemy: what the writer needs of `Prepared`."""

    def __init__(self, sql: str) -> None:
        self.sql = sql

    def parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        return values


PUT = Raw("INSERT INTO kv VALUES (:k)")


def put_returning(key: str) -> Callable[[Run], str]:
    def work(run: Run) -> str:
        run(PUT, k=key)
        return key

    return work


def test_writes_arriving_while_a_batch_commits_on_the_thread_form_the_next_batch(tmp_path: Path) -> None:
    begins: list[str] = []
    writer = threaded_writer(tmp_path / "kv.db", begins)
    release = threading.Event()

    def slow(run: Run) -> str:
        assert threading.current_thread() is not threading.main_thread()  # not on the loop's thread
        release.wait(5)  # a lock another instance holds, say
        run(PUT, k="first")
        return "first"

    async def scenario() -> tuple[list[Any], int]:
        first = writer.write(slow)
        await asyncio.sleep(0.05)  # the loop turns while the first batch waits on the thread
        later = [writer.write(put_returning(k)) for k in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        waiting = sum(not write.done() for write in [first, *later])
        release.set()
        return await asyncio.wait_for(asyncio.gather(first, *later), timeout=5), waiting

    outcomes, waiting = run_async(scenario())
    writer.close()
    assert outcomes == ["first", "a", "b", "c"] and waiting == 4
    assert len(begins) == 2  # the three that arrived meanwhile shared one transaction
    with sqlite3.connect(tmp_path / "kv.db") as check:
        assert sorted(k for (k,) in check.execute("SELECT k FROM kv")) == ["a", "b", "c", "first"]


def test_a_database_that_cannot_be_reached_fails_the_writes_on_the_thread_instead_of_hanging(tmp_path: Path) -> None:
    def unreachable() -> Any:
        raise ConnectionRefusedError("connection refused")

    writer = writer_module.GroupCommitWriter(unreachable, "BEGIN", commit_on_thread=True)

    async def scenario() -> list[Any]:
        writes = [writer.write(lambda run: None), writer.write(lambda run: None)]
        return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), timeout=5)

    outcomes = run_async(scenario())
    writer.close()
    assert [type(outcome) for outcome in outcomes] == [ConnectionRefusedError] * 2


def test_close_commits_what_is_queued_and_what_is_on_the_thread(tmp_path: Path) -> None:
    begins: list[str] = []
    writer = threaded_writer(tmp_path / "kv.db", begins)

    async def queue_then_close() -> None:
        writer.write(lambda run: time.sleep(0.1) or run(PUT, k="on-the-thread"))
        await asyncio.sleep(0.01)  # handed over
        writer.write(lambda run: run(PUT, k="queued"))
        writer.close()  # shutting down: neither may be lost

    run_async(queue_then_close())
    with sqlite3.connect(tmp_path / "kv.db") as check:
        assert sorted(k for (k,) in check.execute("SELECT k FROM kv")) == ["on-the-thread", "queued"]
