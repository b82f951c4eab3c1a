"""Shared fixtures: a real database per test (a SQLite file, or a PostgreSQL database for the tests marked
`on_both_databases`), a controllable clock, and the app built on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from dialbridge.config import Settings
from dialbridge.store.database import MIGRATIONS
from dialbridge.web.app import create_app
from tests.direct_path import BOTH_PATHS, webhook_client
from tests.postgres import Cluster, PostgresUnavailable
from tests.served import free_port

# The store and the races it must decide run on each database dialbridge supports: mark a test or a module with it.
on_both_databases = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
NEWEST = ScriptDirectory(str(MIGRATIONS)).get_current_head()  # the newest migration, whichever it is


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the session, each test on a database of its own in it. No PostgreSQL fails the
    PostgreSQL tests (`make test` installs it), rather than skipping them unnoticed."""
    cluster = None
    try:
        cluster = Cluster(free_port())
        cluster.start()
    except PostgresUnavailable as exc:
        if cluster is not None:
            cluster.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database: SQLite unless the test is parametrized (`on_both_databases`) with "postgresql"."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'dialbridge.db'}"
        return
    cluster: Cluster = request.getfixturevalue("postgres")
    name = cluster.create_database()
    yield cluster.url(name)
    cluster.drop_database(name)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        public_base_url="https://dialbridge.example.test",
        dial_in_number="+14155550100",
    )


@pytest.fixture
def client(settings: Settings, clock: FakeClock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client


@pytest.fixture(params=BOTH_PATHS)
def client_both_ways(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[httpx.Client]:
    """`client`, once through ASGI and once over a socket on the direct path production takes for webhooks."""
    with webhook_client(request.param, create_app(settings, clock=clock), monkeypatch) as both_ways:
        yield both_ways
