"""The voice engine under load: N SIPp callers in conferences, against the real `dialbridge voice` process.

Run (as root; the bench moves itself into a private network namespace with only `lo`):
    .venv/bin/python bench/voice.py --calls 50,100,200,400 --seconds 20 --conference-size 5

What runs, per N, from scratch (a new engine process each time, with its defaults, measured from its first second):
- `taskset -c 0 dialbridge voice` (SIP on 127.0.0.1:5060, RTP 30000-39999: the defaults), driving bench/voice_app.py
  (core 1): talk "Welcome. Please enter the PIN…" with barge-in, input (# submits), then conversation room-<PIN>.
- One SIPp per room (core 1), `-m 5 -l 5`: each call INVITEs, waits 1 s into the prompt, plays a pcap with the room's
  PIN and # as RFC 4733 digits, then a tone for the rest of the run, and hangs up. Rooms start one after the other
  at --rate calls a second overall. Each room's SIPp uses its own address (127.0.1.<room>): the engine refuses more
  than 120 INVITEs a minute from one address by default, and real callers come from many.
- During the ramp, an AF_PACKET capture on `lo` (kernel timestamps) times each caller's set-up: INVITE → the first
  non-silent RTP packet the engine sends it (the prompt), and its last digit's first RFC 4733 end packet → the first
  non-silent packet after it (the conference: the join tone or another caller's tone; a room's first caller has
  nobody to hear yet and is left out). The capture stops before the steady-state window, so it costs nothing there.
- Steady state, once every caller has joined: --seconds of engine CPU (/proc/<pid>/stat), tick lateness and skipped
  ticks (the engine's SIGUSR1 stats line: a cumulative histogram, differenced over the window), RTP in/out against
  the 50 packets a second each way a G.711 caller makes, and datagrams lost on the way in (the engine's sockets'
  drop counters in /proc/net/udp, late packets in the jitter buffers).
- Where the engine's time went (its own perf_counter split, from the stats line: receive, timers, media, send, SIP,
  and the rest), and right after each N's window the floor: bench/floor.py, a bare uvloop relay on the engine's core
  moving the same packets (per caller 50 reads and 50 sends a second, nothing else), and the engine's cost as a
  multiple of it: the figure that holds from one machine to the next.
--profile N records the engine with py-spy (non-blocking, on core 1) during that N's window and prints the top
functions by own time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.engine import sipp  # noqa: E402 - the repository's own SIPp and pcap helpers
from tests.engine.rtp_media import RtpStream, tone  # noqa: E402
from tests.engine.stack import options_ping  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
ENGINE_CORE, PEER_CORE = 0, 1
SIP_PORT = 5060
RTP_LOW, RTP_HIGH = 30000, 39999  # the engine's default DIALBRIDGE_RTP_PORTS
APP_PORT = 8390
SIPP_SIP_PORT = 5070
SIPP_MEDIA_PORT = 40000
PAUSE_BEFORE_DIGITS_MS = 1000  # the caller hears a second of the prompt, then keys over it (barge-in)
SIPP_CALL_RATE = 10  # calls a second within one room's SIPp (its default): a room's 5 callers join 100 ms apart
LOUD = 300  # |sample| above this is audio, not silence (the prompt's speech and the tones are far louder)
NETNS_FLAG = "DIALBRIDGE_BENCH_NETNS"
STATS_LINE = re.compile(r"voice engine stats (\{.*\})")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_S = 0.020


# ---- the private network namespace -------------------------------------------------------------------------------


def ensure_private_network() -> None:
    """Re-exec under `unshare -n` unless already in a namespace whose only interface is lo."""
    if os.environ.get(NETNS_FLAG) == "1" and _interfaces() == ["lo"]:
        return
    if os.environ.get(NETNS_FLAG) == "1":
        sys.exit(f"expected a network namespace with only lo, found {_interfaces()}")
    if os.geteuid() != 0:
        sys.exit(f"{sys.argv[0]} needs root: it runs in a private network namespace (unshare -n) and captures on lo")
    env = {**os.environ, NETNS_FLAG: "1"}
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    os.execvpe("unshare", command, env)


def _interfaces() -> list[str]:
    # /proc/net/dev is per network namespace (/sys/class/net is the mount's, which unshare -n does not change).
    return sorted(line.split(":", 1)[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])


# ---- the capture: set-up latencies ---------------------------------------------------------------------------------

SO_ATTACH_FILTER, SO_RCVBUFFORCE, SO_TIMESTAMPNS = 26, 33, 35
PACKET_OUTGOING = 4


def _bpf_outgoing_udp() -> list[tuple[int, int, int, int]]:
    # Keep each datagram once (lo shows it outgoing and incoming) and only UDP, in the kernel: the capture thread
    # then sees a quarter of what crosses lo, so it keeps up at N=400 (~40,000 datagrams a second at the ramp's end).
    return [
        (0x20, 0, 0, 0xFFFFF000 + 4),  # ld pkttype (SKF_AD_OFF + SKF_AD_PKTTYPE)
        (0x15, 0, 3, PACKET_OUTGOING),  # jeq outgoing, else drop
        (0x30, 0, 0, 14 + 9),  # ldb IPv4 protocol
        (0x15, 0, 1, 17),  # jeq UDP, else drop
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    ]


def _loud_table(codec: str) -> bytes:
    from dialbridge.media import g711

    decoded = g711.decode(codec, bytes(range(256)))
    return bytes(1 if abs(int(v)) > LOUD else 0 for v in decoded)


@dataclass
class Caller:
    room: str  # the SIPp's address
    invite_at: float
    answered_at: float | None = None  # the 200 OK to the INVITE
    prompt_at: float | None = None  # the first non-silent packet the engine sent it
    hash_at: float | None = None  # the first end packet of its last digit (#)
    conference_at: float | None = None  # the first non-silent packet after that


class LoopbackTap:
    """Every UDP datagram leaving on lo (each once), read in a thread and timed by the kernel (CLOCK_REALTIME, as
    time.time()), so a busy thread does not skew the times; each goes to `_datagram`."""

    def __init__(self, buffer_bytes: int = 256 * 1024 * 1024) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        program = b"".join(struct.pack("HBBI", *op) for op in _bpf_outgoing_udp())
        self._program = ctypes.create_string_buffer(program)
        fprog = struct.pack("HQ", len(_bpf_outgoing_udp()), ctypes.addressof(self._program))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._thread.join()
            self._sock.close()

    def _run(self) -> None:
        ancillary = socket.CMSG_SPACE(16)
        sock = self._sock
        while self._running:
            try:
                frame, cmsgs, _, _ = sock.recvmsg(2048, ancillary)
            except TimeoutError:
                continue
            at = time.time()
            for level, kind, data in cmsgs:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", data[:16])
                    at = seconds + nanoseconds / 1e9
            ip = frame[14:]
            header = (ip[0] & 0x0F) * 4
            src_port, dst_port = struct.unpack_from("!HH", ip, header)
            payload = ip[header + 8 :]
            src_ip = socket.inet_ntoa(ip[12:16])
            dst_ip = socket.inet_ntoa(ip[16:20])
            self._datagram(at, src_ip, src_port, dst_ip, dst_port, payload)

    def _datagram(self, at: float, src_ip: str, src_port: int, dst_ip: str, dst_port: int, payload: bytes) -> None:
        raise NotImplementedError


class SetupCapture(LoopbackTap):
    """Follows every call's set-up on lo."""

    def __init__(self) -> None:
        self.callers: dict[tuple[str, int], Caller] = {}
        self.by_call_id: dict[bytes, Caller] = {}
        self.datagrams = 0
        self._loud = {0: _loud_table("PCMU"), 8: _loud_table("PCMA")}
        super().__init__()

    def _datagram(self, at: float, src_ip: str, src_port: int, dst_ip: str, dst_port: int, payload: bytes) -> None:
        self.datagrams += 1
        if RTP_LOW <= src_port <= RTP_HIGH and len(payload) > 12:  # the engine's media to a caller
            caller = self.callers.get((dst_ip, dst_port))
            if caller is None:
                return
            table = self._loud.get(payload[1] & 0x7F)
            if table is None:
                return
            if caller.prompt_at is None:
                if 1 in payload[12:].translate(table):
                    caller.prompt_at = at
            elif (
                caller.hash_at is not None
                and caller.conference_at is None
                and at > caller.hash_at
                and 1 in payload[12:].translate(table)
            ):
                caller.conference_at = at
            return
        if RTP_LOW <= dst_port <= RTP_HIGH and len(payload) >= 16:  # a caller's media to the engine
            caller = self.callers.get((src_ip, src_port))
            # RFC 4733 telephone-event 101: event 11 (#) with the end bit.
            if (
                caller is not None
                and caller.hash_at is None
                and payload[1] & 0x7F == 101
                and payload[12] == 11
                and payload[13] & 0x80
            ):
                caller.hash_at = at
            return
        if dst_port == SIP_PORT and payload.startswith(b"INVITE "):
            media = re.search(rb"\nm=audio (\d+)", payload)
            call_id = re.search(rb"\nCall-ID:\s*(\S+)", payload, re.IGNORECASE)
            if media is None or call_id is None or call_id.group(1) in self.by_call_id:
                return  # a retransmission: the first INVITE is the one the caller waits from
            caller = Caller(room=src_ip, invite_at=at)
            self.callers[(src_ip, int(media.group(1)))] = caller
            self.by_call_id[call_id.group(1)] = caller
        elif src_port == SIP_PORT and payload.startswith(b"SIP/2.0 200") and b" INVITE\r\n" in payload:
            call_id = re.search(rb"\nCall-ID:\s*(\S+)", payload, re.IGNORECASE)
            found = self.by_call_id.get(call_id.group(1)) if call_id else None
            if found is not None and found.answered_at is None:
                found.answered_at = at


# ---- processes -----------------------------------------------------------------------------------------------------


def pinned(core: int, *command: str) -> list[str]:
    return ["taskset", "-c", str(core), *command]


def start_app(folder: Path) -> subprocess.Popen[str]:
    out = (folder / "app.log").open("w")
    app = subprocess.Popen(
        pinned(PEER_CORE, str(VENV_BIN / "python"), str(REPO / "bench" / "voice_app.py"), "--port", str(APP_PORT)),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", APP_PORT), timeout=0.2):
            return app
        time.sleep(0.05)
    raise RuntimeError("bench/voice_app.py did not start")


def start_engine(folder: Path, nice: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALBRIDGE_")}
    env.update(
        DIALBRIDGE_BACKEND="embedded",
        DIALBRIDGE_DATABASE_URL=f"sqlite:///{folder}/db.sqlite",
        DIALBRIDGE_VOICE_ANSWER_URL=f"http://127.0.0.1:{APP_PORT}/answer",
        DIALBRIDGE_VOICE_EVENT_URL=f"http://127.0.0.1:{APP_PORT}/event",
    )  # everything else (SIP port, RTP ports, limits) at its default
    log = (folder / "engine.log").open("w")
    engine = subprocess.Popen(
        # --nice (a diagnostic, off by default) raises the engine's CPU share against other load on its core: the
        # difference to a default run is what that load cost, not a property of the engine.
        pinned(ENGINE_CORE, *(["nice", "-n", str(nice)] if nice else []), str(VENV_BIN / "dialbridge"), "voice"),
        env=env,
        cwd=folder,  # no .env of the repository's
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not options_ping(SIP_PORT):
        if engine.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dialbridge voice did not start:\n{(folder / 'engine.log').read_text()[-3000:]}")
        time.sleep(0.05)
    return engine


def room_pcap(folder: Path, room: int, pin: str, tone_s: float) -> tuple[Path, float]:
    """The room's caller audio: 200 ms of silence, PIN and # as RFC 4733, then the room's tone. (path, seconds)."""
    media = RtpStream(ssrc=0x5000 + room)
    media.silence(0.2)
    for digit in pin + "#":
        media.rfc4733(digit)
    digits_s = media.at
    media.audio(tone([300.0 + 7.0 * room], tone_s, level=0.2))
    return media.write_pcap(folder / f"room{room}.pcap"), digits_s


def start_room(
    folder: Path, room: int, pcap: Path, pcap_s: float, timeout_s: int, media_port: int = SIPP_MEDIA_PORT
) -> subprocess.Popen[str]:
    address = f"127.0.1.{room + 1}"
    # [auto_media_port]: each of the process's calls offers its own media port, so the capture can tell them apart.
    invite = sipp.invite(caller=f"+1555{room:04d}000").replace("[media_port]", "[auto_media_port]")
    xml = sipp.scenario(
        invite,
        sipp.ANSWERED,
        sipp.ACK,
        sipp.pause(PAUSE_BEFORE_DIGITS_MS),
        sipp.play(pcap),
        sipp.pause(int(pcap_s * 1000) + 200),
        sipp.BYE,
        name=f"room {room}",
    )
    scenario = folder / f"room{room}.xml"
    scenario.write_text(xml)
    command = [
        sipp.SIPP or "sipp", f"127.0.0.1:{SIP_PORT}", "-sf", str(scenario), "-s", "dialin",
        "-i", address, "-p", str(SIPP_SIP_PORT), "-mi", address, "-mp", str(media_port),
        "-m", "5", "-l", "5", "-r", str(SIPP_CALL_RATE), "-t", "u1",
        "-timeout", f"{timeout_s}s", "-timeout_error", "-trace_err", "-error_file", str(folder / f"room{room}.err"),
        "-trace_stat", "-stf", str(folder / f"room{room}.csv"), "-fd", "1",
        "-nostdin",
    ]  # fmt: skip
    return subprocess.Popen(
        pinned(PEER_CORE, *command), cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def runqueue_wait_s(pid: int) -> float:
    """Time the engine's threads spent runnable but waiting for the core (/proc/<pid>/task/*/schedstat): how much
    something else on core 0 (another engineer's tests, say) took from it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def core_times(core: int) -> tuple[float, float, float]:
    """(busy, softirq, steal) seconds of one core since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) / CLK_TCK for v in line.split()[1:9])
            return user + nice + system + irq + softirq + steal, softirq, steal
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to limit_s) until the machine is idle enough that what we measure is the engine, not someone else's
    tests: less than `threshold` of a core busy over a second. Returns the busy share seen last."""
    deadline = time.monotonic() + limit_s
    while True:
        before = sum(core_times(core)[0] for core in (ENGINE_CORE, PEER_CORE))
        time.sleep(1.0)
        busy = sum(core_times(core)[0] for core in (ENGINE_CORE, PEER_CORE)) - before
        if busy < threshold or time.monotonic() > deadline:
            return busy
        print(f"  waiting for a quiet machine ({busy:.0%} of a core busy)", file=sys.stderr, flush=True)
        time.sleep(4.0)


def cpu_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


FLOOR_BASE_PORT, FLOOR_SINK_PORT = 30000, 29990  # the engine's RTP range, free once its window is over


def floor_share(n: int, seconds: float) -> float:
    """% of a core a bare uvloop relay (bench/floor.py) takes on the engine's core to move N callers' packets."""
    script = str(REPO / "bench" / "floor.py")
    args = [str(n), str(FLOOR_BASE_PORT), str(FLOOR_SINK_PORT)]
    relay = subprocess.Popen(
        pinned(ENGINE_CORE, str(VENV_BIN / "python"), script, "relay", *args), stdout=subprocess.PIPE, text=True
    )
    load = subprocess.Popen(
        pinned(PEER_CORE, str(VENV_BIN / "python"), script, "load", *args), stdout=subprocess.PIPE, text=True
    )
    try:
        for process in (relay, load):
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("bench/floor.py did not start")
        time.sleep(2.0)  # past start-up
        user0, system0 = cpu_seconds(relay.pid)
        at0 = time.monotonic()
        time.sleep(seconds)
        user1, system1 = cpu_seconds(relay.pid)
        return (user1 + system1 - user0 - system0) / (time.monotonic() - at0) * 100
    finally:
        for process in (relay, load):
            process.kill()
            process.wait()


def engine_socket_drops() -> int:
    """Datagrams the kernel dropped on the engine's RTP/RTCP sockets (a full receive buffer), from /proc/net/udp."""
    drops = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        parts = line.split()
        local_ip, local_port = parts[1].split(":")
        if local_ip == "0100007F" and RTP_LOW <= int(local_port, 16) <= RTP_HIGH:
            drops += int(parts[12])
    return drops


def engine_stats(engine: subprocess.Popen[str], log: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask for the engine's stats line (SIGUSR1) and wait for it in its log."""
    before = len(STATS_LINE.findall(log.read_text(errors="replace")))
    engine.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = STATS_LINE.findall(log.read_text(errors="replace"))
        if len(found) > before:
            result: dict[str, Any] = json.loads(found[-1])
            return result
        time.sleep(0.02)
    raise RuntimeError("the engine did not log its stats after SIGUSR1")


def stop(process: subprocess.Popen[str], timeout: float = 10.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# ---- one N ---------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    calls: int
    window_s: float
    cpu_user_s: float
    cpu_system_s: float
    ticks: int
    ticks_skipped: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    rtp_in: int
    rtp_out: int
    socket_drops: int
    jitter_late: int
    jitter_lost: int
    jitter_concealed: int
    prompt_ms: list[float]
    conference_ms: list[float]
    answer_ms: list[float]
    setup_missing: int  # callers the capture did not see through their set-up
    calls_failed: int  # per SIPp: calls that did not complete
    calls_refused: dict[str, int]
    app_requests: dict[str, int]
    runqueue_wait_s: float  # the engine runnable, waiting for its core
    core_other_s: float  # core 0 busy with anything but the engine's own user/system time (softirq and steal too)
    core_softirq_s: float
    core_steal_s: float
    quiet_before: float  # share of a core busy on the machine just before this N started
    profile_ramp: list[tuple[str, float]] = field(default_factory=list)
    profile_window: list[tuple[str, float]] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)  # the engine's own split of the window (StageSeconds)
    floor_share: float = 0.0  # % of a core bench/floor.py's bare relay takes for the same N, right after


STAGES = ("receive", "timers", "media", "send", "sip")  # the engine's StageSeconds, as its stats line gives them


def histogram_percentiles(start: dict[str, int], end: dict[str, int]) -> tuple[float, float, float, int]:
    window = Counter({int(k): v for k, v in end.items()})
    window.subtract(Counter({int(k): v for k, v in start.items()}))
    buckets = sorted((b, n) for b, n in window.items() if n > 0)
    total = sum(n for _, n in buckets)
    if not total:
        return 0.0, 0.0, 0.0, 0

    def percentile(share: float) -> float:
        seen = 0
        for bucket, n in buckets:
            seen += n
            if seen >= share * total:
                return (bucket + 1) / 10  # the bucket's upper edge: never flatters
        return (buckets[-1][0] + 1) / 10

    return percentile(0.5), percentile(0.99), (buckets[-1][0] + 1) / 10, total


def run_one(n: int, args: argparse.Namespace, root: Path) -> Result:
    folder = root / f"n{n}"
    folder.mkdir()
    size = args.conference_size
    rooms = math.ceil(n / size)
    spacing = size / args.rate  # seconds between two rooms' first INVITEs
    pins = [f"{(room * 7919 + 123457) % 1000000:06d}" for room in range(rooms)]
    # Every caller has joined by join_done (relative to the first room's start); the window follows, then the tones
    # end and the callers hang up.
    _, digits_s = room_pcap(folder, 0, pins[0], 0.1)
    last_start = (rooms - 1) * spacing
    join_done = last_start + (size - 1) / SIPP_CALL_RATE + PAUSE_BEFORE_DIGITS_MS / 1000 + digits_s + 2.0
    window_end = join_done + args.seconds
    pcaps = []
    for room in range(rooms):
        tone_s = window_end + 1.5 - (room * spacing + PAUSE_BEFORE_DIGITS_MS / 1000 + digits_s)
        pcaps.append(room_pcap(folder, room, pins[room], tone_s))

    quiet = wait_for_quiet(args.quiet_wait)
    app = start_app(folder)
    engine = start_engine(folder, args.nice)
    log = folder / "engine.log"
    capture = SetupCapture()
    # py-spy's SIGINT ends a recording early and still writes it: the ramp's profile stops when the window begins.
    ramp_profiler = _profiler(engine.pid, folder / "profile-ramp.txt", 600) if n in args.profile else None
    t0 = time.monotonic()
    callers: list[subprocess.Popen[str]] = []
    timeout_s = int(window_end + 30)
    try:
        for room in range(rooms):
            delay = t0 + room * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pcap, _ = pcaps[room]
            pcap_s = _pcap_seconds(pcap)
            room_folder = folder / f"room{room}"
            room_folder.mkdir()
            callers.append(start_room(room_folder, room, pcap, pcap_s, timeout_s))
        time.sleep(max(0.0, t0 + join_done - time.monotonic()))
        capture.stop()
        if ramp_profiler is not None:
            ramp_profiler.send_signal(signal.SIGINT)
            ramp_profiler.wait(timeout=15)
        profiler = _profiler(engine.pid, folder / "profile-window.txt", args.seconds) if n in args.profile else None
        wait0, core0 = runqueue_wait_s(engine.pid), core_times(ENGINE_CORE)
        cpu0, stats0, drops0 = cpu_seconds(engine.pid), engine_stats(engine, log), engine_socket_drops()
        at0 = time.monotonic()
        time.sleep(max(0.0, t0 + window_end - time.monotonic()))
        cpu1, stats1, drops1 = cpu_seconds(engine.pid), engine_stats(engine, log), engine_socket_drops()
        at1 = time.monotonic()
        wait1, core1 = runqueue_wait_s(engine.pid), core_times(ENGINE_CORE)
        if profiler is not None:
            profiler.wait(timeout=30)
        failed = 0
        for index, process in enumerate(callers):
            try:
                code = process.wait(timeout=max(5.0, t0 + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0:
                failed += _failed_calls(folder / f"room{index}", index, min(size, n - index * size))
    finally:
        with contextlib.suppress(Exception):
            capture.stop()
        for process in callers:
            if process.poll() is None:
                process.kill()
                process.wait()
        stop(engine)
        stop(app)
    app_line = (folder / "app.log").read_text().strip().splitlines()
    app_requests = json.loads(app_line[-1])["requests"] if app_line else {}

    p50, p99, late_max, ticks = histogram_percentiles(stats0["late_histogram_0_1ms"], stats1["late_histogram_0_1ms"])
    prompt, conference, answer, missing = _setup_latencies(capture, n)
    return Result(
        calls=n,
        window_s=at1 - at0,
        cpu_user_s=cpu1[0] - cpu0[0],
        cpu_system_s=cpu1[1] - cpu0[1],
        ticks=ticks,
        ticks_skipped=stats1["ticks_skipped"] - stats0["ticks_skipped"],
        late_p50_ms=p50,
        late_p99_ms=p99,
        late_max_ms=late_max,
        rtp_in=stats1["rtp_in"] - stats0["rtp_in"],
        rtp_out=stats1["rtp_out"] - stats0["rtp_out"],
        socket_drops=drops1 - drops0,
        jitter_late=stats1["live_calls_rtp"]["late_dropped"] - stats0["live_calls_rtp"]["late_dropped"],
        jitter_lost=stats1["live_calls_rtp"]["packets_lost"] - stats0["live_calls_rtp"]["packets_lost"],
        jitter_concealed=stats1["live_calls_rtp"]["frames_concealed"] - stats0["live_calls_rtp"]["frames_concealed"],
        prompt_ms=prompt,
        conference_ms=conference,
        answer_ms=answer,
        setup_missing=missing,
        calls_failed=failed,
        calls_refused=stats1["refused"],
        app_requests=app_requests,
        runqueue_wait_s=wait1 - wait0,
        core_other_s=(core1[0] - core0[0]) - (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]),
        core_softirq_s=core1[1] - core0[1],
        core_steal_s=core1[2] - core0[2],
        quiet_before=quiet,
        stages_s={
            stage: stats1.get("stages_s", {}).get(stage, 0.0) - stats0.get("stages_s", {}).get(stage, 0.0)
            for stage in STAGES
        },
        profile_ramp=_top_functions(folder / "profile-ramp.txt") if n in args.profile else [],
        profile_window=_top_functions(folder / "profile-window.txt") if n in args.profile else [],
    )


def _profiler(pid: int, output: Path, seconds: float) -> subprocess.Popen[str]:
    # Non-blocking: py-spy reads the engine's memory without stopping it, so the clock keeps its timing.
    return subprocess.Popen(
        pinned(PEER_CORE, str(VENV_BIN / "py-spy"), "record", "--nonblocking", "-r", "100", "-f", "raw",
               "-d", str(max(1, int(seconds))), "-o", str(output), "-p", str(pid)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _pcap_seconds(pcap: Path) -> float:
    data = pcap.read_bytes()
    first = last = None
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, offset)
        at = seconds + micros / 1e6
        first = at if first is None else first
        last = at
        offset += 16 + length
    return (last or 0.0) - (first or 0.0)


def _failed_calls(folder: Path, room: int, size: int) -> int:
    """Failed calls of a room's SIPp, from its statistics file if it wrote one, else the whole room."""
    rows = (
        [line.split(";") for line in (folder / f"room{room}.csv").read_text().splitlines()]
        if (folder / f"room{room}.csv").exists()
        else []
    )
    if len(rows) < 2 or "FailedCall(C)" not in rows[0]:
        return size
    column = rows[0].index("FailedCall(C)")
    failed = int(rows[-1][column])
    successful = int(rows[-1][rows[0].index("SuccessfulCall(C)")])
    return max(failed, size - successful)


def _setup_latencies(capture: SetupCapture, n: int) -> tuple[list[float], list[float], list[float], int]:
    prompt, conference, answer = [], [], []
    by_room: dict[str, list[Caller]] = {}
    for caller in capture.callers.values():
        by_room.setdefault(caller.room, []).append(caller)
        if caller.prompt_at is not None:
            prompt.append((caller.prompt_at - caller.invite_at) * 1000)
        if caller.answered_at is not None:
            answer.append((caller.answered_at - caller.invite_at) * 1000)
    for members in by_room.values():
        keyed = sorted((c for c in members if c.hash_at is not None), key=lambda c: c.hash_at or 0.0)
        for caller in keyed[1:]:  # the first to key has nobody to hear yet
            if caller.conference_at is not None and caller.hash_at is not None:
                conference.append((caller.conference_at - caller.hash_at) * 1000)
    expected_conference = n - len(by_room)
    missing = (n - len(prompt)) + max(0, expected_conference - len(conference))
    return prompt, conference, answer, missing


def _top_functions(path: Path, count: int = 20) -> list[tuple[str, float]]:
    """py-spy's raw (collapsed) stacks → the functions with the most own samples (all lines of a function together),
    as a share of the busy samples (py-spy leaves out a thread waiting in epoll); uvloop is native, so its own work
    (callback dispatch, timers, the SIP transports) shows as `Runner.run` itself."""
    if not path.exists():
        return []
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += int(samples)
        leaf = frames[-1]
        own["uvloop C code (native, below Runner.run)" if leaf.startswith("Runner.run ") else leaf] += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    if not total:
        return []
    top = [(frame, n / total * 100) for frame, n in own.most_common(count)]
    wanted = ("VoiceEngine.tick", "VoiceEngine._mix", "VoiceServer._flush", "UdpMediaPorts._drain")
    top += [(f"[inclusive] {frame}", n / total * 100) for frame, n in inclusive.items() if frame.startswith(wanted)]
    return top


# ---- output --------------------------------------------------------------------------------------------------------


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]

    return f"{at(0.5):.0f}/{at(0.99):.0f}/{ordered[-1]:.0f}"


def report(results: list[Result], args: argparse.Namespace, started: datetime) -> str:
    lines = [
        f"bench/voice.py — {started:%Y-%m-%d %H:%M:%S} UTC",
        "command: " + " ".join([sys.executable, *sys.argv]),
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; engine on core {ENGINE_CORE}, SIPp + app + capture on "
        f"core {PEER_CORE}; conferences of {args.conference_size}, ramp {args.rate:g} calls/s, "
        f"window {args.seconds:g} s" + (f"; DIAGNOSTIC: engine under nice -n {args.nice}" if args.nice else ""),
        "",
        "steady state (every caller in its conference, each sending 50 pkt/s and expecting 50 pkt/s)",
        f"{'N':>5} {'CPU %core':>9} {'%/caller':>8} {'µs/caller/tick':>14} {'usr/sys s':>10} "
        f"{'late p50/p99/max ms':>20} {'ticks':>6} {'skipped':>7} {'in/s/caller':>11} {'out/s/caller':>12} "
        f"{'sock drop':>9} {'jb late':>7} {'lost':>6} {'concealed':>9}",
    ]
    for r in results:
        cpu = r.cpu_user_s + r.cpu_system_s
        share = cpu / r.window_s * 100
        lines.append(
            f"{r.calls:>5} {share:>9.1f} {share / r.calls:>8.3f} {cpu / r.calls / (r.window_s / TICK_S) * 1e6:>14.1f} "
            f"{r.cpu_user_s:>4.1f}/{r.cpu_system_s:<5.1f} "
            f"{f'{r.late_p50_ms:.1f}/{r.late_p99_ms:.1f}/{r.late_max_ms:.1f}':>20} {r.ticks:>6} {r.ticks_skipped:>7} "
            f"{r.rtp_in / r.window_s / r.calls:>11.1f} {r.rtp_out / r.window_s / r.calls:>12.1f} "
            f"{r.socket_drops:>9} {r.jitter_late:>7} {r.jitter_lost:>6} {r.jitter_concealed:>9}"
        )
    if len(results) >= 2:
        # Least squares CPU(N) = fixed + per_caller * N: "linear in N" means the per-caller slope holds at every N.
        xs = [float(r.calls) for r in results]
        ys = [(r.cpu_user_s + r.cpu_system_s) / r.window_s * 100 for r in results]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        fixed = my - slope * mx
        worst = max(abs(y - (fixed + slope * x)) for x, y in zip(xs, ys, strict=True))
        lines.append(
            f"fit: CPU ≈ {fixed:.1f}% + {slope:.3f}% * N ({slope / 100 * TICK_S * 1e6:.1f} µs per caller per tick; "
            f"worst residual {worst:.1f}% of a core)"
        )
    lines += [
        "",
        "the floor: a bare uvloop relay moving the same packets on the same core (bench/floor.py: per caller 50",
        "reads and 50 sends a second, nothing else), and the engine's cost as a multiple of it",
        f"{'N':>5} {'relay %core':>11} {'engine %core':>12} {'multiple':>8}",
    ]
    for r in results:
        engine_share = (r.cpu_user_s + r.cpu_system_s) / r.window_s * 100
        multiple = f"{engine_share / r.floor_share:.2f}x" if r.floor_share > 0 else "-"
        lines.append(f"{r.calls:>5} {r.floor_share:>11.1f} {engine_share:>12.1f} {multiple:>8}")
    lines += [
        "",
        "where the engine's time went in the window (% of a core, then µs per caller per tick; the engine's own",
        "perf_counter split: receive = an RTP packet into its call (1 in 8 timed), timers = SIP and NCCO timers,",
        "media = mixing, encoding and packetizing, send = the tick's RTP sendto calls, sip = SIP messages;",
        "other = the rest of its CPU time: the loop's reader callbacks and recvfrom, GC, HTTP)",
        f"{'N':>5} " + " ".join(f"{stage:>15}" for stage in (*STAGES, "other")),
    ]
    for r in results:
        if not r.stages_s:
            continue
        ticks = r.window_s / TICK_S
        spent = {**r.stages_s, "other": r.cpu_user_s + r.cpu_system_s - sum(r.stages_s.values())}
        lines.append(
            f"{r.calls:>5} "
            + " ".join(
                f"{f'{seconds / r.window_s * 100:.1f}% {seconds / r.calls / ticks * 1e6:.1f}':>15}"
                for seconds in spent.values()
            )
        )
    lines += [
        "",
        "interference on the engine's core during the window (anything above ~1% of the window: the figures above",
        "measure the machine's other load as much as the engine)",
        f"{'N':>5} {'rq wait':>8} {'core0 other':>11} {'of which softirq':>16} {'steal':>6} {'busy before':>11}",
    ]
    for r in results:
        lines.append(
            f"{r.calls:>5} {r.runqueue_wait_s / r.window_s:>8.1%} {r.core_other_s / r.window_s:>11.1%} "
            f"{r.core_softirq_s / r.window_s:>16.1%} {r.core_steal_s / r.window_s:>6.1%} {r.quiet_before:>11.0%}"
        )
    lines += [
        "",
        "set-up (ms, p50/p99/max; from the capture's kernel timestamps)",
        f"{'N':>5} {'INVITE→200 OK':>14} {'INVITE→prompt':>14} {'# → conference':>15} {'seen':>9} {'missing':>7} "
        f"{'failed':>6}  refused / app requests",
    ]
    for r in results:
        lines.append(
            f"{r.calls:>5} {_pct(r.answer_ms):>14} {_pct(r.prompt_ms):>14} {_pct(r.conference_ms):>15} "
            f"{f'{len(r.prompt_ms)}/{len(r.conference_ms)}':>9} {r.setup_missing:>7} {r.calls_failed:>6}  "
            f"{r.calls_refused or '-'} / {r.app_requests}"
        )
    lines += ["", "goals: p99 tick lateness < 5 ms and nothing dropped at 400; prompt ≤ 150 ms; conference ≤ 200 ms"]
    for r in results:
        dropped = r.ticks_skipped + r.socket_drops + r.jitter_late
        verdict = [
            f"late p99 {'ok' if r.late_p99_ms < 5 else 'MISSED'}",
            f"drops {'ok' if dropped == 0 else 'MISSED'}",
            f"prompt p99 {'ok' if r.prompt_ms and _p(r.prompt_ms, 0.99) <= 150 else 'MISSED'}",
            f"conference p99 {'ok' if r.conference_ms and _p(r.conference_ms, 0.99) <= 200 else 'MISSED'}",
        ]
        lines.append(f"{r.calls:>5}: " + ", ".join(verdict))
    for r in results:
        for phase, profile in (("ramp", r.profile_ramp), ("steady state", r.profile_window)):
            if profile:
                lines += ["", f"profile, N={r.calls}, {phase} (py-spy, own samples, % of the engine's samples):"]
                lines += [f"  {share:5.1f}%  {frame}" for frame, share in profile]
    return "\n".join(lines)


def _p(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="50,100,200,400", help="comma-separated N (default 50,100,200,400)")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state window per N (default 20)")
    parser.add_argument("--conference-size", type=int, default=5, help="callers per room (default 5)")
    parser.add_argument("--rate", type=float, default=25.0, help="new calls a second during the ramp (default 25)")
    parser.add_argument("--profile", default="", help="comma-separated N to record with py-spy (e.g. 400)")
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0, help="seconds to wait for an idle machine before each N (120)"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="diagnostic: run the engine under nice -n N (e.g. -10); default: not"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, pcaps, profiles)")
    args = parser.parse_args()
    args.profile = {int(n) for n in args.profile.split(",") if n}
    ensure_private_network()
    os.sched_setaffinity(0, {PEER_CORE})  # the bench itself (and its capture thread) stays off the engine's core
    if sipp.SIPP is None:
        sys.exit("SIPp is not installed (the sip-tester package)")
    if args.profile and not (VENV_BIN / "py-spy").exists():
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    started = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="dialbridge-bench-voice-"))
    results = []
    try:
        for n in [int(v) for v in args.calls.split(",") if v]:
            print(f"N={n} …", file=sys.stderr, flush=True)
            result = run_one(n, args, root)
            result.floor_share = floor_share(n, min(args.seconds, 10.0))
            results.append(result)
    finally:
        if args.keep:
            print(f"run folder: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results, args, started))


if __name__ == "__main__":
    main()
