"""`dialbridge doctor` checks and changes nothing: it says what `serve` would do to the database, never does it;
and what holds the port (a dialbridge server already running?), suggesting a port that is free."""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from pydantic import SecretStr

from dialbridge.config import Settings
from dialbridge.store.database import alembic_config, create_db_engine, migrate
from tests.conftest import NEWEST
from tests.served import free_port, run_cli, serving, suggested_port


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_doctor_on_the_defaults_creates_neither_var_nor_the_database(tmp_path: Path) -> None:
    result = run_cli(
        "doctor",
        tmp_path=tmp_path,
        DIALBRIDGE_DATABASE_URL="sqlite:///./var/dialbridge.db",
        DIALBRIDGE_PORT=str(free_port()),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"./var/dialbridge.db does not exist: serve would create it and apply migrations 0001..{NEWEST}"
        in result.stdout
    )
    assert files_under(tmp_path) == set()


def test_doctor_names_a_database_folder_it_could_not_create(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=f"sqlite:///{tmp_path}/file/var/db.sqlite")

    assert result.returncode == 1
    assert f"error: cannot create {tmp_path}/file/var/db.sqlite: {tmp_path}/file is not a writable folder" in (
        result.stdout
    )


def revision(path: Path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_doctor_says_which_migrations_serve_would_apply_and_applies_none(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    engine = create_db_engine(f"sqlite:///{path}")
    command.upgrade(alembic_config(engine), "0001")
    engine.dispose()
    before = files_under(tmp_path)

    result = run_cli(
        "doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=f"sqlite:///{path}", DIALBRIDGE_PORT=str(free_port())
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"schema:       at revision 0001: serve would upgrade it to {NEWEST} (applying 0002..{NEWEST})" in result.stdout
    )
    assert files_under(tmp_path) == before  # not even SQLite's -wal and -shm files
    assert revision(path) == "0001"


def test_doctor_reads_a_database_in_use_without_writing_to_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    engine = create_db_engine(f"sqlite:///{path}")
    migrate(engine)
    with engine.connect() as held:  # a server has it open: its -wal and -shm files are there
        held.exec_driver_sql("SELECT 1")
        result = run_cli(
            "doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=f"sqlite:///{path}", DIALBRIDGE_PORT=str(free_port())
        )
    engine.dispose()

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"schema:       at revision {NEWEST}, the newest: nothing to migrate" in result.stdout


def test_doctor_refuses_a_schema_newer_than_it_knows(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0099')")

    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=f"sqlite:///{path}")

    assert result.returncode == 1
    assert "error: the database's schema is at revision 0099, which this dialbridge does not have" in result.stdout


def test_doctor_names_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_text("hello")

    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=f"sqlite:///{path}")

    assert result.returncode == 1
    assert f"error: cannot read the database {path} (DatabaseError" in result.stdout
    assert path.read_text() == "hello"


def assert_free(port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_doctor_says_a_dialbridge_server_is_already_answering_on_the_port(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_PORT=str(served.port))

    assert result.returncode == 1
    assert f"error: a dialbridge server is already answering on http://127.0.0.1:{served.port} (stop it" in (
        result.stdout
    )
    assert "already in use" not in result.stdout


def two_ports_in_a_row() -> tuple[socket.socket, socket.socket]:
    """Two listening sockets on neighbouring ports (port and port + 1)."""
    while True:
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        second = socket.socket()
        try:
            second.bind(("127.0.0.1", first.getsockname()[1] + 1))
        except OSError:
            first.close()
            second.close()
            continue
        first.listen()
        second.listen()
        return first, second


@pytest.mark.parametrize("command", ["doctor", "serve"])
def test_the_port_suggested_instead_of_a_taken_one_is_free(command: str, tmp_path: Path) -> None:
    first, second = two_ports_in_a_row()
    with first, second:
        port = first.getsockname()[1]
        result = run_cli(command, tmp_path=tmp_path, DIALBRIDGE_PORT=str(port))
        said = result.stdout + result.stderr
        assert result.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use" in said
        suggested = suggested_port(said, "PORT")
        assert suggested > port + 1  # port + 1 is taken too
        assert_free(suggested)


@pytest.mark.parametrize(
    "url", ["notaurl", "example.com", "ftp://example.com", "https://", "http:///path", "https://example.com:port"]
)
def test_a_public_base_url_without_http_scheme_and_host_is_a_problem(url: str) -> None:
    problems = Settings(public_base_url=url).problems()

    assert [p for p in problems if p.startswith(f"DIALBRIDGE_PUBLIC_BASE_URL={url!r} is not an http")], problems


@pytest.mark.parametrize("url", ["https://dialbridge.example.com", "http://10.0.0.7:8080/", "https://[::1]:8443/db"])
def test_a_public_base_url_with_scheme_and_host_is_accepted(url: str) -> None:
    assert not [p for p in Settings(public_base_url=url).problems() if "PUBLIC_BASE_URL" in p]


@pytest.mark.parametrize("command", ["doctor", "serve"])
def test_doctor_and_serve_refuse_a_public_base_url_that_is_not_one(command: str, tmp_path: Path) -> None:
    result = run_cli(command, tmp_path=tmp_path, DIALBRIDGE_PUBLIC_BASE_URL="notaurl", DIALBRIDGE_PORT=str(free_port()))

    assert result.returncode == 1
    assert "error: DIALBRIDGE_PUBLIC_BASE_URL='notaurl' is not an http:// or https:// URL with a host" in (
        result.stdout + result.stderr
    )


def test_sip_accounts_come_from_the_setting_and_from_a_file_of_one_a_line(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.write_text("# softphones\ncarol:pa55:standup\n\n  dave:word  \n")
    settings = Settings(sip_accounts=SecretStr("alice:s3cret:standup,bob:pw"), sip_accounts_file=str(accounts))

    assert [(a.username, a.password, a.room) for a in settings.sip_account_list()] == [
        ("alice", "s3cret", "standup"),
        ("bob", "pw", None),
        ("carol", "pa55", "standup"),
        ("dave", "word", None),
    ]
    assert not [p for p in settings.problems() if "SIP_ACCOUNTS" in p]


@pytest.mark.parametrize(
    ("setting", "file_text", "said"),
    [
        ("alice:hunter2:bad room", None, "DIALBRIDGE_SIP_ACCOUNTS entry 1 (alice): a room id is 1 to 64 characters"),
        ("alice", None, "DIALBRIDGE_SIP_ACCOUNTS entry 1 (alice): not user:password or user:password:room-id"),
        (None, "# one\nbob:pw\nalice:hunter2:x:y\n", "DIALBRIDGE_SIP_ACCOUNTS_FILE ({file}) line 3 (alice): not user"),
        ("alice:hunter2", "alice:other\n", "account alice is listed in both DIALBRIDGE_SIP_ACCOUNTS and its file"),
    ],
)
def test_a_bad_sip_account_is_a_problem_saying_how_to_write_one_and_never_its_password(
    tmp_path: Path, setting: str | None, file_text: str | None, said: str
) -> None:
    accounts = tmp_path / "accounts"
    if file_text is not None:
        accounts.write_text(file_text)
    settings = Settings(
        sip_accounts=SecretStr(setting) if setting else None,
        sip_accounts_file=str(accounts) if file_text is not None else None,
    )
    [problem] = [p for p in settings.problems() if "SIP_ACCOUNTS" in p]

    assert problem.startswith(said.format(file=accounts)), problem
    assert "write each account as user:password or user:password:room-id, e.g. alice:s3cret:team-room" in problem
    assert "hunter2" not in problem


def test_an_unreadable_sip_accounts_file_is_a_problem(tmp_path: Path) -> None:
    [problem] = Settings(sip_accounts_file=str(tmp_path / "missing")).problems()[-1:]
    assert problem.startswith("cannot read DIALBRIDGE_SIP_ACCOUNTS_FILE (No such file or directory: ")
    assert "one a line as user:password or user:password:room-id" in problem


def test_serve_refuses_bad_sip_accounts(tmp_path: Path) -> None:
    result = run_cli("serve", tmp_path=tmp_path, DIALBRIDGE_SIP_ACCOUNTS="alice", DIALBRIDGE_PORT=str(free_port()))

    assert result.returncode == 1
    assert "error: DIALBRIDGE_SIP_ACCOUNTS entry 1 (alice): not user:password" in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["SHA-1", "", "MD5,sha-999"])
def test_unknown_sip_digest_algorithms_are_a_problem(value: str) -> None:
    [problem] = [p for p in Settings(sip_digest_algorithms=value).problems() if "DIGEST" in p]
    assert problem.startswith(f"DIALBRIDGE_SIP_DIGEST_ALGORITHMS={value!r}: list some of SHA-512-256, SHA-256, MD5")


def test_sip_digest_algorithms_are_read_in_order_any_case() -> None:
    settings = Settings(sip_digest_algorithms="md5, sha-256")
    assert settings.sip_digest_algorithm_list == ("MD5", "SHA-256")
    assert not [p for p in settings.problems() if "DIGEST" in p]


@pytest.mark.parametrize(
    ("value", "address"),
    [("", None), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("10.0.0.2", ("10.0.0.2", 53)), ("[::1]:53", ("::1", 53))],
)
def test_dns_server_is_an_address_with_an_optional_port(value: str, address: tuple[str, int] | None) -> None:
    settings = Settings(dns_server=value)
    assert settings.dns_server_address == address
    assert not [p for p in settings.problems() if "DNS_SERVER" in p]


@pytest.mark.parametrize("value", ["dns.example.com", "127.0.0.1:99999", "[::1]:x"])
def test_a_dns_server_that_is_not_an_ip_address_and_port_is_a_problem(value: str) -> None:
    assert [p for p in Settings(dns_server=value).problems() if p.startswith("DIALBRIDGE_DNS_SERVER:")]
