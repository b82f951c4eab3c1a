"""`GroupCommitWriter`: one failing write in a batch is rolled back alone; the others commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from dialbridge.store.writer import GroupCommitWriter, Run
from tests.helpers import run_async


class Statement:
    def __init__(self, sql: str) -> None:
        self.sql = sql

    def parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        return values


INSERT = Statement("INSERT INTO t (k) VALUES (:k)")


def test_a_failing_write_leaves_no_trace_and_the_rest_of_its_batch_commits(tmp_path: Path) -> None:
    path = tmp_path / "writes.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, check_same_thread=False)
        connection.isolation_level = None
        return connection

    writer = GroupCommitWriter(connect, "BEGIN IMMEDIATE")

    def insert(key: str) -> Any:
        def work(run: Run) -> str:
            run(INSERT, k=key)
            return key

        return work

    def half_then_fail(run: Run) -> None:
        run(INSERT, k="half-written")
        run(INSERT, k="a")  # "a" is the first write's: a constraint failure after a write that must not stay

    async def one_batch() -> list[Any]:
        writes = [writer.write(insert("a")), writer.write(half_then_fail), writer.write(insert("b"))]
        return await asyncio.gather(*writes, return_exceptions=True)

    first, failed, last = run_async(one_batch())
    writer.close()
    assert (first, last) == ("a", "b")
    assert isinstance(failed, sqlite3.IntegrityError)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT k FROM t ORDER BY k").fetchall() == [("a",), ("b",)]
