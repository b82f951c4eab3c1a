"""Engine creation and schema migration (Alembic, run programmatically at start-up)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated; the message says what to do."""


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            path = Path(database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the database folder {path.parent}: {exc.strerror}; "
                    "set DIALBRIDGE_DATABASE_URL to a writable sqlite:///path"
                ) from exc
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(_psycopg(parsed), pool_pre_ping=True)
    raise DatabaseError(f"DIALBRIDGE_DATABASE_URL must be a {SUPPORTED_URLS} URL, not {parsed.drivername}://…")


SUPPORTED_URLS = "sqlite:///path or postgresql+psycopg://user:password@host:port/database"


def _psycopg(url: URL) -> URL:
    """The URL on psycopg 3, the one PostgreSQL driver the store is written and tested for (it runs SQL on the
    driver's own connections); a bare postgresql:// would mean SQLAlchemy's default, psycopg2."""
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise DatabaseError(f"DIALBRIDGE_DATABASE_URL: use postgresql+psycopg://… (psycopg 3), not {url.drivername}")
    if importlib.util.find_spec("psycopg") is None:
        raise DatabaseError(
            "a postgresql DIALBRIDGE_DATABASE_URL needs the psycopg driver: pip install 'dialbridge[postgresql]'"
        )
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; NORMAL sync is durable across crashes of the process (not of the OS
    # in the last moments), the usual trade for a web service; foreign keys are off in SQLite unless asked for.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # A million rooms' PIN index is tens of MB: keep plenty of pages cached. No memory map (mmap_size stays 0):
    # SQLite unmaps the whole file whenever another connection committed since this one last looked, and with
    # several workers committing that is nearly every transaction — the unmap/remap and page faults cost more
    # (measured: 231-238 vs 204-216 us of server CPU per webhook under the benchmark) than the reads it saved.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction that holds the write lock from its start, committed on leaving.

    On SQLite a transaction begun the default way (deferred) reads first and asks for the write lock at its first
    write; if another connection committed meanwhile, SQLite refuses at once with "database is locked" rather than
    wait (the busy timeout does not apply). BEGIN IMMEDIATE takes the lock up front, so concurrent writers wait their
    turn. Elsewhere a plain transaction."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.begin()
        yield connection
        connection.commit()


MIGRATION_LOCK = 0x6469616C62726467  # any constant bigint: it names the lock every dialbridge process migrates under


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """The write transaction migrations run in, which one process at a time holds: the others wait, then find the
    schema current. SQLite's write lock, taken at BEGIN IMMEDIATE, does that by itself. PostgreSQL's transactions
    take no lock until they touch a row, and two processes would both see no alembic_version table and both create
    it; a transaction-scoped advisory lock, released at commit, makes them take turns."""
    with writing(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        yield connection


def shown(url: str | URL) -> str:
    """The database URL as it may be printed or logged: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all: nothing in it can be told apart, so show none of it
        return "(not a database URL)"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call on every start."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except Exception as exc:
        raise DatabaseError(f"could not migrate the database at {shown(engine.url)}: {exc}") from exc
