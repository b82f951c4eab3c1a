"""`dialbridge serve` as a real process, for the tests that need one (several workers, signals, start-up)."""

from __future__ import annotations

import os
import re
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import page_config, phone_call_headers

DIALBRIDGE = str(Path(sys.executable).with_name("dialbridge"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vonage_environment(tmp_path: Path, port: int) -> dict[str, str]:
    """The Vonage backend (the one that may run several workers) with a locally made key: the webhooks never call
    Vonage, so made-up ids are enough."""
    key = tmp_path / "private.key"
    if not key.exists():
        key.write_bytes(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    env.update(
        DIALBRIDGE_BACKEND="vonage",
        DIALBRIDGE_VONAGE_APPLICATION_ID="00000000-0000-4000-8000-000000000000",
        DIALBRIDGE_VONAGE_PRIVATE_KEY=str(key),
        DIALBRIDGE_VONAGE_SIP_USERNAME="u",
        DIALBRIDGE_VONAGE_SIP_PASSWORD="p",
        DIALBRIDGE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
        DIALBRIDGE_PORT=str(port),
    )
    return env


def run_cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`dialbridge <args>` run to its end in `tmp_path`, with only the DIALBRIDGE_* settings given (and a database
    in `tmp_path` unless one is)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    clean.update({"DIALBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", **env})
    return subprocess.run(
        [DIALBRIDGE, *args], capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=60, check=False
    )


def suggested_port(said: str, setting: str) -> int:
    """The port a CLI message suggests instead of a taken one (`DIALBRIDGE_<setting>=<port>`)."""
    found = re.search(rf"DIALBRIDGE_{setting}=(\d+)", said)
    assert found, said
    return int(found.group(1))


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    log: Path | None = None  # where the server's stderr goes, when a file

    def wait_healthy(self) -> None:
        """Until /healthz answers 200; if it never does, say whether the server exited and what it printed."""
        try:
            wait_healthy(self.base, self.process)
        except AssertionError as exc:
            printed = self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else "(not kept)"
            raise AssertionError(f"{exc} (exit status {self.process.poll()}); it printed:\n{printed}") from None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """Process ids of the server's worker processes (its children but multiprocessing's resource tracker)."""
        return [pid for pid in children(self.process.pid) if b"resource_tracker" not in _command_line(pid)]


def patched_python(tmp_path: Path, sitecustomize: str) -> dict[str, str]:
    """The environment under which the processes a test starts run `sitecustomize` first (a patch of its own)."""
    patches = tmp_path / "patches"
    patches.mkdir(exist_ok=True)
    (patches / "sitecustomize.py").write_text(sitecustomize)
    return {"PYTHONPATH": str(patches)}


def exit_of(served: Served, timeout: float = 60) -> tuple[int, str]:
    """The exit code and stderr of a `serve` started with `stderr=subprocess.PIPE` that is expected to stop."""
    try:
        _out, err = served.process.communicate(timeout=timeout)
    finally:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGKILL)
    return served.process.returncode, str(err)


def start(tmp_path: Path, *args: str, stderr: Any = None, **env: str) -> Served:
    """`dialbridge serve`; its stderr goes to `stderr` if given, else to server.log in `tmp_path`."""
    port = free_port()
    log = None
    if stderr is None:
        log = tmp_path / "server.log"
        stderr = log.open("w")
    process = subprocess.Popen(
        [DIALBRIDGE, "serve", *args], env={**vonage_environment(tmp_path, port), **env}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True,
    )  # fmt: skip
    return Served(process, port, log)


def room_config(base: str, room: str) -> dict[str, Any]:
    """The room page's config (its tokens), as a browser opening `room` on the served server gets it."""
    with urllib.request.urlopen(f"{base}/room/{room}", timeout=10) as response:
        return page_config(response.read().decode())


def phone_headers(base: str) -> dict[str, str]:
    """The headers a browser phone sends with its calls, from `/phone` as the served server gives it."""
    with urllib.request.urlopen(f"{base}/phone", timeout=10) as response:
        return phone_call_headers(response.read().decode())


def start_embedded(tmp_path: Path, **env: str) -> Served:
    """`dialbridge serve` on the embedded backend (so with its voice engine), every port its own."""
    rtp, gateway_rtp = free_port() // 2 * 2, free_port() // 2 * 2
    while abs(gateway_rtp - rtp) < 4:
        gateway_rtp = free_port() // 2 * 2
    return start(
        tmp_path,
        DIALBRIDGE_BACKEND="embedded",
        DIALBRIDGE_SIP_PORT=str(free_port()),
        DIALBRIDGE_VOICE_API_PORT=str(free_port()),
        DIALBRIDGE_RTP_PORTS=f"{rtp}-{rtp + 3}",
        DIALBRIDGE_GATEWAY_SIP_PORT=str(free_port()),
        DIALBRIDGE_GATEWAY_API_PORT=str(free_port()),
        DIALBRIDGE_GATEWAY_RTP_PORTS=f"{gateway_rtp}-{gateway_rtp + 3}",
        DIALBRIDGE_VOICE_DIR=str(tmp_path / "voice"),
        **env,
    )


@contextmanager
def serving(tmp_path: Path, *args: str, **env: str) -> Iterator[Served]:
    with _healthy_until_stopped(start(tmp_path, *args, **env)) as served:
        yield served


@contextmanager
def serving_embedded(tmp_path: Path, **env: str) -> Iterator[Served]:
    with _healthy_until_stopped(start_embedded(tmp_path, **env)) as served:
        yield served


@contextmanager
def _healthy_until_stopped(served: Served) -> Iterator[Served]:
    try:
        served.wait_healthy()
        yield served
    finally:
        if served.process.poll() is None:
            os.killpg(served.process.pid, signal.SIGTERM)
            served.process.wait(timeout=30)


def wait_healthy(base: str, process: subprocess.Popen[Any] | None = None) -> None:
    for _ in range(150):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{base} exited before it became healthy")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{base} did not become healthy")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def server_side_connections(port: int) -> dict[str, int]:
    """The TCP connections open on the server's side of `port` (Linux /proc/net): socket inode -> client port."""
    connections = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                connections[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return connections


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` has open (none if it is gone)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def connections_held(pids: list[int], port: int) -> dict[int, int]:
    """How many of the server's TCP connections on `port` each process holds."""
    connections = server_side_connections(port)
    return {pid: len(socket_inodes(pid) & connections.keys()) for pid in pids}


def client_ports_held(pid: int, port: int) -> set[int]:
    """The client ports of the connections on `port` whose server side process `pid` holds."""
    connections = server_side_connections(port)
    return {connections[inode] for inode in socket_inodes(pid) & connections.keys()}
