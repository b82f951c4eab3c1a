"""Request bounds beyond one connection: the bookkeeping of who keeps the server waiting (server/limits.py, with a
fake clock), a real server at the common 1,024-descriptor limit under a slow-client flood, and the fallback to
uvicorn's own protocol when its internals change (server/choice.py)."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
import urllib.request
from pathlib import Path

from dialbridge.server.limits import ClientWaits, ServerLimits, connection_cap
from tests.served import patched_python, serving, start

LIMITS = ServerLimits(request_timeout_s=5, idle_timeout_s=10, max_connections=100)


def test_waits_name_the_overdue_and_the_longest_waiting_in_order() -> None:
    waits: ClientWaits[str] = ClientWaits()
    waits.idle("a", 0.0)
    waits.receiving("b", 1.0)
    waits.receiving("c", 2.0)
    waits.idle("d", 3.0)
    assert waits.longest_waiting() == "a" and waits.longest_waiting(besides="a") == "b"
    waits.busy("b")  # its request arrived: it waits on the server, not on its client
    assert waits.overdue(7.5, LIMITS) == (["c"], [])
    waits.receiving("a", 8.0)  # a new request on an idle connection starts its own clock
    assert waits.overdue(10.5, LIMITS) == (["c"], [])
    assert waits.overdue(13.5, LIMITS) == (["c", "a"], ["d"])
    waits.gone("c")
    waits.gone("a")
    waits.gone("d")
    assert len(waits) == 0 and waits.longest_waiting() is None


def test_the_connection_cap_leaves_descriptors_for_the_process() -> None:
    assert connection_cap(None, 1024) == 768
    assert connection_cap(None, 100) == 36
    assert connection_cap(50, 1024) == 50 and connection_cap(5000, 1024) == 768


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    opened = []
    for n in range(count):
        conn = socket.socket()
        conn.setblocking(False)
        conn.connect_ex(("127.0.0.1", port))
        opened.append(conn)
        if n % 50 == 49:
            time.sleep(0.05)
    time.sleep(0.5)
    for conn in opened:
        with contextlib.suppress(OSError):
            conn.send(b"POST /webhooks/events HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    return opened


def test_slow_clients_at_the_1024_descriptor_limit_do_not_lock_others_out(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    # A process whose hard limit is 1,024, as on many hosts: it cannot raise it, so the cap must hold.
    served = start(tmp_path, DIALBRIDGE_REQUEST_TIMEOUT_S="30")
    resource.prlimit(served.process.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    slow: list[socket.socket] = []
    try:
        served.wait_healthy()
        slow = _slow_clients(served.port, 1100)
        started = time.monotonic()
        with urllib.request.urlopen(served.base + "/healthz", timeout=10) as response:
            assert response.status == 200
        assert time.monotonic() - started < 5
        assert served.process.poll() is None
    finally:
        for conn in slow:
            conn.close()
        served.process.terminate()
        served.process.wait(timeout=30)


SITECUSTOMIZE = """
# A uvicorn whose protocol internals look different (its __init__ no longer sets what dialbridge relies on),
# behaving the same: dialbridge must notice and serve with uvicorn's own protocol.
from uvicorn.protocols.http import httptools_impl

_original = httptools_impl.HttpToolsProtocol.__init__


def _init(self, *args, **kwargs):
    _original(self, *args, **kwargs)
httptools_impl.HttpToolsProtocol.__init__ = _init
"""


def test_a_uvicorn_with_changed_internals_falls_back_to_its_own_protocol_with_a_warning(tmp_path: Path) -> None:
    with serving(tmp_path, **patched_python(tmp_path, SITECUSTOMIZE)) as served:
        request = urllib.request.Request(served.base + "/webhooks/answer?uuid=fallback-1&from=447700900001")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and b'"action":"talk"' in response.read()
        assert served.log is not None
        printed = served.log.read_text()
    assert "serving with uvicorn's own protocol instead" in printed
    assert "HttpToolsProtocol().parser" in printed and "pip install 'uvicorn[standard]>=0.55,<0.56'" in printed


def test_the_installed_uvicorn_runs_dialbridges_protocol(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        assert served.log is not None
        assert "uvicorn's own protocol" not in served.log.read_text()
