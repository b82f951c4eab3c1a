"""A throwaway PostgreSQL cluster for the tests: made in a temporary folder, listening on 127.0.0.1 only, gone when
the session ends.

PostgreSQL refuses to run as root, and the tests run as root (in a network namespace of their own): the cluster's
files then belong to `nobody` and its commands run as that user. fsync is off: a crash loses nothing a test needs.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "dialbridge"
UNPRIVILEGED = "nobody"
FIX = "install Debian's postgresql (`make system-deps`, or `apt-get install postgresql`)"


class PostgresUnavailable(RuntimeError):
    """No cluster could be started; the message says why and what to install."""


def bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: Debian keeps them out of PATH, one folder per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if found:
        return Path(found[-1]).parent
    if shutil.which("pg_config"):
        folder = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    if shutil.which("initdb"):
        return Path(str(shutil.which("initdb"))).parent
    raise PostgresUnavailable(f"PostgreSQL's initdb is not installed: {FIX}")


class Cluster:
    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="dialbridge-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        self._names = itertools.count(1)
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", UNPRIVILEGED, "--"]

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            printed = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{printed}\n"
                f"(a working PostgreSQL is needed: {FIX})"
            )

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=300",  # several served instances with workers, each with a few connections
            ]
        )
        pg_ctl = str(self.bin / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True)

    def create_database(self) -> str:
        name = f"test_{next(self._names)}"
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test may leave a store's connections open; they are ended with the database.
        with self._admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
