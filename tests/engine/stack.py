"""`dialbridge serve` on the embedded backend as real processes (web server + voice engine), for tests with peers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


@dataclass
class VoiceStack:
    process: subprocess.Popen[str]
    http_port: int
    sip_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def new_room(self, room_id: str) -> str:
        """The PIN of a new room."""
        return str(self.post("/api/rooms", {"room_id": room_id})["pin"])


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
    http_port, sip_port = free_port(), free_port()
    rtp_low = 20000 + (sip_port % 200) * 100
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    environment.update(
        DIALBRIDGE_BACKEND="embedded",
        DIALBRIDGE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
        DIALBRIDGE_PORT=str(http_port),
        DIALBRIDGE_SIP_PORT=str(sip_port),
        DIALBRIDGE_RTP_PORTS=f"{rtp_low}-{rtp_low + 99}",
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
    stack = VoiceStack(process, http_port, sip_port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dialbridge serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(stack.base + "/healthz", timeout=1):
                    pass
                if options_ping(sip_port):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dialbridge did not start within 30 s:\n{log.read_text()}")
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
