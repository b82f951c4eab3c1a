"""Alembic migrations: they build exactly the schema the code declares, and carry existing data forward."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from dialbridge.store import tables as t
from dialbridge.store.database import alembic_config, create_db_engine, migrate
from dialbridge.store.store import Store
from tests.conftest import on_both_databases

# SQLite's reflection cannot read expression indexes (ix_rooms_pin_length); they are left out of the comparison.
pytestmark = [
    on_both_databases,
    pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index"),
    pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index"),
]


def test_the_migrated_schema_is_the_declared_one(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), t.metadata)
    assert differences == []


def test_upgrading_a_0001_database_keeps_each_calls_pin_failures(db_url: str) -> None:
    engine = create_db_engine(db_url)
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO calls (uuid, conversation_uuid, caller, callee, status, created_at, updated_at) "
                "VALUES ('call-1', '', '447700900001', '', 'awaiting_pin', 1, 1), "
                "('call-2', '', '447700900002', '', 'awaiting_pin', 1, 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO pin_attempts (call_uuid, caller, at, outcome, guessed) VALUES "
                "('call-1', '447700900001', 100, 'rejected', 1), ('call-1', '447700900001', 101, 'rejected', 0)"
            )
        )
    migrate(engine)
    store = Store(engine)
    try:
        first, second = store.call("call-1"), store.call("call-2")
        assert first is not None and first.pin_failures == 2  # two failures ...
        assert store.caller_failures("447700900001", 0) == 1  # ... one of them a guess
        assert second is not None and second.pin_failures == 0
        assert store.caller_failures("447700900002", 0) == 0
    finally:
        store.close()
    # And back down, and up again: both directions run.
    command.downgrade(alembic_config(engine), "0001")
    migrate(engine)


def _migrate_in_own_process(url: str, start: Any) -> None:
    start.wait()
    migrate(create_db_engine(url))


def test_processes_starting_together_migrate_a_new_database_once(db_url: str) -> None:
    """`serve --workers N` starts N processes that each migrate at start-up; on a new database they used to race
    and all but one failed with "table ... already exists" (seen in this suite, intermittently)."""
    url = db_url
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    processes = [spawn.Process(target=_migrate_in_own_process, args=(url, start)) for _ in range(6)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * 6
    engine = create_db_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), t.metadata) == []
