"""`dialbridge serve` on the embedded backend as real processes (web server + voice engine), for tests with peers."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIALBRIDGE = str(Path(sys.executable).with_name("dialbridge"))
SECRET = "voice-engine-test-signature-secret"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP (SIP listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition` became true within `timeout` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@dataclass
class VoiceStack:
    process: subprocess.Popen[str]
    http_port: int
    sip_port: int
    log: Path
    api_port: int
    voice_dir: Path
    gateway_api_port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database(self) -> Path:
        """The stack's SQLite file (beside its log)."""
        return self.log.parent / "db.sqlite"

    @property
    def sip_target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        sent = headers or {"content-type": "application/json"}
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), headers=sent)
        with urllib.request.urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def room_api(self, config: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (no body) or POST `/api/rooms/{room}/{path}` with the room page's participant token; its JSON."""
        request = urllib.request.Request(
            f"{self.base}/api/rooms/{config['roomId']}/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {config['participantToken']}"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def new_room(self, room_id: str) -> str:
        """The PIN of a new room."""
        return str(self.post("/api/rooms", {"room_id": room_id})["pin"])

    def new_room_keying_a_digit_twice(self, prefix: str) -> tuple[str, str]:
        """(room id, PIN) of a new room whose PIN has the same digit twice in a row (PINs are random: a few tries),
        so a digit lost or repeated on its way makes the PIN wrong."""
        for attempt in range(60):
            room_id = f"{prefix}-{attempt}"
            pin = self.new_room(room_id)
            if any(a == b for a, b in itertools.pairwise(pin)):
                return room_id, pin
        raise AssertionError("60 random PINs without a digit twice in a row")


def options_ping(port: int, timeout: float = 0.3) -> bool:
    """True when a SIP OPTIONS to 127.0.0.1:port gets a 200."""
    unique = time.time_ns()
    message = (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-ping{unique}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: probe-{unique}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(message.encode(), ("127.0.0.1", port))
        try:
            data = s.recv(65535)
        except TimeoutError:
            return False
    return data.startswith(b"SIP/2.0 200")


@contextmanager
def voice_stack(tmp_path: Path, **env: str) -> Iterator[VoiceStack]:
    http_port, sip_port, api_port = free_port(), free_port(), free_port()
    gateway_sip_port, gateway_api_port = free_port(), free_port()
    rtp_low = 20000 + (sip_port % 200) * 100
    gateway_rtp_low = 42000 + (gateway_sip_port % 200) * 100
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    environment.update(
        DIALBRIDGE_BACKEND="embedded",
        DIALBRIDGE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
        DIALBRIDGE_PORT=str(http_port),
        DIALBRIDGE_SIP_PORT=str(sip_port),
        DIALBRIDGE_VOICE_API_PORT=str(api_port),
        DIALBRIDGE_VOICE_DIR=str(tmp_path / "voice"),
        DIALBRIDGE_RTP_PORTS=f"{rtp_low}-{rtp_low + 99}",
        DIALBRIDGE_GATEWAY_SIP_PORT=str(gateway_sip_port),
        DIALBRIDGE_GATEWAY_API_PORT=str(gateway_api_port),
        DIALBRIDGE_GATEWAY_RTP_PORTS=f"{gateway_rtp_low}-{gateway_rtp_low + 99}",
        DIALBRIDGE_SIGNATURE_SECRET=SECRET,
        DIALBRIDGE_PIN_INPUT_TIMEOUT_S="8",
        **env,
    )
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [DIALBRIDGE, "serve"], env=environment, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    stack = VoiceStack(process, http_port, sip_port, log, api_port, tmp_path / "voice", gateway_api_port)
    try:
        deadline = time.monotonic() + 60  # three processes start; aiortc alone takes a second to import
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dialbridge serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                health = stack.get("/healthz")
                engine, gateway = health.get("voice_engine", {}), health.get("gateway", {})
                if engine.get("status") == "ok" and gateway.get("status") == "ok" and options_ping(sip_port):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dialbridge did not start within 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield stack
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ---- the engine alone, driving an NCCO application of the test's own -------------------------------------------


@dataclass
class WebhookRequest:
    """One request the engine sent to an `NccoApp`, and whether it passed the app's signature verifier."""

    method: str
    path: str
    query: bytes
    body: bytes
    authorization: str | None
    verified: bool
    error: str | None
    at: float
    status: int = 200  # what the app answered

    @property
    def fields(self) -> dict[str, Any]:
        """The webhook's fields: the query's for a GET, the JSON body's for a POST."""
        if self.method == "GET":
            return dict(urllib.parse.parse_qsl(self.query.decode(), keep_blank_values=True))
        loaded: dict[str, Any] = json.loads(self.body) if self.body else {}
        return loaded


class NccoApp:
    """A Voice application on 127.0.0.1 for tests: answers `/answer` with `answer` (after `answer_delay_s`), any
    other path with `replies.get(path)` (none: an empty 200), and records every request with the verdict of
    dialbridge's own signature verifier (`WebhookSignatures(secret).verify`, the raw query string for a GET).
    `event_status` is the HTTP status `/events` answers with (set it to 503 for an application that is down)."""

    def __init__(
        self,
        answer: list[dict[str, Any]],
        *,
        answer_delay_s: float = 0.0,
        replies: dict[str, list[dict[str, Any]]] | None = None,
        secret: str = SECRET,
    ) -> None:
        from dialbridge.webhook_signing import SignatureError, WebhookSignatures

        self.answer = answer
        self.answer_delay_s = answer_delay_s
        self.replies = replies or {}
        self.requests: list[WebhookRequest] = []
        self.event_status = 200
        self._lock = threading.Lock()
        verifier = WebhookSignatures(secret)
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                authorization = self.headers.get("authorization")
                payload = query.encode() if self.command == "GET" else body
                try:
                    verifier.verify(authorization, payload, time.time())
                    verified, error = True, None
                except SignatureError as exc:
                    verified, error = False, str(exc)
                status = app.event_status if path == "/events" else 200
                record = WebhookRequest(
                    self.command, path, query.encode(), body, authorization, verified, error, time.monotonic(), status
                )
                with app._lock:
                    app.requests.append(record)
                if path == "/answer":
                    if app.answer_delay_s:
                        time.sleep(app.answer_delay_s)
                    reply: list[dict[str, Any]] | None = app.answer
                else:
                    reply = app.replies.get(path)
                content = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def env(self) -> dict[str, str]:
        """The settings that point the engine's answer and event webhooks here."""
        return {"DIALBRIDGE_VOICE_ANSWER_URL": self.url("/answer"), "DIALBRIDGE_VOICE_EVENT_URL": self.url("/events")}

    def recorded(self, path: str | None = None) -> list[WebhookRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def events(self, uuid: str | None = None) -> list[dict[str, Any]]:
        found = [r.fields for r in self.recorded("/events")]
        return [event for event in found if uuid is None or event.get("uuid") == uuid]

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        return wait_until(condition, timeout)

    def __enter__(self) -> NccoApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass
class VoiceEngineProcess:
    """`dialbridge voice` alone: SIP on 127.0.0.1:sip_port, webhooks wherever the test pointed them."""

    process: subprocess.Popen[str]
    sip_port: int
    rtp_ports: tuple[int, int]
    log: Path
    api_port: int = 0
    voice_dir: Path | None = None

    def metrics(self) -> str:
        """GET /metrics of the engine's HTTPS control API (its own CA, from its voice dir)."""
        from dialbridge.credentials import VoiceCredentials

        assert self.voice_dir is not None
        ca = VoiceCredentials.load_or_create(self.voice_dir).ca_bundle_path
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{self.api_port}/metrics"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            text: str = response.read().decode()
        return text

    @property
    def sip_target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def rss_kb(self) -> int:
        """The process's resident set size (VmRSS), in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def voice_engine(tmp_path: Path, *, sip_port: int | None = None, **env: str) -> Iterator[VoiceEngineProcess]:
    """Run `dialbridge voice` with a signature secret; `env` adds settings (e.g. `NccoApp.env`). The same `sip_port`
    and `tmp_path` make an engine the successor of an earlier one (its journal is per voice dir and SIP port)."""
    sip_port, api_port = sip_port or free_port(), free_port()
    rtp_low = 40000 + (sip_port % 200) * 100
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    environment.update(
        DIALBRIDGE_BACKEND="embedded",
        DIALBRIDGE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
        DIALBRIDGE_SIP_PORT=str(sip_port),
        DIALBRIDGE_VOICE_API_PORT=str(api_port),
        DIALBRIDGE_VOICE_DIR=str(tmp_path / "voice"),
        DIALBRIDGE_RTP_PORTS=f"{rtp_low}-{rtp_low + 99}",
        # The gateway's range must not overlap the engine's (a configuration problem the engine refuses).
        DIALBRIDGE_GATEWAY_RTP_PORTS=f"{rtp_low + 100}-{rtp_low + 199}",
        DIALBRIDGE_SIGNATURE_SECRET=SECRET,
        **env,
    )
    log = tmp_path / "voice.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [DIALBRIDGE, "voice"], env=environment, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    engine = VoiceEngineProcess(process, sip_port, (rtp_low, rtp_low + 99), log, api_port, tmp_path / "voice")
    try:
        deadline = time.monotonic() + 30
        while not options_ping(sip_port):
            if process.poll() is not None:
                raise AssertionError(f"dialbridge voice exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dialbridge voice did not start within 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield engine
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
