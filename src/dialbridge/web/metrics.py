"""Prometheus metrics: HTTP requests, webhook latency, rooms, and calls by state.

Rooms and calls are read from the database when scraped, so every instance reports the same shared truth and
nothing has to be kept in step in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
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


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dialbridge_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "dialbridge_webhook_seconds",
            "Time to answer a webhook, signature check included",
            ["webhook"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store))
        self._request_counters: dict[tuple[str, str, str], Any] = {}
        self._webhook_timers: dict[str, Any] = {}

    def count_request(self, route: str, method: str, status: str) -> None:
        """`requests.labels(...).inc()`, with the labelled child looked up in a dict of our own: `labels()` costs
        a few microseconds (argument checks, a lock), paid on every webhook. The dict holds exactly the children
        the metric itself holds, so it grows no further than the label set does."""
        key = (route, method, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(route, method, status)
        counter.inc()

    def observe_webhook(self, webhook: str, seconds: float) -> None:
        """`webhook_seconds.labels(webhook).observe(seconds)`, the child looked up as in `count_request`."""
        timer = self._webhook_timers.get(webhook)
        if timer is None:
            timer = self._webhook_timers[webhook] = self.webhook_seconds.labels(webhook)
        timer.observe(seconds)


class RequestMetricsMiddleware:
    """Counts every request by its route template (never the raw path, which would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.count_request(template, scope["method"], str(status))


def timed() -> float:
    return time.perf_counter()
