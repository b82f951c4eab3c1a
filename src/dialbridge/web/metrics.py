"""Prometheus metrics: HTTP requests, webhook latency, rooms, and calls by state.

Rooms and calls are read from the database when scraped, so every instance reports the same shared truth and
nothing has to be kept in step in memory. Requests and latency are counted in each process; when several worker
processes serve one port (`dialbridge serve --workers N`), a scrape lands on any one of them, so each publishes its
counts to a shared folder about once a second and every scrape adds up all of them (`Metrics.publish`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dialbridge.store.store import Store


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        rooms = GaugeMetricFamily("dialbridge_rooms", "Rooms with a video session and a PIN")
        rooms.add_metric([], self.store.room_count())
        yield rooms
        calls = GaugeMetricFamily("dialbridge_calls", "Phone calls by their latest state", labels=["state"])
        for state, count in sorted(self.store.calls_by_status().items()):
            calls.add_metric([state], count)
        yield calls


log = logging.getLogger(__name__)
# The status label of a request whose client went away before it was answered (nginx's "client closed request").
# Not 400: the client made no bad request, and counting impatient clients and dropped connections as client errors
# would raise the error rate that tells an operator a caller is sending broken requests.
CLIENT_CLOSED = "499"
PUBLISH_EVERY_S = 1.0
WEBHOOK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Requests and webhook latency, counted in plain dicts and lists and turned into Prometheus families only
    when scraped.

    Why not prometheus_client's Counter and Histogram: each update takes a lock, and a histogram walks its buckets
    in Python — ~3 us per webhook for two updates, measured, on a path where the whole answer costs ~30 us of
    HTTP handling. Here an update is a dict lookup and an increment on the event loop's thread; the scrape (on a
    worker thread) copies the numbers first, so it never sees a dict change size under it."""

    def __init__(self, store: Store, shared_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._webhook_buckets: dict[str, list[int]] = {}  # per webhook: count per bucket, the last one +Inf
        self._webhook_sums: dict[str, float] = {}
        self.shared_dir = shared_dir
        self._own_file = shared_dir / f"{os.getpid()}.json" if shared_dir else None
        self.registry.register(_RequestCollector(self))
        self.registry.register(StoreCollector(store))

    def publish(self) -> None:
        """Write this process's counts where the other workers' scrapes read them (replaced whole, atomically).
        A worker that has exited leaves its file: its requests happened, and counters must never go down."""
        if self._own_file is None:
            return
        snapshot = self._snapshot()
        temporary = self._own_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot))
        os.replace(temporary, self._own_file)

    async def keep_publishing(self) -> None:
        """Publish about once a second, for as long as the server runs (the app's lifespan cancels it)."""
        while True:
            try:
                self.publish()
            except OSError:
                log.warning("could not publish metrics to %s", self.shared_dir, exc_info=True)
            await asyncio.sleep(PUBLISH_EVERY_S)

    def _snapshot(self) -> dict[str, Any]:
        """This process's counts, copied in single steps (the scrape runs on another thread)."""
        return {
            "requests": [[*labels, count] for labels, count in list(self._requests.items())],
            "buckets": {name: list(counts) for name, counts in list(self._webhook_buckets.items())},
            "sums": dict(self._webhook_sums),
        }

    def totals(self) -> dict[str, Any]:
        """This process's counts plus what every other worker last published."""
        snapshots = [self._snapshot()]
        if self.shared_dir is not None:
            for path in self.shared_dir.glob("*.json"):
                if path == self._own_file:
                    continue
                try:
                    snapshots.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # being replaced right now, or gone: its next publication will count
        requests: dict[tuple[str, ...], int] = {}
        buckets: dict[str, list[int]] = {}
        sums: dict[str, float] = {}
        for snapshot in snapshots:
            for *labels, count in snapshot["requests"]:
                key = tuple(labels)
                requests[key] = requests.get(key, 0) + count
            for name, counts in snapshot["buckets"].items():
                total = buckets.setdefault(name, [0] * len(counts))
                buckets[name] = [a + b for a, b in zip(total, counts, strict=True)]
            for name, value in snapshot["sums"].items():
                sums[name] = sums.get(name, 0.0) + value
        return {"requests": requests, "buckets": buckets, "sums": sums}

    def count_request(self, route: str, method: str, status: str) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1

    def observe_webhook(self, webhook: str, seconds: float) -> None:
        buckets = self._webhook_buckets.get(webhook)
        if buckets is None:
            buckets = self._webhook_buckets[webhook] = [0] * (len(WEBHOOK_BUCKETS) + 1)
            self._webhook_sums[webhook] = 0.0
        buckets[bisect_left(WEBHOOK_BUCKETS, seconds)] += 1  # Prometheus buckets count values <= their bound
        self._webhook_sums[webhook] += seconds


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        totals = self.metrics.totals()
        requests = CounterMetricFamily(
            "dialbridge_http_requests",
            "HTTP requests by route template, method and status",
            labels=["route", "method", "status"],
        )
        for labels, count in sorted(totals["requests"].items()):
            requests.add_metric(list(labels), count)
        yield requests
        latency = HistogramMetricFamily(
            "dialbridge_webhook_seconds", "Time to answer a webhook, signature check included", labels=["webhook"]
        )
        bounds = [*map(str, WEBHOOK_BUCKETS), "+Inf"]
        for webhook, counts in sorted(totals["buckets"].items()):
            cumulative = list(accumulate(counts))
            latency.add_metric([webhook], list(zip(bounds, cumulative, strict=True)), totals["sums"].get(webhook, 0.0))
        yield latency


class RequestMetricsMiddleware:
    """Counts every request by its route template (never the raw path, which would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the application's, to name the route of a request answered before routing

    def _template(self, scope: Scope) -> str:
        """The route template a request was routed to or, when it was answered before routing (a body refused on
        its declared length), the one it would have been."""
        route: Any = scope.get("route")
        if route is None:
            route = next((each for each in self.routes if each.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = client_gone = False

        async def watched_receive() -> Message:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect" and not started:
                client_gone = True  # whatever the application answers now goes to nobody
            return message

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start" and not started:
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, watched_receive, send_status)
        finally:
            label = CLIENT_CLOSED if client_gone else str(status)
            self.metrics.count_request(self._template(scope), scope["method"], label)


def timed() -> float:
    return time.perf_counter()
