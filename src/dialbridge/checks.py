"""Read-only checks for `dialbridge doctor`: it says what `serve` would do to the database without doing it, and
whether what holds the port is a dialbridge server already running.

A doctor that migrates is not a check: run against a production database before an upgrade, it would apply the new
migrations there and then; run in the wrong folder, it would leave a `var/dialbridge.db` behind. So the database is
opened read-only (or not at all when it does not exist yet) and the schema's revision compared with the newest.
"""

from __future__ import annotations

import http.client
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from dialbridge.config import Backend
from dialbridge.store.database import MIGRATIONS, create_db_engine, shown


@dataclass(frozen=True, slots=True)
class SchemaPlan:
    says: str  # what serve would do, or that nothing needs doing
    problem: str | None = None  # why serve could not, naming the fix
    current: bool = False  # the schema is at the newest revision: nothing to do
    upgrade: bool = False  # an existing schema is behind: migrations will change tables holding data


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def _pending(scripts: ScriptDirectory, current: str | None) -> list[str]:
    """The revisions `serve` would apply after `current`, oldest first."""
    return [script.revision for script in reversed(list(scripts.iterate_revisions("heads", current or "base")))]


def _span(revisions: list[str]) -> str:
    return revisions[0] if len(revisions) == 1 else f"{revisions[0]}..{revisions[-1]}"


def schema_plan(database_url: str) -> SchemaPlan:
    """What `serve` would do to the schema at `database_url`, found without writing (or creating) anything."""
    scripts = _scripts()
    head = scripts.get_current_head()
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database or "")
        if not path.exists():
            return _new_sqlite_file(url.database or "", _pending(scripts, None))
        current, problem = _sqlite_revision(path)
    else:
        current, problem = _server_revision(database_url)
    if problem is not None:
        return SchemaPlan("unknown", problem)
    if current == head:
        return SchemaPlan(f"at revision {head}, the newest: nothing to migrate", current=True)
    try:
        pending = _pending(scripts, current)
    except RevisionError:
        return SchemaPlan(
            f"at revision {current}, unknown to this dialbridge",
            f"the database's schema is at revision {current}, which this dialbridge does not have (a newer "
            "dialbridge migrated it?): run that version, or point DIALBRIDGE_DATABASE_URL at another database",
        )
    if current is None:
        return SchemaPlan(f"empty: serve would apply migrations {_span(pending)}")
    return SchemaPlan(
        f"at revision {current}: serve would upgrade it to {head} (applying {_span(pending)})", upgrade=True
    )


def _new_sqlite_file(database: str, pending: list[str]) -> SchemaPlan:
    path = Path(database)
    says = f"{database} does not exist: serve would create it and apply migrations {_span(pending)}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return SchemaPlan(
            says,
            f"cannot create {database}: {folder} is not a writable folder; set DIALBRIDGE_DATABASE_URL to a writable "
            "sqlite:///path",
        )
    return SchemaPlan(says)


def _sqlite_revision(path: Path) -> tuple[str | None, str | None]:
    # mode=ro still creates the -wal and -shm files beside a WAL database (and leaves them). With no -wal file
    # nobody has the database open (the last connection to close removes it), so the file alone is the whole
    # truth and `immutable=1` reads it touching nothing else; with one, a server is using it and mode=ro shares it.
    wal = path.with_name(path.name + "-wal")
    uri = f"{path.resolve().as_uri()}?{'mode=ro' if wal.exists() else 'immutable=1'}"
    return _revision(create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True)), str(path))


def _server_revision(database_url: str) -> tuple[str | None, str | None]:
    return _revision(create_db_engine(database_url), shown(database_url))


def _revision(engine: Engine, shown: str) -> tuple[str | None, str | None]:
    """The schema's current revision (None: not migrated yet), or why it could not be read."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision(), None
    except Exception as exc:
        why = f"{exc.__class__.__name__}: {exc}"
        return None, f"cannot read the database {shown} ({why}); check DIALBRIDGE_DATABASE_URL"
    finally:
        engine.dispose()


def dialbridge_answering(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether what holds host:port is a dialbridge server: its /healthz answers as only dialbridge's does (ok, or
    its database is unreachable). Anything else — another program, no answer within the timeout — is not."""
    connection = http.client.HTTPConnection(_reachable(host), port, timeout=timeout_s)
    try:
        connection.request("GET", "/healthz")
        body = orjson.loads(connection.getresponse().read(64 * 1024))
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
        return False
    finally:
        connection.close()
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    # web/pages.py's healthz: {"status": "ok", "backend": …}, or a 503 saying its database is unreachable.
    unhealthy = isinstance(error, dict) and error.get("code") == "database_unavailable"
    return body.get("backend") in set(Backend) or unhealthy


def _reachable(host: str) -> str:
    """The address to connect to for a server listening on `host` (every address: the loopback one)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
