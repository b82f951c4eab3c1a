"""Benchmark: the answer, input and events webhooks, signature verification on, 1,000,000 rooms in SQLite.

    make bench                         # or: .venv/bin/python bench/webhooks.py --workers 2 --seconds 20
    .venv/bin/python bench/webhooks.py --cold --workers 1 --kinds input    # what `make run` ships, from its start

Seeds a fresh database with a million rooms (8-digit PINs, as the PIN policy gives at that size), starts
`dialbridge serve` with a signature secret, signs a pool of Vonage-shaped webhook requests (by default answer,
input and events in turn; of the inputs half carry a real PIN; the events alternate "answered" and "completed"
for the calls before them; `--kinds` picks some), warms the server up (unless `--cold`) until SQLite's
write-ahead log has reached its working size (`warm_up` says why), replays them with wrk at 32 connections and
prints requests/s and p50/p99 latency. Runs inside a private network namespace when it can (only loopback
traffic either way). `--backend embedded` starts what `make run` starts (the voice engine beside the web server).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dialbridge.conference.pins import PinPolicy
from dialbridge.store.database import create_db_engine, migrate
from dialbridge.webhook_signing import WebhookSignatures

HERE = Path(__file__).resolve().parent
SECRET = "bench-signature-secret-0123456789abcdef"


def seed(db_path: Path, rooms: int) -> list[str]:
    migrate(create_db_engine(f"sqlite:///{db_path}"))
    length = PinPolicy().length_for(rooms - 1)
    rng = random.Random(1)
    pins = [str(n).zfill(length) for n in rng.sample(range(10**length), rooms)]
    now = time.time()
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO rooms (room_id, pin, session_id, created_at) VALUES (?, ?, ?, ?)",
            ((f"room-{n}", pin, f"emb_bench_session_{n}", now) for n, pin in enumerate(pins)),
        )
    return pins


class FastSigner:
    """Tokens as `WebhookSignatures.sign` makes them (HS256, iat, exp, a jti of their own, payload_hash), signed
    with hmac directly: the server refuses a token it has seen, so every request of a run needs its own, and
    PyJWT's ~55 us a token would make signing the pool longer than the run."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        self._serial = 0

    def sign(self, payload: bytes, now: float) -> str:
        token = self._sign(payload, now)
        if self._serial == 1:  # the first token is checked by the server's own verifier: the two cannot drift apart
            WebhookSignatures(SECRET).verify(f"Bearer {token}", payload, now)
        return token

    def _sign(self, payload: bytes, now: float) -> str:
        self._serial += 1
        claims = {
            "iat": int(now), "exp": int(now) + 300, "jti": f"bench-{os.getpid()}-{self._serial}",
            "payload_hash": hashlib.sha256(payload).hexdigest(),
        }  # fmt: skip
        signing_input = f"{self._header}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{signing_input}.{_b64url(hmac.digest(self._key, signing_input.encode(), 'sha256'))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


KINDS = ("answer", "input", "events")


def signed_requests(
    path: Path, pins: list[str], count: int, first: int, signer: FastSigner, kinds: tuple[str, ...] = KINDS
) -> None:
    """`count` webhook requests, numbered from `first` (each its own call and caller), each signed afresh; the
    kinds in turn."""
    rng = random.Random(first)
    now = time.time()
    with path.open("w") as out:
        for n in range(first, first + count):
            caller = f"44770{n:07d}"
            uuid = f"bench-call-{n}"
            kind = kinds[n % len(kinds)]
            if kind == "events":
                status = "answered" if n % 2 else "completed"
                body = json.dumps(
                    {
                        "uuid": f"bench-call-{n - 1}", "conversation_uuid": f"CON-bench-call-{n - 1}",
                        "status": status, "direction": "inbound", "from": caller, "to": "14155550100",
                        "timestamp": "2026-11-29T12:00:00.000Z",
                        **({"duration": "42", "end_time": "2026-11-29T12:00:42.000Z"} if status == "completed" else {}),
                    },
                    separators=(",", ":"),
                )  # fmt: skip
                out.write(f"POST\t/webhooks/events\t{signer.sign(body.encode(), now)}\t{body}\n")
            elif kind == "answer":
                query = urlencode(
                    {"uuid": uuid, "conversation_uuid": "CON-" + uuid, "from": caller, "to": "14155550100"}
                )
                out.write(f"GET\t/webhooks/answer?{query}\t{signer.sign(query.encode(), now)}\t\n")
            else:
                digits = rng.choice(pins) if rng.random() < 0.5 else f"{rng.randrange(10**8):08d}"
                body = json.dumps(
                    {
                        "dtmf": {"digits": digits, "timed_out": False},
                        "uuid": uuid,
                        "conversation_uuid": "CON-" + uuid,
                        "from": caller,
                        "to": "14155550100",
                        "timestamp": "2026-11-29T12:00:00.000Z",
                    },
                    separators=(",", ":"),
                )
                out.write(f"POST\t/webhooks/input\t{signer.sign(body.encode(), now)}\t{body}\n")


class RequestPools:
    """A fresh pool of signed requests for each wrk run, large enough that none is sent twice (a replay would be
    refused with 401, cheaper than the work being measured, and counted as an error)."""

    def __init__(self, folder: Path, pins: list[str], per_second: int, kinds: tuple[str, ...] = KINDS) -> None:
        self.folder, self.pins, self.per_second, self.kinds = folder, pins, per_second, kinds
        self.signer = FastSigner(SECRET)
        self.made = 0

    def fresh(self, seconds: float) -> Path:
        path = self.folder / "requests.tsv"
        count = int(seconds * self.per_second)
        signed_requests(path, self.pins, count, self.made, self.signer, self.kinds)
        self.made += count
        return path


def install_baseline() -> None:
    """Express for the reference server, from npm (before the run moves into its network namespace)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node and npm are missing: the baseline needs Node.js (apt-get install nodejs npm)")
    if not (HERE / "baseline" / "node_modules" / "express").is_dir():
        subprocess.run(
            ["npm", "install", "--no-package-lock", "--no-audit", "--no-fund", "--silent"],
            cwd=HERE / "baseline",
            check=True,
        )


def baseline_command(work: Path, pins: list[str], port: int) -> list[str]:
    """The reference server: bench/baseline/server.js, with the same rooms in its in-memory map."""
    folder = HERE / "baseline"
    pins_file = work / "pins.txt"
    pins_file.write_text("".join(f"{pin} emb_bench_session_{n}\n" for n, pin in enumerate(pins)))
    return ["node", str(folder / "server.js"), str(port), str(pins_file)]


def server_cpu_seconds(leader: int) -> float:
    """CPU time (user + system) used so far by the server process and its workers (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # After the command name: state, ppid, pgrp, ...; utime and stime are the 12th and 13th fields.
        if int(fields[2]) == leader:  # the server was started in its own process group
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wrk_command(args: argparse.Namespace, base: str, pool: Path, seconds: int) -> list[str]:
    return [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
        "-s", str(HERE / "webhooks.lua"), base, "--", str(pool), str(args.threads),
    ]  # fmt: skip


def warm_up(
    args: argparse.Namespace, base: str, pools: RequestPools, wal: Path | None, step_s: int = 3, limit_s: int = 60
) -> None:
    """Load the server until SQLite's write-ahead log has started over once, i.e. reached its working size.

    After a start the log file grows until the server's checkpoints make SQLite start it over (about 270 MB
    here); while it grows, each commit's writes make the filesystem allocate and zero new blocks. Measured in
    4 s segments: ~216 us of server CPU per request while it grew, ~163 after. A server does this once per start;
    the benchmark measures the steady state after it, and says how long it took to get there."""
    started = time.monotonic()
    first = None
    while time.monotonic() - started < limit_s:
        subprocess.run(wrk_command(args, base, pools.fresh(step_s), step_s), capture_output=True, check=True)
        if wal is None:
            print(f"warm-up: {step_s} s", flush=True)
            return
        sequence = wal_checkpoint_sequence(wal)
        if first is None:
            first = sequence
        elif sequence != first:
            break
    size = wal.stat().st_size if wal.exists() else 0
    print(f"warm-up: {time.monotonic() - started:.0f} s, write-ahead log at {size / 2**20:.0f} MB", flush=True)


def wal_checkpoint_sequence(wal: Path) -> int | None:
    """The WAL header's checkpoint sequence number: it changes each time SQLite starts the log over."""
    try:
        with wal.open("rb") as log:
            header = log.read(16)
    except OSError:
        return None
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, deadline_s: float = 60) -> None:
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server did not become healthy at {url}")


def run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run `make test` once (it installs Debian's wrk) or apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="dialbridge-bench-"))
    db = work / "bench.db"
    started = time.monotonic()
    pins = seed(db, args.rooms)
    print(f"seeded {args.rooms:,} rooms in {time.monotonic() - started:.1f} s", flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Webhooks at scale are the Vonage deployment (the embedded backend serves its rooms from one process). The
    # webhooks never call Vonage, so a locally made key and made-up ids are enough to start it.
    key = work / "private.key"
    key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    env = {
        **os.environ,
        "DIALBRIDGE_BACKEND": args.backend,
        "DIALBRIDGE_VOICE_DIR": str(work / "voice"),
        "DIALBRIDGE_VONAGE_APPLICATION_ID": "00000000-0000-4000-8000-000000000000",
        "DIALBRIDGE_VONAGE_PRIVATE_KEY": str(key),
        "DIALBRIDGE_VONAGE_SIP_USERNAME": "bench",
        "DIALBRIDGE_VONAGE_SIP_PASSWORD": "bench",
        "DIALBRIDGE_DATABASE_URL": f"sqlite:///{db}",
        "DIALBRIDGE_SIGNATURE_SECRET": SECRET,
        "DIALBRIDGE_PORT": str(port),
        "DIALBRIDGE_PUBLIC_BASE_URL": "https://dialbridge.example.test",
    }
    if args.baseline:
        command_line = baseline_command(work, pins, port)
        subject = "Node/Express baseline (in-memory map, no signature check, no database)"
    else:
        command_line = [str(Path(sys.executable).with_name("dialbridge")), "serve", "--workers", str(args.workers)]
        subject = f"dialbridge backend={args.backend} workers={args.workers} signature=on db=sqlite"
    server = subprocess.Popen(
        command_line,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "server.log").open("w"),
        start_new_session=True,
    )
    try:
        wait_healthy(base)
        kinds = tuple(args.kinds.split(","))
        if not set(kinds) <= set(KINDS):
            raise SystemExit(f"--kinds takes some of {','.join(KINDS)}, not {args.kinds}")
        pools = RequestPools(work, pins, args.max_rate, kinds)
        if not args.cold:
            warm_up(args, base, pools, None if args.baseline else Path(f"{db}-wal"))  # the baseline has no database
        command = wrk_command(args, base, pools.fresh(args.seconds), args.seconds)
        cpu_before = server_cpu_seconds(server.pid)
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        server_cpu = server_cpu_seconds(server.pid) - cpu_before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    figures = dict(
        re.findall(r"(\w+)=(\d+)", "\n".join(line for line in result.stdout.splitlines() if line.startswith("RESULT")))
    )
    seconds = int(figures["duration_us"]) / 1e6
    errors = sum(int(figures[k]) for k in ("errors_status", "errors_connect", "errors_timeout"))
    start = "cold (measured from the first request)" if args.cold else "warmed up"
    print(f"{subject}; {start}; webhooks={args.kinds} rooms={args.rooms:,} connections={args.connections} "
          f"wrk_threads={args.threads}")  # fmt: skip
    print(f"requests/s: {int(figures['requests']) / seconds:,.0f}  ({figures['requests']} in {seconds:.1f} s)")
    print(
        f"latency: p50 {int(figures['p50_us']) / 1000:.2f} ms  p90 {int(figures['p90_us']) / 1000:.2f} ms  "
        f"p99 {int(figures['p99_us']) / 1000:.2f} ms  max {int(figures['max_us']) / 1000:.2f} ms"
    )
    print(f"error answers (4xx/5xx), failed or timed-out requests: {errors}")
    # On a shared machine a slow run is often a starved one: say how much CPU the server actually had.
    print(
        f"server CPU: {server_cpu / seconds:.2f} of {os.cpu_count()} cores, "
        f"{1e6 * server_cpu / int(figures['requests']):.0f} us per request"
    )
    if errors:
        log = (work / "server.log").read_text().splitlines()
        print("server log (last error lines):", *[line for line in log if "rror" in line][-5:], sep="\n  ")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    # One wrk thread drives ~21,000 req/s against a bare ASGI app here; on a 2-core machine shared with the server
    # a second thread only takes CPU from what is being measured.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--max-rate", type=int, default=40_000,
        help="requests a second the signed pools are sized for (each request is sent once; default 40,000)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=("vonage", "embedded"), default="vonage",
        help="vonage (default: webhooks at scale) or embedded (make run's, with its voice engine)",
    )  # fmt: skip
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="the webhooks to send, in turn (default answer,input,events)"
    )
    parser.add_argument(
        "--cold", action="store_true",
        help="no warm-up: measure from the server's first request, as a freshly started `make run` serves",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", action="store_true", help="measure the Node/Express reference instead (npm installs express)"
    )
    args = parser.parse_args()
    if args.baseline:
        install_baseline()
    if os.environ.get("DIALBRIDGE_BENCH_NETNS") != "1" and shutil.which("unshare") and os.geteuid() == 0:
        # Re-run inside a private network namespace holding only loopback.
        argv = " ".join([sys.executable, *map(str, sys.argv)])
        os.execvp(
            "unshare", ["unshare", "-n", "sh", "-c", f"ip link set lo up && DIALBRIDGE_BENCH_NETNS=1 exec {argv}"]
        )
    run(args)


if __name__ == "__main__":
    main()
