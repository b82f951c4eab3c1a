"""What the voice engine serves besides SIP: its call-control API (Vonage's Voice REST shape, over TLS with the
engine's own application key), `/healthz` and `/metrics`. The engine speaks SIP/RTP only: the browser phone's
WebRTC leg ends in the gateway (`gateway/phone.py`), which dials in here like any SIP phone.

It runs on the engine's own event loop — the API's verbs act on `VoiceEngine` directly — as one uvicorn server
task. The traffic is a few requests per call, not per packet, so it does not disturb the 20 ms clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dialbridge.credentials import VoiceCredentials
from dialbridge.engine.calls import StreamSource, TalkSource, WebhookClient, parse_ncco
from dialbridge.engine.calls.ncco import parse_endpoint
from dialbridge.engine.control import CallRecord, NewCall, create_control_app
from dialbridge.engine.core import CallSnapshot, VoiceEngine
from dialbridge.local_api import LocalApiServer

log = logging.getLogger(__name__)
DTMF_DIGITS = frozenset("0123456789*#pABCD")


class TickFigures(Protocol):
    """How late the engine's 20 ms clock ran (the shell's `TickStats`)."""

    @property
    def skipped(self) -> int: ...

    @property
    def max_late_ms(self) -> float: ...

    def percentile(self, share: float) -> float: ...


class EngineServer(Protocol):
    """What this service needs of the process running the engine (`engine.shell.VoiceServer`, which imports this
    module to start the service: described here rather than imported, so that the two do not import each other)."""

    @property
    def engine(self) -> VoiceEngine: ...

    @property
    def ticks(self) -> TickFigures: ...

    @property
    def webhooks(self) -> WebhookClient: ...

    @property
    def final_events_pending(self) -> int: ...

    @property
    def sip_address(self) -> tuple[str, int]: ...

    def now(self) -> float: ...

    def flush(self) -> None: ...


def call_record(snapshot: CallSnapshot) -> CallRecord:
    return CallRecord(
        uuid=snapshot.uuid,
        conversation_uuid=snapshot.conversation_uuid,
        from_number=snapshot.from_,
        to_number=snapshot.to,
        status=snapshot.status,
        direction=snapshot.direction,
        start_time=snapshot.start_time,
        end_time=snapshot.end_time,
        duration=snapshot.duration,
    )


class EngineCallControl:
    """The call-control API's verbs over the engine; each one flushes what it made the engine send."""

    def __init__(self, server: EngineServer) -> None:
        self._server = server

    @property
    def _engine(self) -> VoiceEngine:
        return self._server.engine

    def _done(self, result: bool) -> bool:
        self._server.flush()
        return result

    def create_call(self, call: NewCall) -> CallRecord:
        to = parse_endpoint(call.to, "to")  # NccoError is a ValueError: a 400 naming the field
        answer = parse_ncco(call.ncco) if call.ncco is not None else call.answer_url
        assert answer is not None
        snapshot = self._engine.create_call(
            to,
            call.from_number,
            answer,
            self._server.now(),
            event_url=call.event_url,
            ringing_timer=call.ringing_timer,
            length_timer=call.length_timer,
        )
        self._server.flush()
        return call_record(snapshot)

    def list_calls(self, conversation_uuid: str | None = None) -> list[CallRecord]:
        now = self._server.now()
        return [call_record(snapshot) for snapshot in self._engine.snapshots(conversation_uuid, now)]

    def get_call(self, uuid: str) -> CallRecord | None:
        snapshot = self._engine.snapshot(uuid, self._server.now())
        return None if snapshot is None else call_record(snapshot)

    def hangup(self, uuid: str) -> bool:
        return self._done(self._engine.hangup(uuid, self._server.now()))

    def set_muted(self, uuid: str, muted: bool) -> bool:
        return self._done(self._engine.set_muted(uuid, muted))

    def set_earmuffed(self, uuid: str, earmuffed: bool) -> bool:
        return self._done(self._engine.set_earmuffed(uuid, earmuffed))

    def transfer(self, uuid: str, ncco: list[dict[str, Any]]) -> bool:
        actions = parse_ncco(ncco)  # NccoError is a ValueError: a 400 naming the action and field
        return self._done(self._engine.transfer(uuid, actions, self._server.now()))

    def start_talk(self, uuid: str, text: str, *, language: str, loop: int, level: float) -> bool:
        return self._done(
            self._engine.play_into_call(uuid, TalkSource(text, language=language, level=level, loop=loop))
        )

    def stop_talk(self, uuid: str) -> bool:
        self._engine.stop_playing_into_call(uuid)
        return uuid in self._engine.calls  # stopping what is not playing still succeeds on a live call

    def start_stream(self, uuid: str, url: str, *, loop: int, level: float) -> bool:
        return self._done(self._engine.play_into_call(uuid, StreamSource(url, level=level, loop=loop)))

    def stop_stream(self, uuid: str) -> bool:
        return self.stop_talk(uuid)

    def send_dtmf(self, uuid: str, digits: str) -> bool:
        if not digits or set(digits) - DTMF_DIGITS:
            raise ValueError("digits must be 0-9, *, #, p (a pause) or A-D")
        try:
            return self._done(self._engine.send_dtmf(uuid, digits.replace("p", ""), self._server.now()))
        except RuntimeError as exc:  # the call's SDP had no telephone-event
            raise ValueError(str(exc)) from None


class EngineMetrics(Collector):
    """The engine's figures for Prometheus, read from its counters at each scrape."""

    def __init__(self, server: EngineServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        engine = server.engine
        states = GaugeMetricFamily(
            "dialbridge_voice_calls", "Live calls in the voice engine by state", labels=["state"]
        )
        live: dict[str, int] = {}
        for call in engine.calls.values():
            live[call.state] = live.get(call.state, 0) + 1
        for state, count in sorted(live.items()):
            states.add_metric([state], count)
        yield states
        events = CounterMetricFamily(
            "dialbridge_voice_call_states", "Call states the engine reported to the event webhook", labels=["status"]
        )
        for status, count in sorted(engine.stats.calls_by_state.items()):
            events.add_metric([status], count)
        yield events
        refused = CounterMetricFamily(
            "dialbridge_voice_refused_calls", "Calls refused, by SIP status", labels=["status"]
        )
        for status_code, count in sorted(engine.stats.refused.items()):
            refused.add_metric([str(status_code)], count)
        yield refused
        packets = CounterMetricFamily("dialbridge_voice_rtp_packets", "RTP packets", labels=["direction"])
        packets.add_metric(["in"], engine.stats.rtp_in)
        packets.add_metric(["out"], engine.stats.rtp_out)
        yield packets
        lost = sum(call.rtp.stats.packets_lost for call in engine.calls.values() if call.rtp is not None)
        yield GaugeMetricFamily("dialbridge_voice_rtp_lost", "Packets lost on the live calls (RFC 3550)", value=lost)
        jitters = [call.rtp.stats.jitter_ms for call in engine.calls.values() if call.rtp is not None]
        yield GaugeMetricFamily(
            "dialbridge_voice_rtp_jitter_max_ms",
            "Largest interarrival jitter among live calls",
            value=max(jitters, default=0),
        )
        ticks = server.ticks
        lateness = GaugeMetricFamily(
            "dialbridge_voice_tick_lateness_ms",
            "How late the 20 ms media clock ran (recent ticks)",
            labels=["quantile"],
        )
        for label, share in (("0.5", 0.5), ("0.99", 0.99)):
            lateness.add_metric([label], ticks.percentile(share))
        lateness.add_metric(["max"], ticks.max_late_ms)
        yield lateness
        yield CounterMetricFamily(
            "dialbridge_voice_ticks_skipped", "20 ms ticks skipped (frames dropped)", value=ticks.skipped
        )
        yield GaugeMetricFamily(
            "dialbridge_voice_final_events_pending",
            "Final call events sent and not yet acknowledged by the application (retrying)",
            value=server.final_events_pending,
        )
        stats = server.webhooks.stats
        latency = CounterMetricFamily(
            "dialbridge_voice_webhook_seconds", "Time spent on webhook requests by purpose", labels=["purpose"]
        )
        requests = CounterMetricFamily("dialbridge_voice_webhook_requests", "Webhook requests", labels=["purpose"])
        failures = CounterMetricFamily("dialbridge_voice_webhook_failures", "Failed webhooks", labels=["purpose"])
        for purpose in sorted(stats.requests):
            requests.add_metric([purpose], stats.requests[purpose])
            failures.add_metric([purpose], stats.failures.get(purpose, 0))
            latency.add_metric([purpose], stats.latency_sum_s.get(purpose, 0.0))
        yield from (requests, failures, latency)


class ControlService:
    """The engine's HTTPS server (call control, health, metrics) as a task on its loop."""

    def __init__(self, server: EngineServer, credentials: VoiceCredentials, host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineMetrics(server))
        app = create_control_app(
            EngineCallControl(server),
            credentials,
            clock=server.now,
            health=lambda: _health(server),
            metrics=lambda: generate_latest(registry),
        )
        self._server = LocalApiServer(app, credentials, host, port)

    async def start(self) -> None:
        await self._server.start()

    async def close(self) -> None:
        await self._server.close()


def _health(server: EngineServer) -> Mapping[str, Any]:
    engine = server.engine
    return {
        "engine": "voice",
        "calls": len(engine.calls),
        "sip": f"{server.sip_address[0]}:{server.sip_address[1]}",
        "tick_lateness_p99_ms": round(server.ticks.percentile(0.99), 3),
    }
