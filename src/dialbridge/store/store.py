"""`Store`: every read and write dialbridge makes of rooms, calls, PIN attempts and server keys.

SQL is compiled once from the table definitions and run on connections the store keeps open (prepared.py says
why). Reads are plain methods, for threads and start-up; code on the event loop calls them through `await
store.read(store.room, room_id)`. On SQLite that runs inline: an indexed read takes a few microseconds, cheaper
than a hop to a worker thread, and in WAL mode a reader never waits for another connection's lock; it runs on the
writer's connection in one snapshot per loop turn (`GroupCommitWriter.read` says why). On PostgreSQL a read is a
network round trip and can wait for a lock another instance holds (a migration, `VACUUM FULL`), so it runs on a
reader thread and the loop serves other requests meanwhile. Elsewhere (threads, start-up) each read is its own
transaction on a connection of the calling thread. Writes go to
the group-commit writer (writer.py): the call paths' writes are awaited and share one transaction per turn of
the event loop, room creation's included (on PostgreSQL they commit on the writer's thread, where waiting for
another instance's lock stalls no request). Only start-up writes at once (`write_now`, which may wait for the lock).
Write transactions are `BEGIN IMMEDIATE`, so a second process waits for the write lock up front instead of failing
half-way. Decisions that must not race (a PIN entry against the caller's quota) read inside the write.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from dialbridge.conference.rooms import Room
from dialbridge.conference.webhooks import CallEvent, CallParty, PinInput
from dialbridge.store import tables as t
from dialbridge.store.dial_outs import CONFERENCE, ENDED
from dialbridge.store.dial_outs import OPEN_STATES as OPEN_DIAL_OUT_STATES
from dialbridge.store.prepared import Prepared
from dialbridge.store.writer import GroupCommitWriter, Run

T = TypeVar("T")
P = ParamSpec("P")
# PostgreSQL reads from the event loop run on this many threads, each with a connection of its own: enough for
# the reads a loop has in flight at once (one or two per request, each a round trip), few enough to bound the
# connections a process holds.
READER_THREADS = 4


class PinTaken(Exception):
    """The PIN drawn for a new room is already some room's: draw another."""


@dataclass(frozen=True, slots=True)
class PinRecord:
    """What a PIN decision leaves in the store: a failed entry counts against the call and, if a guess, the
    caller; the call takes `call_status` (and `room_id`, when it joins one)."""

    outcome: str
    failed: bool
    guessed: bool
    call_status: str
    room_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    uuid: str
    conversation_uuid: str
    room_id: str | None
    caller: str
    callee: str
    status: str
    created_at: float
    updated_at: float
    ended_at: float | None
    duration_s: int | None
    pin_failures: int
    muted: int = 0
    keypad: str = ""


PIN_DECISION_LOCK = 0x64627069_6E646563  # any constant bigint other than the migration lock's

ROOM_COLUMNS = (t.rooms.c.room_id, t.rooms.c.session_id, t.rooms.c.pin)
COMPLETE = t.rooms.c.session_id.is_not(None)


#: The engine's own progress statuses. They come as events, and `answered` always after the answer webhook (the
#: engine answers with what it returned), `started` and `ringing` often after it too (each event is its own request):
#: none of them may overwrite what the call desk decided the call is (in_conference, awaiting_pin, locked_out...).
PROGRESS_STATUSES = ("started", "ringing", "answered")


def _call_upsert(dialect_name: str) -> Any:
    """INSERT a call, or merge into the existing row: blanks never erase what is known, a call that has ended keeps
    its final status when a late, out-of-order event arrives, and a progress event never overwrites the status the
    call desk gave the call (`PROGRESS_STATUSES`)."""
    module = postgresql if dialect_name == "postgresql" else sqlite
    c = t.calls.c
    statement = module.insert(t.calls).values(
        uuid=bindparam("uuid"),
        conversation_uuid=bindparam("conversation_uuid"),
        room_id=bindparam("room_id"),
        caller=bindparam("caller"),
        callee=bindparam("callee"),
        status=bindparam("status"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
        ended_at=bindparam("ended_at"),
        duration_s=bindparam("duration_s"),
        pin_failures=bindparam("failed"),
        muted=literal_column("0"),
        keypad=literal_column("''"),
    )
    new = statement.excluded
    # Literal values, not a bound list: the statement is compiled once, and an IN of bound values expands per call.
    progress: list[Any] = [literal_column(f"'{status}'") for status in PROGRESS_STATUSES]
    return statement.on_conflict_do_update(
        index_elements=[c.uuid],
        set_={
            "status": case(
                (and_(c.ended_at.is_not(None), new.ended_at.is_(None)), c.status),
                (and_(new.status.in_(progress), c.status.not_in(progress)), c.status),
                else_=new.status,
            ),
            "updated_at": new.updated_at,
            "room_id": func.coalesce(new.room_id, c.room_id),
            "conversation_uuid": func.coalesce(func.nullif(new.conversation_uuid, ""), c.conversation_uuid),
            "caller": func.coalesce(func.nullif(new.caller, ""), c.caller),
            "callee": func.coalesce(func.nullif(new.callee, ""), c.callee),
            "ended_at": func.coalesce(c.ended_at, new.ended_at),
            "duration_s": func.coalesce(new.duration_s, c.duration_s),
            "pin_failures": c.pin_failures + new.pin_failures,
        },
    )


def _insert_all(table: Any) -> Any:
    """INSERT binding every column but an autoincrement key, each by its own name."""
    return insert(table).values(
        {column.name: bindparam(column.name) for column in table.columns if column.autoincrement is not True}
    )


class _Statements:
    def __init__(self, engine: Engine) -> None:
        def p(statement: Any) -> Prepared:
            return Prepared(statement, engine.dialect)

        rooms, calls, attempts = t.rooms.c, t.calls.c, t.pin_attempts.c
        self.room_by_id = p(select(*ROOM_COLUMNS).where(rooms.room_id == bindparam("key"), COMPLETE))
        self.room_by_session = p(select(*ROOM_COLUMNS).where(rooms.session_id == bindparam("key"), COMPLETE))
        self.room_count = p(select(func.count()).select_from(t.rooms))
        self.longest_pin = p(select(func.max(func.length(rooms.pin))))
        self.room_state = p(select(rooms.session_id, rooms.lease_until).where(rooms.room_id == bindparam("room_id")))
        self.claim_room = p(
            insert(t.rooms).values(
                room_id=bindparam("room_id"),
                pin=bindparam("pin"),
                created_at=bindparam("now"),
                lease_until=bindparam("lease_until"),
            )
        )
        self.take_over_room = p(
            update(t.rooms)
            .where(
                rooms.room_id == bindparam("room_id"), rooms.session_id.is_(None), rooms.lease_until < bindparam("now")
            )
            .values(lease_until=bindparam("lease_until"))
        )
        self.complete_room = p(
            update(t.rooms)
            .where(rooms.room_id == bindparam("room_id"))
            .values(session_id=bindparam("session_id"), lease_until=None)
        )
        self.room_pin = p(select(rooms.pin).where(rooms.room_id == bindparam("room_id")))
        self.abandon_room = p(delete(t.rooms).where(rooms.room_id == bindparam("room_id"), rooms.session_id.is_(None)))

        self.upsert_call = p(_call_upsert(engine.dialect.name))
        self.call = p(select(t.calls).where(calls.uuid == bindparam("uuid")))
        self.call_room = p(select(calls.room_id).where(calls.uuid == bindparam("uuid")))
        self.calls_by_status = p(select(calls.status, func.count()).group_by(calls.status))
        self.calls_in_room = p(
            select(t.calls)
            .where(calls.room_id == bindparam("room_id"), calls.ended_at.is_(None))
            .order_by(calls.created_at)
        )
        # Phone callers in a room's conference besides one call: the room's own bridges (the calls its conference
        # dial-outs placed, which carry its browsers) are not callers.
        bridge = t.dial_outs.c
        self.callers_in_room = p(
            select(func.count())
            .select_from(t.calls)
            .where(
                calls.room_id == bindparam("room_id"),
                calls.status == "in_conference",
                calls.ended_at.is_(None),
                calls.uuid != bindparam("besides"),
                ~exists().where(bridge.call_uuid == calls.uuid, bridge.kind == CONFERENCE),
            )
        )
        # A call as its room's browsers are told of it: the row, the room's session, the kind of the dial-out that
        # placed it (none for a caller who dialled in).
        placed_by = select(t.dial_outs.c.kind).where(t.dial_outs.c.call_uuid == calls.uuid).limit(1).scalar_subquery()
        self.call_in_room = p(
            select(t.calls, rooms.session_id, placed_by).where(
                calls.uuid == bindparam("uuid"),
                calls.room_id == rooms.room_id,
                rooms.room_id == bindparam("room_id"),
                COMPLETE,
            )
        )
        self.set_call_muted = p(update(t.calls).where(calls.uuid == bindparam("uuid")).values(muted=bindparam("muted")))
        self.set_call_keypad = p(
            update(t.calls).where(calls.uuid == bindparam("uuid")).values(keypad=bindparam("keypad"))
        )
        self.insert_event = p(_insert_all(t.call_events))
        dial_outs = t.dial_outs.c
        self.end_dial_outs_of_call = p(
            update(t.dial_outs)
            .where(
                dial_outs.call_uuid == bindparam("call_uuid"),
                # The states written into the SQL: prepared statements take no expanding IN parameter.
                dial_outs.state.in_([literal_column(f"'{state}'") for state in OPEN_DIAL_OUT_STATES]),
            )
            .values(state=ENDED, ended_at=bindparam("now"))
        )
        self.call_events = p(
            select(t.call_events).where(t.call_events.c.call_uuid == bindparam("uuid")).order_by(t.call_events.c.id)
        )

        self.insert_attempt = p(_insert_all(t.pin_attempts))
        # Both counts in one round trip: the call's row, and the caller's guesses from the partial index alone.
        on_call = select(calls.pin_failures).where(calls.uuid == bindparam("uuid")).scalar_subquery()
        by_caller = (
            select(func.count())
            .select_from(t.pin_attempts)
            # `guessed = 1` written into the SQL, not bound: SQLite re-plans a statement on every run when a bound
            # value decides whether a partial index applies (measured: ~60 us more per webhook).
            .where(
                attempts.caller == bindparam("caller"),
                attempts.at >= bindparam("since"),
                attempts.guessed == literal_column("1"),
            )
            .scalar_subquery()
        )
        self.caller_failures = p(select(by_caller))
        # What the input webhook needs, in one round trip: the two counts and the room the digits are the PIN of
        # (an outer join, so the PIN index is walked once for both of the room's columns).
        pin_room = select(rooms.room_id, rooms.session_id).where(rooms.pin == bindparam("pin"), COMPLETE).subquery()
        # PostgreSQL: PIN decisions take turns (see settle_pin_entry); one lock for all, released at commit, so
        # two batches can never each hold one caller's lock and wait for the other's.
        self.lock_pin_decisions = (
            p(select(func.pg_advisory_xact_lock(literal(PIN_DECISION_LOCK))))
            if engine.dialect.name == "postgresql"
            else None
        )
        self.pin_entry = p(
            select(on_call, by_caller, pin_room.c.room_id, pin_room.c.session_id)
            .select_from(select(literal(1).label("one")).subquery())
            .outerjoin(pin_room, true())
        )
        entries = t.pin_entries.c
        self.insert_pin_entry = p(_insert_all(t.pin_entries))
        # The entries of calls that ended a while ago: no retry of theirs can come any more. Read from pin_entries'
        # side (the calls' key for each), so a sweep costs what the table holds, never the whole call history.
        self.forget_pin_entries = p(
            delete(t.pin_entries).where(
                exists().where(t.calls.c.uuid == entries.call_uuid, t.calls.c.ended_at < bindparam("before"))
            )
        )
        self.pin_entry_decided = p(
            select(entries.failures_on_call, entries.caller_failures, entries.room_id).where(
                entries.call_uuid == bindparam("call_uuid"),
                entries.sent_at == bindparam("sent_at"),
                entries.digits == bindparam("digits"),
                entries.timed_out == bindparam("timed_out"),
            )
        )

        module = postgresql if engine.dialect.name == "postgresql" else sqlite
        tokens = t.webhook_tokens.c
        self.remember_token = p(
            module.insert(t.webhook_tokens)
            .values(token=bindparam("token"), good_until=bindparam("good_until"))
            .on_conflict_do_nothing(index_elements=[tokens.token])
        )
        self.forget_tokens = p(delete(t.webhook_tokens).where(tokens.good_until < bindparam("now")))
        self.token_count = p(select(func.count()).select_from(t.webhook_tokens))

        self.server_key = p(select(t.server_keys.c.value).where(t.server_keys.c.name == bindparam("name")))
        self.insert_server_key = p(_insert_all(t.server_keys))


SQLITE_BUSY = 5
SWEEP_S = 60.0  # how often what has outlived its use (accepted webhook tokens, old PIN entries) is deleted
PIN_ENTRY_KEPT_S = 3600.0  # after its call ended: a retried input webhook comes within seconds of the first


@dataclass(slots=True)
class Sweep:
    """When a table's rows that have outlived their use are next deleted: at most once every `SWEEP_S`, by the
    write that comes first after that (a sweep rides a write that takes the lock anyway)."""

    last: float = float("-inf")

    def due(self, now: float) -> bool:
        if now < self.last + SWEEP_S:
            return False
        self.last = now
        return True


class WebhookReplayed(Exception):
    """A signed webhook whose token was accepted before: the request is refused and nothing was written."""


@dataclass(slots=True)
class _Claim:
    token: str
    good_until: float
    now: float
    used: bool = False


class _Replayed:
    """What a write returns instead of its work's result when the webhook token it carried was seen before."""


REPLAYED = _Replayed()
# The signed webhook being handled in this task, whose first write records its token (Store.webhook_token).
_CLAIM: contextvars.ContextVar[_Claim | None] = contextvars.ContextVar("webhook_token_claim", default=None)


class WebhookTokenUse:
    """`Store.webhook_token`'s block (a plain class: this runs for every webhook, and a generator-based context
    manager costs several times as much)."""

    __slots__ = ("_claim", "_reset", "_store")

    def __init__(self, store: Store, claim: _Claim) -> None:
        self._store, self._claim = store, claim
        self._reset: contextvars.Token[_Claim | None] | None = None

    async def __aenter__(self) -> None:
        self._reset = _CLAIM.set(self._claim)

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self._reset is not None:
            _CLAIM.reset(self._reset)
        if kind is None and not self._claim.used:  # nothing wrote, nothing failed: record it now
            await self._store._write_recording(self._claim, _nothing)


def _nothing(_run: Run) -> None:
    """The work of a write that only records a webhook token."""


async def _unless_replayed(write: Awaitable[T | _Replayed]) -> T:
    result = await write
    if isinstance(result, _Replayed):
        raise WebhookReplayed("the webhook's token was recorded before")
    return result


WAL_REWIND_FRAMES = 65536  # 256 MB of 4 KB pages
WAL_REWIND_WAIT_MS = 20  # readers leave the log within a loop turn; if not, the next checkpoint tries again


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _sqlite_busy(exc: BaseException) -> bool:
    """Another connection holds the write lock (SQLITE_BUSY or one of its extended codes)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == SQLITE_BUSY


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sql = _Statements(engine)
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError
        self._readers = threading.local()
        self._held: list[Any] = []  # the connections taken from the pool (and detached from it), to close
        self._held_lock = threading.Lock()
        database = engine.url.database if self._is_sqlite else None
        self._wal = bool(database) and database != ":memory:" and not str(database).startswith("file::memory:")
        self._checkpointer: Any = None
        self._token_sweep = Sweep()
        self._pin_entry_sweep = Sweep()
        if self._is_sqlite:
            self._writer = GroupCommitWriter(
                self._open_writer, "BEGIN IMMEDIATE", self._checkpoint if self._wal else None, _sqlite_busy
            )
        else:
            self._writer = GroupCommitWriter(self._open, "BEGIN", commit_on_thread=True)
        self._read_pool = (
            None if self._is_sqlite else ThreadPoolExecutor(READER_THREADS, thread_name_prefix="dialbridge-db-reader")
        )

    async def read(self, query: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`query(*args, **kwargs)` (one of this store's reads), from the event loop without stalling it: inline
        on SQLite, on a reader thread on PostgreSQL (the module's docstring says why)."""
        if self._read_pool is None:
            return query(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, lambda: query(*args, **kwargs))

    # ---- plumbing ----------------------------------------------------------------------------------------------
    def _open(self) -> Any:
        """A DBAPI connection in autocommit mode: reads see every commit, writes bracket their own transaction."""
        proxy = self.engine.raw_connection()
        connection: Any = proxy.driver_connection
        # These connections are changed (autocommit, the writer's busy_timeout=0): never let the pool hand them to
        # anyone else — not even if this store is dropped without close(), when the pool would take back what the
        # garbage collector returns (found: another writer then got "database is locked" at once).
        proxy.detach()
        with self._held_lock:
            self._held.append(proxy)
        if self._is_sqlite:
            connection.isolation_level = None
        else:
            connection.autocommit = True
        return connection

    def _open_writer(self) -> Any:
        """The SQLite connection that commits: its checkpoints are the writer's to schedule (writer.py says why)."""
        connection = self._open()
        if self._wal:
            connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("PRAGMA busy_timeout=0")  # the writer waits for the lock itself, off the loop's clock
        return connection

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database file as far as readers allow; once the log has grown past
        `WAL_REWIND_FRAMES`, make sure the next commit starts it over.

        Why: SQLite starts the log over only when a commit begins at a moment when every frame is copied back and
        no reader still uses any of them. With several workers reading and committing every loop turn that moment
        never comes, and the log grew without bound (measured: 880 MB after 20 s of the webhook benchmark; a
        server would fill its disk). RESTART holds writers off while it waits (bounded by `WAL_REWIND_WAIT_MS`)
        for the readers still on the log to finish their loop turn; the passive copy before it leaves it little
        to do, and the threshold is high, so the pause is rare. The file is then reused from its start, not
        truncated: truncating happens in the commit that starts the log over, on the event loop, and stalled it
        for tens of ms (p99 43-48 ms in 4 s windows holding one). So the log file stays about the threshold's size.
        Runs on the executor, never on the event loop.
        """
        if self._checkpointer is None:
            self._checkpointer = self._open()
            self._checkpointer.execute(f"PRAGMA busy_timeout={WAL_REWIND_WAIT_MS}")
        _busy, log_frames, _copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log_frames >= WAL_REWIND_FRAMES:
            self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()

    def _reader(self) -> Any:
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            connection = self._readers.connection = self._open()
        return connection

    def _fetch(self, statement: Prepared, **values: Any) -> list[Sequence[Any]]:
        loop = _running_loop() if self._is_sqlite else None
        if loop is not None:
            return self._writer.read(statement.sql, statement.parameters(values), loop)
        cursor = self._reader().cursor()
        try:
            cursor.execute(statement.sql, statement.parameters(values))
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _first(self, statement: Prepared, **values: Any) -> Sequence[Any] | None:
        rows = self._fetch(statement, **values)
        return rows[0] if rows else None

    def _scalar(self, statement: Prepared, **values: Any) -> Any:
        row = self._first(statement, **values)
        return row[0] if row else None

    def _write(self, work: Callable[[Run], T]) -> Awaitable[T]:
        claim = _CLAIM.get()
        if claim is None or claim.used:
            return self._writer.write(work)
        return self._write_recording(claim, work)

    def _write_recording(self, claim: _Claim, work: Callable[[Run], T]) -> Awaitable[T]:
        """`work`, after recording the webhook token in the same transaction; if the token was recorded before,
        nothing is written and WebhookReplayed is raised: a replay acts on nothing, and the record costs no commit
        of its own. Tokens past their lifetime are deleted at most once a minute, in the same transaction."""
        claim.used = True
        sweep = self._token_sweep.due(claim.now)

        def recorded_then(run: Run) -> T | _Replayed:
            if sweep:
                run(self._sql.forget_tokens, now=claim.now)
            if run(self._sql.remember_token, token=claim.token, good_until=claim.good_until).rowcount != 1:
                return REPLAYED
            return work(run)

        return _unless_replayed(self._writer.write(recorded_then))

    def _write_now(self, work: Callable[[Run], T]) -> T:
        return self._writer.write_now(work)

    def check_reachable(self) -> None:
        """A round trip to the database on a pooled connection; raises if it cannot be made (for `/healthz`)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True, cancel_futures=True)
        self._writer.close()
        with self._held_lock:
            for proxy in self._held:
                # Close the connection itself (the writer may have closed its own already: closing again is a
                # no-op), then let the detached proxy go without the pool's reset, which would roll back on a
                # closed connection and log an error on every shutdown.
                connection = proxy.dbapi_connection
                if connection is not None:  # None: this proxy let its connection go already
                    connection.close()
                    proxy.invalidate()
            self._held.clear()

    # ---- rooms -------------------------------------------------------------------------------------------------
    def room(self, room_id: str) -> Room | None:
        return self._room(self._sql.room_by_id, room_id)

    def room_by_session(self, session_id: str) -> Room | None:
        return self._room(self._sql.room_by_session, session_id)

    def _room(self, statement: Prepared, key: str) -> Room | None:
        row = self._first(statement, key=key)
        return Room(row[0], row[1], row[2]) if row else None

    def room_count(self) -> int:
        """Rooms holding a PIN, completed or being created: what the PIN space is shared among."""
        return int(self._scalar(self._sql.room_count) or 0)

    def longest_pin(self) -> int:
        return int(self._scalar(self._sql.longest_pin) or 0)

    def room_state(self, room_id: str) -> tuple[str | None, float | None] | None:
        """(session_id, lease_until) of a room row, complete or not; None when there is no row."""
        row = self._first(self._sql.room_state, room_id=room_id)
        return (row[0], row[1]) if row else None

    # Room creation writes through the group-commit writer like every request's writes: awaited, so a write lock
    # held by another process is waited for without stopping the event loop (write_now slept on it, stalling
    # every request in flight for as long as the other held it).
    async def claim_room(self, room_id: str, pin: str, now: float, lease_until: float) -> bool:
        """Insert a room being created. False when the room id is taken; `PinTaken` when the PIN is."""
        try:
            await self._write(
                lambda run: run(self._sql.claim_room, room_id=room_id, pin=pin, now=now, lease_until=lease_until)
            )
        except self._integrity_error:
            if self.room_state(room_id) is not None:
                return False
            raise PinTaken(pin) from None
        return True

    async def take_over_room(self, room_id: str, now: float, lease_until: float) -> bool:
        """Take over the creation of a room whose creator let its lease run out (crashed, or hung)."""
        changed = await self._write(
            lambda run: run(self._sql.take_over_room, room_id=room_id, now=now, lease_until=lease_until).rowcount
        )
        return bool(changed == 1)

    async def complete_room(self, room_id: str, session_id: str) -> Room:
        def complete(run: Run) -> str:
            run(self._sql.complete_room, room_id=room_id, session_id=session_id)
            return str(run(self._sql.room_pin, room_id=room_id).fetchone()[0])

        return Room(room_id, session_id, await self._write(complete))

    async def abandon_room(self, room_id: str) -> None:
        """Remove a claimed room whose video session could not be created: nothing half-written stays."""
        await self._write(lambda run: run(self._sql.abandon_room, room_id=room_id))

    # ---- calls -------------------------------------------------------------------------------------------------
    def record_call(self, call: CallParty, status: str, now: float, room_id: str | None = None) -> Awaitable[None]:
        """Create the call if new, else merge what this moment tells of it."""
        return self._write(lambda run: self._upsert_call(run, call, status, now, room_id=room_id))

    def _upsert_call(
        self,
        run: Callable[..., Any],
        call: CallParty,
        status: str,
        now: float,
        *,
        room_id: str | None = None,
        ended: bool = False,
        duration_s: int | None = None,
        failed: bool = False,
    ) -> None:
        run(
            self._sql.upsert_call,
            uuid=call.uuid,
            conversation_uuid=call.conversation_uuid,
            room_id=room_id,
            caller=call.caller,
            callee=call.callee,
            status=status,
            now=now,
            ended_at=now if ended else None,
            duration_s=duration_s,
            failed=int(failed),
        )

    def record_call_event(self, event: CallEvent, payload: Mapping[str, Any], now: float) -> Awaitable[str | None]:
        """Store one event against its call (created if unknown); yields the call's room, where known."""
        serialized = json.dumps(payload, separators=(",", ":"), default=str)

        def record(run: Run) -> str | None:
            row = run(self._sql.call_room, uuid=event.call.uuid).fetchone()
            room_id = row[0] if row else None
            run(
                self._sql.insert_event,
                call_uuid=event.call.uuid,
                room_id=room_id,
                status=event.status,
                conversation_uuid=event.call.conversation_uuid,
                caller=event.call.caller,
                callee=event.call.callee,
                timestamp=event.timestamp,
                start_time=event.start_time,
                end_time=event.end_time,
                duration_s=event.duration,
                received_at=now,
                payload=serialized,
            )
            self._upsert_call(run, event.call, event.status, now, ended=event.is_final, duration_s=event.duration)
            if event.is_final:  # a room's phone bridge hung up (or never connected): the room may dial it again
                run(self._sql.end_dial_outs_of_call, call_uuid=event.call.uuid, now=now)
            return room_id

        return self._write(record)

    def call(self, uuid: str) -> CallRecord | None:
        row = self._first(self._sql.call, uuid=uuid)
        return CallRecord(*row) if row else None

    def calls_in_room(self, room_id: str) -> list[CallRecord]:
        """The room's calls that have not ended, oldest first."""
        return [CallRecord(*row) for row in self._fetch(self._sql.calls_in_room, room_id=room_id)]

    def callers_in_room(self, room_id: str, besides: str) -> int:
        """How many phone callers are in the room's conference besides the call `besides` (bridges not counted)."""
        return int(self._scalar(self._sql.callers_in_room, room_id=room_id, besides=besides) or 0)

    def call_in_room(self, uuid: str, room_id: str) -> tuple[CallRecord, str, str | None] | None:
        """The call, its room's session id and the kind of dial-out that placed it (None: it dialled in), in one
        read; None when the call or the (complete) room is unknown."""
        row = self._first(self._sql.call_in_room, uuid=uuid, room_id=room_id)
        if row is None:
            return None
        *call, session_id, placed_by = row
        return CallRecord(*call), str(session_id), placed_by

    def set_call_muted(self, uuid: str, muted: bool) -> Awaitable[None]:
        def write(run: Run) -> None:
            run(self._sql.set_call_muted, uuid=uuid, muted=int(muted))

        return self._write(write)

    def set_call_keypad(self, uuid: str, pending: str) -> Awaitable[None]:
        """Remember the keypad command the call has started (`*`), or forget it (`""`)."""

        def write(run: Run) -> None:
            run(self._sql.set_call_keypad, uuid=uuid, keypad=pending)

        return self._write(write)

    def call_events(self, uuid: str) -> list[dict[str, Any]]:
        names = [column.name for column in t.call_events.columns]
        return [dict(zip(names, row, strict=True)) for row in self._fetch(self._sql.call_events, uuid=uuid)]

    def calls_by_status(self) -> dict[str, int]:
        return {str(status): int(count) for status, count in self._fetch(self._sql.calls_by_status)}

    # ---- PIN attempts ------------------------------------------------------------------------------------------
    def settle_pin_entry(
        self,
        entry: PinInput,
        since: float,
        now: float,
        decide: Callable[[int, int, Room | None], tuple[T, PinRecord]],
    ) -> Awaitable[tuple[T, int]]:
        """Decide a PIN entry and record the decision, in one write transaction: `decide` gets the call's failed
        entries, the caller's wrong guesses since `since` and the room the entry's digits are the PIN of, and says
        what to record. Returns what `decide` decided, and how many other phone callers are in the conference of
        the room the call joins (0 when it joins none): counted in the same transaction, not in a read of its own
        after it, since every caller with the right PIN needs it ("you are the first participant").

        Counting in the write, not in a read before it, is what makes the caller quota hold: read first, parallel
        calls from one number all saw the same count before any of them recorded its guess (40 parallel wrong
        guesses over two instances: 13 were invited to try again, where the quota allows 9). In the write they
        take turns — SQLite's write lock is held from BEGIN; on PostgreSQL an advisory lock does the same.

        An entry delivered again (a retried webhook: `PinInput` says what names an entry) is decided once: its
        second delivery gets `decide` run on what the first one's decision saw, so the same answer, and records
        nothing. Looked up after the turn is taken, so that two deliveries at once are one decision too."""
        call = entry.call
        named = {
            "call_uuid": call.uuid,
            "sent_at": entry.sent_at,
            "digits": entry.digits,
            "timed_out": int(entry.timed_out),
        }

        sweep = self._pin_entry_sweep.due(now)

        def settle(run: Run) -> tuple[T, int]:
            if self._sql.lock_pin_decisions is not None:
                run(self._sql.lock_pin_decisions)
            if sweep:
                run(self._sql.forget_pin_entries, before=now - PIN_ENTRY_KEPT_S)
            decided = run(self._sql.pin_entry_decided, **named).fetchone() if entry.recognisable else None
            if decided is not None:
                on_call, by_caller, room_id = decided
                found = run(self._sql.room_by_id, key=room_id).fetchone() if room_id is not None else None
                result, record = decide(on_call, by_caller, Room(*found) if found else None)
                return result, self._callers_besides(run, record.room_id, call.uuid)
            row = run(self._sql.pin_entry, uuid=call.uuid, caller=call.caller, since=since, pin=entry.digits).fetchone()
            on_call, by_caller = int(row[0] or 0), int(row[1] or 0)
            room = Room(row[2], row[3], entry.digits) if row[2] is not None else None
            result, record = decide(on_call, by_caller, room)
            if record.failed:
                run(
                    self._sql.insert_attempt,
                    call_uuid=call.uuid,
                    caller=call.caller,
                    at=now,
                    outcome=record.outcome,
                    guessed=int(record.guessed),
                )
            self._upsert_call(run, call, record.call_status, now, room_id=record.room_id, failed=record.failed)
            if entry.recognisable:
                room_seen = room.room_id if room is not None else None
                run(
                    self._sql.insert_pin_entry,
                    **named,
                    failures_on_call=on_call,
                    caller_failures=by_caller,
                    room_id=room_seen,
                )
            return result, self._callers_besides(run, record.room_id, call.uuid)

        return self._write(settle)

    def _callers_besides(self, run: Run, room_id: str | None, call_uuid: str) -> int:
        """Phone callers in the conference of room `room_id` besides the call (0 for no room), within a write."""
        if room_id is None:
            return 0
        counted = run(self._sql.callers_in_room, room_id=room_id, besides=call_uuid).fetchone()
        return int(counted[0] or 0)

    def caller_failures(self, caller: str, since: float) -> int:
        """Wrong guesses from this caller number since `since` (what answering a call needs to know)."""
        return int(self._scalar(self._sql.caller_failures, caller=caller, since=since) or 0)

    # ---- signed webhooks' tokens -------------------------------------------------------------------------------
    def webhook_token(self, token: str, good_until: float, now: float) -> WebhookTokenUse:
        """Handle a signed webhook once: `async with store.webhook_token(...)` around its handling makes the
        block's first write also record `token` (in the same transaction), raising `WebhookReplayed` instead of
        writing if the token was recorded before, by any process on this database. If the block wrote nothing,
        the token is recorded on leaving it (and a replay raises there). A block that raises records nothing: a
        request refused as invalid may be sent again."""
        return WebhookTokenUse(self, _Claim(token, good_until, now))

    def webhook_token_count(self) -> int:
        return int(self._scalar(self._sql.token_count) or 0)

    # ---- server keys -------------------------------------------------------------------------------------------
    def server_key(self, name: str, make: Callable[[], str], now: float) -> str:
        """The named key, created with `make()` on first use; every instance sharing the database agrees on it."""
        value = self._scalar(self._sql.server_key, name=name)
        if value is None:
            try:
                value = make()
                self._write_now(lambda run: run(self._sql.insert_server_key, name=name, value=value, created_at=now))
            except self._integrity_error:
                pass  # another instance made it first: use theirs
            value = self._scalar(self._sql.server_key, name=name)
        return str(value)
