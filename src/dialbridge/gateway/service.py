"""`dialbridge gateway`: the gateway's process — its SIP socket and media clock, its HTTPS control API (room dials
and browser phone calls), metrics, and a graceful stop (every call hung up with a BYE) on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dialbridge.credentials import VoiceCredentials
from dialbridge.gateway.control import create_gateway_app
from dialbridge.gateway.events import SignedPoster, SipCallReporter
from dialbridge.gateway.phone import BrowserPhones
from dialbridge.gateway.shell import Gateway, GatewaySettings
from dialbridge.local_api import LocalApiServer

log = logging.getLogger("dialbridge.gateway")


class GatewayMetrics(Collector):
    def __init__(self, gateway: Gateway, phones: BrowserPhones | None = None) -> None:
        self.gateway = gateway
        self.phones = phones

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        calls = GaugeMetricFamily("dialbridge_gateway_calls", "Gateway calls by state", labels=["state"])
        states: dict[str, int] = {}
        for call in gateway.calls.values():
            states[call.state] = states.get(call.state, 0) + 1
        for state in ("dialling", "ringing", "answered", "ending"):
            calls.add_metric([state], states.get(state, 0))
        yield calls
        peers = GaugeMetricFamily("dialbridge_gateway_browser_peers", "WebRTC peers the gateway's calls hold")
        peers.add_metric([], gateway.peer_count)
        yield peers
        if self.phones is not None:
            phones = self.phones.health()
            yield GaugeMetricFamily(
                "dialbridge_gateway_browser_phones",
                "Browser phone calls the gateway holds",
                value=phones["browser_phones"],
            )
            yield GaugeMetricFamily(
                "dialbridge_gateway_browser_phones_negotiating",
                "Browser phone peers answered but not connected yet",
                value=phones["browser_phones_negotiating"],
            )
        placed = CounterMetricFamily("dialbridge_gateway_calls_placed", "SIP calls the gateway placed")
        placed.add_metric([], gateway.calls_placed)
        yield placed
        failed = CounterMetricFamily("dialbridge_gateway_calls_failed", "SIP calls that failed before answer")
        failed.add_metric([], gateway.calls_failed)
        yield failed
        reporter = gateway.reporter
        if reporter is not None:
            callbacks = CounterMetricFamily(
                "dialbridge_gateway_callbacks", "SIP call callbacks posted to the app, by result", labels=["result"]
            )
            callbacks.add_metric(["posted"], reporter.posted)
            callbacks.add_metric(["failed"], reporter.failed)
            yield callbacks
        late = CounterMetricFamily("dialbridge_gateway_late_ticks", "Media ticks more than 100 ms late")
        late.add_metric([], gateway.late_ticks)
        yield late


async def serve_gateway(
    settings: GatewaySettings,
    credentials: VoiceCredentials,
    api: tuple[str, int],
    *,
    callback_url: str | None = None,
    signature_secret: str | None = None,
) -> None:
    """`callback_url`: where the calls' session-monitoring callbacks go (signed with `signature_secret` if set)."""
    webhooks = SignedPoster(signature_secret) if callback_url else None
    reporter = SipCallReporter(callback_url, webhooks) if callback_url and webhooks else None
    gateway = Gateway(settings, reporter=reporter)
    await gateway.start()
    phones = BrowserPhones(gateway, settings.dial_in_uri) if settings.dial_in_uri else None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayMetrics(gateway, phones))
    app = create_gateway_app(gateway, credentials, phones=phones, metrics=lambda: generate_latest(registry))
    server = LocalApiServer(app, credentials, *api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except BaseException:
        await gateway.stop()
        if webhooks is not None:
            await webhooks.aclose()
        raise
    log.info(
        "gateway: SIP on %s:%d (UDP), RTP %d-%d, control API https://%s:%d, rooms at %s",
        settings.sip_host,
        settings.sip_port,
        *settings.rtp_ports,
        *api,
        settings.signalling_url,
    )
    await stop.wait()
    log.info("gateway: stopping; hanging up %d calls", len(gateway.calls))
    await gateway.stop()
    await server.close()
    if webhooks is not None:
        await webhooks.aclose()
