"""The voice engine's asyncio shell: sockets, the 20 ms clock, HTTP and worker threads around `VoiceEngine`.

Everything that decides lives in `engine/core.py` and below; this module only moves bytes and results. It runs in
its own process (`dialbridge voice`, or started by `dialbridge serve`), so media timing never waits behind HTTP
work of the web workers.

Sockets: SIP on UDP and TCP at `sip_host:sip_port`; RTP and RTCP on a port pair per call, bound synchronously and
read with `add_reader` (no transport objects per call; a readable socket is drained in one callback).
The clock: ticks are scheduled at absolute times 20 ms apart; how late each one ran is recorded (`TickStats`), and
a loop that fell more than 100 ms behind skips ahead rather than bursting audio.
On SIGUSR1 the engine logs one line, "voice engine stats {json}" (`VoiceServer.stats_summary`), so a benchmark or an
operator can read the clock's and the media's counters from outside the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import signal
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from dialbridge.conference.webhooks import FINAL_STATUSES
from dialbridge.credentials import VoiceCredentials
from dialbridge.engine.calls import StreamSource, TalkSource, WebhookClient
from dialbridge.engine.calls.journal import FinalEventRetry, LiveCallJournal
from dialbridge.engine.core import (
    EngineRequest,
    EngineSettings,
    FetchAnswer,
    PrepareAudio,
    ReportSpeaking,
    SendEvent,
    SendWebhook,
    VoiceEngine,
)
from dialbridge.engine.service import ControlService
from dialbridge.media.audiofile import load_audio
from dialbridge.media.tts import SpeechSynthesizer, UnsupportedLanguage
from dialbridge.sip.connections import SipTcpConnections, TcpConnectionLimits
from dialbridge.sip.message import SipParseError, SipStreamFramer
from dialbridge.sip.resolver import SipUdpSender, Unreachable
from dialbridge.sip.tcp_client import SipTcpClient, TcpUnavailable
from dialbridge.udp_ports import UdpMediaPorts

log = logging.getLogger(__name__)
TICK_S = 0.020
MAX_BEHIND_S = 0.100
TCP_CHECK_S = 1.0  # how often idle and stalled TCP connections are looked for
#: Connections the engine opens itself (to a peer whose own connection closed mid-call), at most: a few per trunk.
MAX_OUTBOUND_TCP = 128
Address = tuple[str, int]


RECEIVE_SAMPLE_MASK = 7  # one RTP packet in 8 is timed (and counted 8 times): timing every one would cost 0.3 %


@dataclass(slots=True)
class StageSeconds:
    """Where the engine's time goes, cumulative seconds per stage (perf_counter), for the benchmark's split:
    `receive` an RTP packet into its call (sampled), the `timers` and the `media` halves of the tick (mixing,
    encoding and packetizing), `send` the tick's RTP (the syscalls), and `sip` a SIP message from receipt to what
    it sends. What is left of the process's CPU time is the loop's own (reader callbacks, recvfrom), GC and HTTP."""

    receive: float = 0.0
    timers: float = 0.0
    media: float = 0.0
    send: float = 0.0
    sip: float = 0.0


@dataclass(slots=True)
class TickStats:
    """How late the clock ran: the figure that says whether media timing holds."""

    ticks: int = 0
    skipped: int = 0
    late_ms: list[float] = field(default_factory=list)  # a window of recent lateness values
    max_late_ms: float = 0.0
    # Every tick's lateness since the start, in 0.1 ms steps (floor): the difference of two snapshots gives exact
    # percentiles over any window, which the bounded `late_ms` cannot.
    histogram: dict[int, int] = field(default_factory=dict)

    def record(self, late_s: float) -> None:
        self.ticks += 1
        late_ms = late_s * 1000
        self.max_late_ms = max(self.max_late_ms, late_ms)
        bucket = math.floor(late_ms * 10)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
        self.late_ms.append(late_ms)
        if len(self.late_ms) > 3000:
            del self.late_ms[:1000]

    def percentile(self, share: float) -> float:
        if not self.late_ms:
            return 0.0
        return float(np.percentile(np.array(self.late_ms), share * 100))


class SipUdp(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server.sip_received(data, (addr[0], addr[1]), "udp")

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)


class SipTcp(asyncio.Protocol):
    def __init__(self, server: VoiceServer) -> None:
        self._server = server
        self._framer = SipStreamFramer()
        self._peer: Address = ("", 0)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1])
        accepted = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        if self._server.tcp_opened(self._peer, accepted):
            self._transport = accepted

    def data_received(self, data: bytes) -> None:
        if self._transport is None:  # closed at once (over a limit)
            return
        pings = self._framer.keepalives
        try:
            messages = self._framer.feed(data)
        except SipParseError as exc:  # oversized or unframeable: answer it if we can, then drop the stream
            self._server.tcp_unframeable(exc, self._peer)
            self._transport.close()
            return
        if self._framer.keepalives > pings:
            # RFC 5626 §4.4.1: a double-CRLF ping gets a single-CRLF pong, which is how a phone behind NAT learns
            # that its connection (and its binding) is still alive; unanswered, it reconnects or gives up.
            self._transport.write(b"\r\n" * (self._framer.keepalives - pings))
        self._server.tcp_received(self._peer, incomplete=self._framer.incomplete)
        for message in messages:
            self._server.sip_received(message, self._peer, "tcp")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.tcp_closed(self._peer, self._transport)


class VoiceServer:
    def __init__(
        self,
        *,
        settings: EngineSettings,
        sip_host: str,
        sip_port: int,
        rtp_ports: tuple[int, int],
        signature_secret: str | None,
        tcp_limits: TcpConnectionLimits | None = None,
        control: tuple[VoiceCredentials, str, int] | None = None,
        journal: Path | None = None,
        dns_server: Address | None = None,
    ) -> None:
        """`journal`: where this engine notes its live calls, and finds those a crashed one left (journal.py).
        `dns_server`: the DNS server to resolve peer-named hosts with (SRV, A/AAAA); None: the system's."""
        self._dns_server = dns_server
        self.settings = settings
        self._journal = LiveCallJournal(journal) if journal is not None else None
        self.final_event_retry = FinalEventRetry()
        self.final_events_pending = 0  # final events sent and not acknowledged yet (retrying)
        self._sip_host, self._sip_port = sip_host, sip_port
        self._rtp_range = rtp_ports
        self.sip_address: Address = (sip_host, sip_port)
        self._control_settings = control
        self.control: ControlService | None = None
        self._secret = signature_secret
        self.tcp_connections: dict[Address, asyncio.Transport] = {}
        self._tcp_bounds = SipTcpConnections(tcp_limits)
        self.ticks = TickStats()
        self.stages = StageSeconds()
        self._received = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keypad_posts: dict[str, asyncio.Task[Any]] = {}  # the last keypad post of each call
        self._event_chains: dict[str, asyncio.Task[Any]] = {}
        self._audio = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dialbridge-audio")
        self._speech = SpeechSynthesizer()
        self._stopping = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wall_offset = time.time() - loop.time()
        self.media = UdpMediaPorts(loop, self._sip_host, *self._rtp_range, self._rtp_received, self._rtcp_received)
        self.engine = VoiceEngine(self.settings, self.media, self.now())
        self.webhooks = WebhookClient(signature_secret=self._secret)
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: SipUdp(self), local_addr=(self._sip_host, self._sip_port)
        )
        self._sip_udp = SipUdpSender(
            self._udp.sendto,
            self._udp.get_extra_info("socket").family,
            self._unreachable,
            label="voice engine",
            dns_server=self._dns_server,
        )
        # The connections we open: where a peer's own connection closed mid-call (RFC 3261 18), the next request
        # in the dialog (or a response, 18.2.2) goes over a new one.
        self._tcp_client = SipTcpClient(
            lambda data, peer: self.sip_received(data, peer, "tcp"),
            self._unreachable,
            MAX_OUTBOUND_TCP,
            resolve=self._tcp_address,
            label="voice engine",
        )
        self._tcp = await loop.create_server(lambda: SipTcp(self), self._sip_host, self._sip_port, reuse_address=True)
        if self._control_settings is not None:
            self.control = ControlService(self, *self._control_settings)
            await self.control.start()
        # Synthesise the common prompts' voice once, so the first caller does not wait for espeak-ng to start.
        await loop.run_in_executor(self._audio, self._speech.synthesize, "Welcome.")
        # Start-up's objects (numpy, httpx, FastAPI, cryptography, ...) live as long as the process, yet every full
        # collection walked them all with the clock stopped: 64-86 ms pauses among 400 callers, whole ticks lost
        # (measured with a gc callback). Frozen, a collection walks only what calls allocate (~27,000 objects).
        gc.collect()
        gc.freeze()
        # The clock starts last: start-up's own pauses (the collection above) are not the first ticks' lateness.
        self._next_tick = loop.time() + TICK_S
        loop.call_at(self._next_tick, self._tick)
        loop.call_later(TCP_CHECK_S, self._close_idle_tcp)
        if self._journal is not None:
            left = self._journal.recover(self.now())
            if left:
                log.warning(
                    "sending %d final events a previous voice engine left (calls it left live, or events the "
                    "application had not acknowledged)",
                    len(left),
                )
                for payload in left:
                    # `serve` may start the application beside this engine at the same moment: it may not answer yet.
                    self._in_order(str(payload.get("uuid", "")), self._deliver_final(self.settings.event_url, payload))

    async def _deliver_final(self, url: str, payload: dict[str, Any]) -> None:
        """Send a call's final event until the application acknowledges it (a 2xx), backing off between tries; the
        journal holds it meanwhile, so what is still unacknowledged when this engine stops goes out from the next."""
        uuid = str(payload.get("uuid", ""))
        retry = self.final_event_retry
        give_up_at = self.now() + retry.patience_s
        failures = 0
        self.final_events_pending += 1
        try:
            while not (result := await self.webhooks.event(url, payload)).ok:
                if not result.retryable:
                    log.warning(
                        "the application refused call %s's final event (%s): not sent again", uuid, result.error
                    )
                    break
                failures += 1
                delay = retry.delay(failures)
                if self.now() + delay > give_up_at:
                    log.warning(
                        "call %s's final event was not acknowledged in %g s: giving it up", uuid, retry.patience_s
                    )
                    break
                if failures == 1:
                    log.warning("call %s's final event failed (%s): trying again, backing off", uuid, result.error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return  # kept in the journal: the next engine sends it
            if self._journal is not None:  # acknowledged, refused for good or given up: the journal lets it go
                self._journal.delivered(uuid)
        finally:
            self.final_events_pending -= 1

    async def run(self) -> None:
        await self.start()
        await self._stopping.wait()
        await self.close()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        now = self.now()
        for uuid in list(self.engine.calls):
            self.engine.hangup(uuid, now, reason="engine_shutdown")
        self.flush()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        if self.control is not None:
            await self.control.close()
        self._udp.close()
        self._tcp.close()
        for transport in list(self.tcp_connections.values()):
            transport.close()
        self._tcp_client.close_all()
        self.media.close_all()
        await self.webhooks.aclose()
        self._audio.shutdown(wait=False, cancel_futures=True)
        if self._journal is not None:
            self._journal.close()

    def stats_summary(self) -> dict[str, Any]:
        """The counters of the clock and the media, cumulative since the start (live calls' RTP: since they began)."""
        ticks = self.ticks
        rtp = {"late_dropped": 0, "duplicate_dropped": 0, "packets_lost": 0, "frames_concealed": 0, "packets_in": 0}
        for call in self.engine.calls.values():
            if call.rtp is not None:
                stats = call.rtp.stats
                for key in rtp:
                    rtp[key] += getattr(stats, key)
        webhooks = self.webhooks.stats
        return {
            "loop_time": self._loop.time(),
            "ticks": ticks.ticks,
            "ticks_skipped": ticks.skipped,
            "late_ms_p50": round(ticks.percentile(0.5), 3),
            "late_ms_p99": round(ticks.percentile(0.99), 3),
            "late_ms_max": round(ticks.max_late_ms, 3),
            "late_histogram_0_1ms": {str(bucket): n for bucket, n in sorted(ticks.histogram.items())},
            "calls": len(self.engine.calls),
            "calls_total": self.engine.stats.calls_total,
            "stages_s": {name: round(getattr(self.stages, name), 6) for name in StageSeconds.__slots__},
            "refused": {str(status): n for status, n in self.engine.stats.refused.items()},
            "sip_dropped": self.engine.stats.sip_dropped,
            "rtp_in": self.engine.stats.rtp_in,
            "rtp_out": self.engine.stats.rtp_out,
            "live_calls_rtp": rtp,
            "webhooks": {
                purpose: {
                    "requests": n,
                    "failures": webhooks.failures.get(purpose, 0),
                    "latency_mean_ms": round(webhooks.latency_sum_s.get(purpose, 0.0) / n * 1000, 2),
                    "latency_max_ms": round(webhooks.latency_max_s.get(purpose, 0.0) * 1000, 2),
                }
                for purpose, n in webhooks.requests.items()
            },
        }

    def log_stats(self) -> None:
        log.info("voice engine stats %s", json.dumps(self.stats_summary(), separators=(",", ":")))

    def now(self) -> float:
        """Wall-clock seconds that never step backwards (the loop's monotonic clock, offset once)."""
        return self._loop.time() + self._wall_offset

    # ---- input ---------------------------------------------------------------------------------------------

    def sip_received(self, data: bytes, source: Address, transport: str) -> None:
        started = time.perf_counter()
        self.engine.receive_sip(data, source, self.now(), transport)
        self.flush()
        self.stages.sip += time.perf_counter() - started

    def tcp_unframeable(self, error: SipParseError, peer: Address) -> None:
        self.engine.answer_parse_error(error, peer, self.now())
        self.flush()

    def tcp_opened(self, peer: Address, transport: asyncio.Transport) -> bool:
        """Whether the connection from `peer` may stay; one over a limit is closed here."""
        admission = self._tcp_bounds.admit(peer, self.now())
        if not admission.accepted:
            if admission.log:
                log.warning(
                    "SIP over TCP: closing connections from %s beyond the %s limit (logged once a minute per source)",
                    peer[0],
                    admission.limit,
                )
            transport.abort()
            return False
        self.tcp_connections[peer] = transport
        return True

    def tcp_received(self, peer: Address, *, incomplete: bool) -> None:
        self._tcp_bounds.received(peer, self.now(), incomplete=incomplete)

    def tcp_closed(self, peer: Address, transport: asyncio.Transport | None) -> None:
        if transport is None or self.tcp_connections.get(peer) is not transport:
            return  # one closed at once over a limit (no call knew it), or no longer the flow from that address
        del self.tcp_connections[peer]
        self._tcp_bounds.closed(peer)
        self.engine.transport_failed(peer, self.now())
        self.flush()

    def _close_idle_tcp(self) -> None:
        self._loop.call_later(TCP_CHECK_S, self._close_idle_tcp)
        in_use = self.engine.tcp_peers_in_use()
        for peer in self._tcp_bounds.to_close(self.now(), in_use):
            transport = self.tcp_connections.get(peer)
            if transport is not None:
                transport.abort()  # idle or stalled: nothing worth flushing to it
        for peer in self._tcp_client.peers - in_use:
            self._tcp_client.release(peer)  # ours: closed once nothing has used it for a while

    async def _tcp_address(self, peer: Address, port_named: bool) -> Address:
        try:
            return await self._sip_udp.address(*peer, transport="tcp", port_named=port_named)
        except Unreachable as exc:
            raise TcpUnavailable(str(exc)) from None

    def _rtp_received(self, port: int, data: bytes, source: Address) -> None:
        self._received += 1
        if self._received & RECEIVE_SAMPLE_MASK:
            self.engine.receive_rtp(port, data, source, self.now())
            return
        started = time.perf_counter()
        self.engine.receive_rtp(port, data, source, self.now())
        self.stages.receive += (time.perf_counter() - started) * (RECEIVE_SAMPLE_MASK + 1)

    def _rtcp_received(self, port: int, data: bytes, source: Address) -> None:
        self.engine.receive_rtcp(port, data, source, self.now())

    def _tick(self) -> None:
        loop = self._loop
        late = loop.time() - self._next_tick
        self.ticks.record(late)
        if late > MAX_BEHIND_S:  # far behind: skip the missed ticks instead of sending a burst
            missed = int(late / TICK_S)
            self.ticks.skipped += missed
            self._next_tick += missed * TICK_S
        self._next_tick += TICK_S
        loop.call_at(self._next_tick, self._tick)
        try:
            now = self.now()
            started = time.perf_counter()
            self.engine.run_timers(now)
            timers_done = time.perf_counter()
            self.engine.run_media(now)
            stages = self.stages
            stages.media += time.perf_counter() - timers_done
            stages.timers += timers_done - started
        except Exception:  # one bad call must not stop every call's audio
            log.exception("voice engine tick failed")
        self.flush()

    # ---- output --------------------------------------------------------------------------------------------

    def flush(self) -> None:
        sip, rtp, requests = self.engine.drain()
        for message in sip:
            if message.transport == "tcp":
                connection = self.tcp_connections.get(message.destination)
                if connection is not None and not connection.is_closing():
                    connection.write(message.data)
                else:  # its connection closed, or none ever came from there: we open one (or fail its transaction)
                    self._tcp_client.send_or_connect(message.destination, message.data, port_named=message.port_named)
            else:  # resolved, and isolated: a message that cannot be sent costs that message only
                self._sip_udp.send(message.data, message.destination, port_named=message.port_named)
        if rtp:
            started = time.perf_counter()
            send = self.media.send
            for port, data, destination in rtp:
                send(port, data, destination)
            self.stages.send += time.perf_counter() - started
        for request in requests:
            self._dispatch(request)

    def _unreachable(self, destination: Address) -> None:
        """A SIP message to `destination` could not be sent (no such name, an address of the other family, a TCP
        connection that closed or could not be opened): a transport error for the transactions sending there (a
        BYE's call ends now, not after Timer F's 32 s)."""
        self.engine.transport_failed(destination, self.now())
        self.flush()

    def _dispatch(self, request: EngineRequest) -> None:
        if isinstance(request, FetchAnswer):
            self._spawn(self._fetch_answer(request))
        elif isinstance(request, SendWebhook) and request.purpose == "keypad":
            # One call's keypad digits reach the application in the order they were keyed (`*` before `6`).
            previous = self._keypad_posts.get(request.call_uuid)
            task = self._spawn(self._send_keypad(request, previous))
            self._keypad_posts[request.call_uuid] = task
            task.add_done_callback(functools.partial(self._forget_keypad, request.call_uuid))
        elif isinstance(request, SendWebhook):
            self._spawn(self._send_webhook(request))
        elif isinstance(request, SendEvent):
            self._send_event(request)
        elif isinstance(request, ReportSpeaking):
            self._in_order(f"speaking {request.conversation}", self.webhooks.event(request.url, request.payload))
        elif isinstance(request, PrepareAudio):
            self._spawn(self._prepare_audio(request))

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fetch_answer(self, request: FetchAnswer) -> None:
        result = await self.webhooks.answer(request.url, request.query)
        self.engine.answer_fetched(request.call_uuid, result, self.now())
        self.flush()

    async def _send_keypad(self, request: SendWebhook, previous: asyncio.Task[Any] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        await self._send_webhook(request)

    def _forget_keypad(self, call_uuid: str, done: asyncio.Task[Any]) -> None:
        if self._keypad_posts.get(call_uuid) is done:
            del self._keypad_posts[call_uuid]

    async def _send_webhook(self, request: SendWebhook) -> None:
        result = await self.webhooks.send(
            request.url, request.method, request.payload, expect_ncco=True, purpose=request.purpose
        )
        self.engine.webhook_answered(request.call_uuid, request.request_id, result, self.now())
        self.flush()

    def _send_event(self, request: SendEvent) -> None:
        if self._journal is not None:
            self._journal.observe(request.payload, self.now())
        # One call's events arrive in the order they happened: each waits for the one before it.
        uuid = str(request.payload.get("uuid", ""))
        if request.payload.get("status") in FINAL_STATUSES:
            self._in_order(uuid, self._deliver_final(request.url, request.payload))
        else:
            self._in_order(uuid, self.webhooks.event(request.url, request.payload))

    def _in_order(self, key: str, work: Awaitable[Any]) -> None:
        """Run `work` after the work queued before it under `key` has finished (whatever its outcome)."""
        previous = self._event_chains.get(key)

        async def send() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await work
            if self._event_chains.get(key) is task:
                del self._event_chains[key]

        task = self._spawn(send())
        self._event_chains[key] = task

    async def _prepare_audio(self, request: PrepareAudio) -> None:
        samples: npt.NDArray[np.int16] | None
        try:
            source = request.source
            if isinstance(source, StreamSource):
                # Fetched here, with the webhook client's timeouts and size cap, never by FFmpeg itself (which
                # would block, without a timeout, through any protocol it knows, file: included).
                data = await self.webhooks.fetch_bytes(source.url)
                samples = await self._loop.run_in_executor(self._audio, self._load_stream, data, source.level)
            else:
                samples = await self._loop.run_in_executor(self._audio, self._speak, source)
        except Exception as exc:
            log.warning("call %s: cannot play %s: %s", request.call_uuid, type(request.source).__name__, exc)
            samples = None
        self.engine.audio_ready(request.call_uuid, request.playback_id, samples, self.now())
        self.flush()

    def _speak(self, source: TalkSource) -> npt.NDArray[np.int16]:
        try:
            return self._speech.synthesize(source.text, language=source.language, level=source.level)
        except UnsupportedLanguage as exc:
            log.warning("%s; speaking en-US instead", exc)
            return self._speech.synthesize(source.text, language="en-US", level=source.level)

    @staticmethod
    def _load_stream(data: bytes, level: float) -> npt.NDArray[np.int16]:
        audio = load_audio(data)
        if level:  # Vonage's level -1..1, as a gain of 0..2
            audio = np.clip(audio.astype(np.float32) * (1.0 + level), -32768, 32767).astype(np.int16)
        return audio


def run_voice_engine(server: VoiceServer) -> None:
    """Run until SIGINT/SIGTERM, on uvloop."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        loop.add_signal_handler(signal.SIGUSR1, server.log_stats)
        await server.run()

    uvloop.run(main())
