"""/metrics, and what `dialbridge doctor` / `dialbridge serve` say when something is wrong."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from dialbridge.store.database import DatabaseError, create_db_engine
from dialbridge.store.store import Store
from dialbridge.web.metrics import Metrics
from tests.helpers import answer, enter, make_room, run_async
from tests.served import free_port, run_cli, serving, suggested_port, vonage_environment


def metric_value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics")


def test_metrics_count_requests_rooms_calls_and_webhook_latency(client: TestClient) -> None:
    room = make_room(client, "standup")
    make_room(client, "weekly")
    answer(client, "c1")
    enter(client, "c1", room["pin"])
    answer(client, "c2")
    client.get("/room/" + "x" * 70)
    text = client.get("/metrics").text
    assert metric_value(text, "dialbridge_rooms") == 2
    assert metric_value(text, 'dialbridge_calls{state="in_conference"}') == 1
    assert metric_value(text, 'dialbridge_calls{state="awaiting_pin"}') == 1
    assert metric_value(text, 'dialbridge_webhook_seconds_count{webhook="answer"}') == 2
    assert metric_value(text, 'dialbridge_webhook_seconds_count{webhook="input"}') == 1
    assert metric_value(text, 'dialbridge_webhook_seconds_bucket{le="+Inf",webhook="answer"}') == 2
    assert metric_value(text, 'dialbridge_webhook_seconds_bucket{le="1.0",webhook="answer"}') == 2  # cumulative
    assert 0 < metric_value(text, 'dialbridge_webhook_seconds_sum{webhook="answer"}') < 2
    assert metric_value(text, 'dialbridge_http_requests_total{method="GET",route="/room/{room_id}",status="400"}') == 1
    assert "x" * 70 not in text  # labels carry route templates, never raw paths


def test_doctor_passes_on_the_defaults(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_PORT=str(free_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: configuration is usable" in result.stdout
    assert "DIALBRIDGE_SIGNATURE_SECRET" in result.stdout  # the unsigned-webhooks warning names its fix


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_doctor_on_postgresql_shows_the_url_without_its_password(tmp_path: Path, db_url: str) -> None:
    # The bare postgresql:// form, which means psycopg here; the test cluster trusts any password.
    url = db_url.replace("postgresql+psycopg://dialbridge@", "postgresql://dialbridge:hunter2@")
    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_DATABASE_URL=url, DIALBRIDGE_PORT=str(free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database:     postgresql://dialbridge:***@127.0.0.1" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql+psycopg2://u@h/db", "use postgresql+psycopg://"),
        ("mysql://u@h/db", "sqlite:///path or postgresql+psycopg://"),
    ],
)
def test_an_unsupported_database_url_names_the_supported_ones(url: str, named: str) -> None:
    with pytest.raises(DatabaseError, match=re.escape(named)):
        create_db_engine(url)


def test_a_postgresql_url_without_the_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(DatabaseError, match=re.escape("pip install 'dialbridge[postgresql]'")):
        create_db_engine("postgresql+psycopg://u@127.0.0.1/db")


def test_doctor_names_the_missing_vonage_credentials(tmp_path: Path) -> None:
    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_BACKEND="vonage", DIALBRIDGE_PORT="1")
    assert result.returncode == 1
    assert "DIALBRIDGE_VONAGE_APPLICATION_ID" in result.stdout
    assert "DIALBRIDGE_VONAGE_PRIVATE_KEY" in result.stdout


def test_doctor_names_an_unreadable_private_key(tmp_path: Path) -> None:
    result = run_cli(
        "doctor",
        tmp_path=tmp_path,
        DIALBRIDGE_BACKEND="vonage",
        DIALBRIDGE_VONAGE_APPLICATION_ID="app",
        DIALBRIDGE_VONAGE_PRIVATE_KEY=str(tmp_path / "missing.key"),
    )
    assert result.returncode == 1
    assert "cannot read DIALBRIDGE_VONAGE_PRIVATE_KEY" in result.stdout


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("doctor", tmp_path=tmp_path, DIALBRIDGE_PIN_LENGTH="4")
    assert result.returncode == 2
    assert "DIALBRIDGE_PIN_LENGTH" in result.stderr


def test_serve_on_a_port_in_use_says_how_to_fix_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", tmp_path=tmp_path, DIALBRIDGE_PORT=str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "DIALBRIDGE_PORT=" in result.stderr


def test_serve_refuses_several_workers_on_the_embedded_backend(tmp_path: Path) -> None:
    result = run_cli("serve", "--workers", "2", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "one worker" in result.stderr and "DIALBRIDGE_BACKEND=vonage" in result.stderr


def test_serve_refuses_no_workers(tmp_path: Path) -> None:
    result = run_cli("serve", "--workers", "0", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "at least one worker" in result.stderr


def test_rooms_are_counted_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting rooms scans the whole table (milliseconds at a million rooms): neither a scrape nor a room's
    creation may do it on the event loop, where every webhook in flight would wait for it."""
    on_loop: list[bool] = []
    count_rooms = Store.room_count

    def recording(self: Store) -> int:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return count_rooms(self)

    monkeypatch.setattr(Store, "room_count", recording)
    assert client.post("/api/rooms", json={"room_id": "counted"}).status_code == 201
    assert client.get("/metrics").status_code == 200
    assert len(on_loop) == 2 and not any(on_loop)


class _NoRooms:
    def room_count(self) -> int:
        return 0

    def calls_by_status(self) -> dict[str, int]:
        return {}


def test_workers_sharing_a_folder_each_report_all_of_their_requests(tmp_path: Path) -> None:
    store: Any = _NoRooms()
    one, other = Metrics(store, tmp_path), Metrics(store, tmp_path)
    other._own_file = tmp_path / "other-worker.json"  # two processes in one test: give them distinct files
    for _ in range(2):
        one.count_request("/webhooks/answer", "GET", "200")
    one.observe_webhook("answer", 0.001)
    for _ in range(3):
        other.count_request("/webhooks/answer", "GET", "200")
    other.observe_webhook("answer", 0.002)
    one.publish()
    other.publish()
    one.count_request("/webhooks/answer", "GET", "200")  # live counts join what was published, never twice
    for metrics in (one, other):
        text = generate_latest(metrics.registry).decode()
        assert metric_value(text, 'dialbridge_http_requests_total{method="GET",route="/webhooks/answer",status="200"}')
        assert metric_value(text, 'dialbridge_webhook_seconds_count{webhook="answer"}') == 2
    assert (
        metric_value(
            generate_latest(one.registry).decode(),
            'dialbridge_http_requests_total{method="GET",route="/webhooks/answer",status="200"}',
        )
        == 6
    )
    assert (
        metric_value(
            generate_latest(other.registry).decode(),
            'dialbridge_http_requests_total{method="GET",route="/webhooks/answer",status="200"}',
        )
        == 5
    )  # one's last request is not published yet


def test_serve_with_two_workers_reports_every_workers_requests(tmp_path: Path) -> None:
    """A scrape lands on either worker; each must report the requests both answered."""
    with serving(tmp_path, "--workers", "2") as served:
        for n in range(20):  # a new connection each: they go to either worker
            url = f"{served.base}/webhooks/answer?uuid=w-{n}&from=447700900{n:03d}"
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
        time.sleep(2.5)  # each worker publishes about once a second
        for _ in range(6):
            with urllib.request.urlopen(f"{served.base}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert metric_value(text, 'dialbridge_webhook_seconds_count{webhook="answer"}') == 20


@pytest.mark.parametrize("command", [("serve",), ("doctor",), ("serve", "--workers", "2")])
def test_a_port_in_use_is_named_with_the_fix(command: tuple[str, ...], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"DIALBRIDGE_PORT": str(port)}
        if "--workers" in command:
            env.update(vonage_environment(tmp_path, port))
        result = run_cli(*command, tmp_path=tmp_path, **env)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr + result.stdout
    assert suggested_port(result.stderr + result.stdout, "PORT") > port  # the next free one (tests/test_doctor.py)


@pytest.mark.parametrize("command", ["serve", "doctor", "voice"])
def test_the_voice_engine_s_ports_in_use_are_named_together_with_the_fix(command: str, tmp_path: Path) -> None:
    """The voice engine needs its SIP port on UDP (and TCP) and its API port: a softphone or PBX holding one is
    named, with the fix, and both at once (fixing one only to be told of the next costs a round trip each)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, socket.socket() as api:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        api.bind(("127.0.0.1", 0))
        api.listen()
        api_port = api.getsockname()[1]
        with socket.socket() as web:
            web.bind(("127.0.0.1", 0))
            web_port = web.getsockname()[1]
        result = run_cli(
            command,
            tmp_path=tmp_path,
            DIALBRIDGE_SIP_PORT=str(port),
            DIALBRIDGE_VOICE_API_PORT=str(api_port),
            DIALBRIDGE_PORT=str(web_port),
        )
    assert result.returncode == 1
    said = result.stderr + result.stdout
    assert f"SIP port {port} on 127.0.0.1 is already in use" in said
    assert suggested_port(said, "SIP_PORT") > port
    assert f"voice API port {api_port} on 127.0.0.1 is already in use" in said
    assert suggested_port(said, "VOICE_API_PORT") > api_port


@pytest.mark.parametrize("command", ["serve", "doctor"])
def test_two_taken_ports_are_never_told_to_move_to_the_same_one(command: str, tmp_path: Path) -> None:
    """The voice engine's and the gateway's API ports both taken (a second `make run`): each is suggested a free
    port, and not the same one (a new user who followed both would collide again)."""
    while True:
        first, second = socket.socket(), socket.socket()
        try:
            first.bind(("127.0.0.1", 0))
            second.bind(("127.0.0.1", first.getsockname()[1] + 1))
            break
        except OSError:
            first.close()
            second.close()
    with first, second:
        first.listen()
        second.listen()
        port = first.getsockname()[1]
        result = run_cli(
            command,
            tmp_path=tmp_path,
            DIALBRIDGE_VOICE_API_PORT=str(port),
            DIALBRIDGE_GATEWAY_API_PORT=str(port + 1),
            DIALBRIDGE_PORT=str(free_port()),
        )
    said = result.stderr + result.stdout
    assert result.returncode == 1, said
    voice, gateway = suggested_port(said, "VOICE_API_PORT"), suggested_port(said, "GATEWAY_API_PORT")
    assert voice > port + 1 and gateway > port + 1
    assert voice != gateway, said


def post_then(client: TestClient, path: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """POST `path` straight into the ASGI app, its body arriving as `messages`; what the app sent back."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # the client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run_async(client.app(scope, receive, send))  # type: ignore[arg-type]
    return sent


def requests_counted(client: TestClient, route: str) -> dict[str, float]:
    text = client.get("/metrics").text
    prefix = f'dialbridge_http_requests_total{{method="POST",route="{route}",status="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


@pytest.mark.parametrize("route", ["/webhooks/input", "/api/rooms"])
def test_a_client_that_goes_away_mid_body_is_counted_as_499_not_as_a_client_error(
    client: TestClient, route: str
) -> None:
    """499 (nginx's "client closed request"): a dropped connection is not a bad request, and must not raise the
    4xx rate that tells the operator a caller sends broken ones."""
    sent = post_then(
        client, route, {"type": "http.request", "body": b'{"uu', "more_body": True}, {"type": "http.disconnect"}
    )

    assert requests_counted(client, route) == {"499": 1}
    if route.startswith("/webhooks/"):
        assert sent == []  # nobody to answer


def test_an_api_body_refused_as_it_grows_is_counted_as_the_413_it_got(client: TestClient) -> None:
    chunk = {"type": "http.request", "body": b" " * 40_000, "more_body": True}
    sent = post_then(client, "/api/rooms", chunk, chunk)

    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert requests_counted(client, "/api/rooms") == {"413": 1}


def test_an_api_body_refused_on_its_declared_length_is_counted_as_the_413_it_got(client: TestClient) -> None:
    """Refused before a byte of it is read, and before routing: still counted, under the route it was sent to."""
    response = client.post("/api/rooms", content=b" " * 100_000, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert requests_counted(client, "/api/rooms") == {"413": 1}
