"""A real DNS server on loopback: Debian's dnsmasq (package dnsmasq-base; `make test` installs it), answering only
the records a test gives it, for names under `.test` (NXDOMAIN for any other name there), with one TTL for all."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import dns.exception
import dns.message
import dns.query

Address = tuple[str, int]
DNSMASQ = shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq",) if os.access(p, os.X_OK)), None)
DNS_PORT = 5353  # unprivileged; the tests run in a network namespace of their own


@contextmanager
def dns_server(*, srv: Sequence[str] = (), hosts: Mapping[str, str] | None = None, ttl: int = 30) -> Iterator[Address]:
    """dnsmasq on 127.0.0.1:5353 while the block runs. `srv`: dnsmasq's `--srv-host` values
    (`_sip._udp.pbx.test,a.pbx.test,5070,10,60`: name, target, port, priority, weight); `hosts`: name -> address."""
    assert DNSMASQ is not None, "dnsmasq is not installed: make test installs the dnsmasq-base package"
    args = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={DNS_PORT}",
        "--local=/test/",
        f"--local-ttl={ttl}",
    ]
    args += [f"--srv-host={record}" for record in srv]
    args += [f"--host-record={name},{address}" for name, address in (hosts or {}).items()]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_answering(server)
        yield ("127.0.0.1", DNS_PORT)
    finally:
        server.terminate()
        server.wait(timeout=5)
        if server.stderr is not None:
            server.stderr.close()


def _wait_until_answering(server: subprocess.Popen[bytes]) -> None:
    query = dns.message.make_query("ready.test", "A")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            error = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise AssertionError(f"dnsmasq exited with {server.returncode}: {error}")
        try:
            dns.query.udp(query, "127.0.0.1", port=DNS_PORT, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    raise AssertionError("dnsmasq did not answer within 5 s")
