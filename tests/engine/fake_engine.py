"""A deterministic world around `VoiceEngine`: a fake clock, fake media ports, SIPp-style phones and a scripted app.

Nothing here opens a socket, starts a thread or sleeps. `World.tick()` advances the clock by 20 ms, lets every
phone send its 20 ms of RTP, ticks the engine, and delivers everything the engine drained: SIP to the phone at the
destination address, RTP to the phone whose media address it was sent to, and each `EngineRequest` to the app
script (answer NCCO, webhook answers, audio for talks and streams), whose results go straight back to the engine.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dialbridge.engine.calls import StreamSource, TalkSource, WebhookResult, parse_ncco
from dialbridge.engine.core import (
    EngineSettings,
    FetchAnswer,
    PrepareAudio,
    ReportSpeaking,
    SendEvent,
    SendWebhook,
    VoiceEngine,
)
from dialbridge.media import g711
from dialbridge.rtp.packet import RtpPacket, build_rtp, parse_rtp
from dialbridge.sip.message import SipRequest, SipResponse, parse_message

NOW = 1_800_000_000.0
TICK = 0.020
RATE = 8000
ENGINE_HOST = "198.51.100.1"
ENGINE_SIP = (ENGINE_HOST, 5060)
ANSWER_URL = "http://app.test/answer"
EVENT_URL = "http://app.test/event"
SPEAKING_URL = "http://app.test/speaking"
INPUT_URL = "http://app.test/input"
Address = tuple[str, int]
Samples = npt.NDArray[np.int16]
DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
DTMF_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip


def tone(freq: float, seconds: float, level: float = 0.3) -> Samples:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dtmf_samples(digit: str, seconds: float = 0.1, level: float = 0.25) -> Samples:
    low, high = DTMF_FREQS[digit]
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * 32767 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))).astype(np.int16)


def tone_share(samples: Samples, freq: float) -> float:
    """Share of the signal's energy within ±20 Hz of `freq` (0..1); 0 for less than 40 ms or silence."""
    if len(samples) < RATE // 25:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    total = float(spectrum.sum())
    if total < 1e-3:
        return 0.0
    return float(spectrum[(freqs > freq - 20) & (freqs < freq + 20)].sum() / total)


def rms(samples: Samples) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def offer_sdp(
    host: str,
    port: int,
    *,
    codecs: tuple[str, ...] = ("PCMU",),
    ptime: int = 20,
    telephone_event: int | None = 101,
    direction: str = "sendrecv",
    version: int = 1,
    media: str = "audio",
) -> bytes:
    numbers = {"PCMU": 0, "PCMA": 8}
    payloads = [str(numbers[c]) for c in codecs]
    lines = ["v=0", f"o=sipp 53655765 {version} IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    if media != "audio":
        lines += [f"m={media} {port} RTP/AVP 96", "a=rtpmap:96 H264/90000"]
    else:
        if telephone_event is not None:
            payloads.append(str(telephone_event))
        lines.append(f"m=audio {port} RTP/AVP {' '.join(payloads)}")
        lines += [f"a=rtpmap:{numbers[c]} {c}/8000" for c in codecs]
        if telephone_event is not None:
            lines += [f"a=rtpmap:{telephone_event} telephone-event/8000", f"a=fmtp:{telephone_event} 0-15"]
        lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


class FakePorts:
    """Even RTP ports counted open and closed; `fail` makes `open` raise as a full port range does."""

    def __init__(self, first: int = 40_000) -> None:
        self._next = first
        self.open_ports: set[int] = set()
        self.bad_closes: list[int] = []
        self.opened = 0
        self.fail = False

    def open(self) -> int:
        if self.fail:
            raise OSError("no free port pair")
        port = self._next
        self._next += 2
        self.open_ports.add(port)
        self.opened += 1
        return port

    def close(self, port: int) -> None:
        if port not in self.open_ports:
            self.bad_closes.append(port)
        self.open_ports.discard(port)


@dataclass
class Received:
    at: float
    packet: RtpPacket
    source_port: int


class Phone:
    """A SIPp-like caller: builds its requests as SIPp's scenarios send them, answers the engine's BYE, and sends
    one RTP stream (its `voice`, else silence; queued DTMF tones and RFC 4733 events on top) from `rtp_address`."""

    _ids = itertools.count(1)

    def __init__(
        self,
        world: World,
        *,
        user: str = "dialin",
        caller: str = "+15550001111",
        host: str | None = None,
        codec: str = "PCMU",
        ptime: int = 20,
        telephone_event: int | None = 101,
        voice: Samples | None = None,
        x_headers: dict[str, str] | None = None,
    ) -> None:
        n = next(self._ids)
        self.world = world
        self.user = user
        self.caller = caller
        self.host = host or f"203.0.113.{n % 250 + 1}"
        self.sip_address: Address = (self.host, 5060 + 2 * n)
        self.rtp_address: Address = (self.host, 6000 + 2 * n)
        self.codec = codec
        self.ptime = ptime
        self.telephone_event = telephone_event
        self.voice = voice
        self.x_headers = x_headers or {}
        self.call_id = f"{n}-{world.rng.getrandbits(32):08x}@{self.host}"
        self.from_tag = f"{n}SIPpTag00{n}"
        self.cseq = 1
        self.invite_branch = ""
        self.to_tag: str | None = None
        self.engine_target = f"sip:{user}@{ENGINE_HOST}:5060"
        self.responses: list[SipResponse] = []
        self.requests: list[SipRequest] = []
        self.rx: list[Received] = []
        self.media_port: int | None = None  # the engine's, from its SDP
        self.engine_sdp: bytes | None = None
        self.sending = False
        self.auto_ack = True
        self.answer_bye = True
        self.uuid: str | None = None  # the engine's call uuid, once it asked for the answer
        self.late_answer_sdp: bytes | None = None  # the SDP to put in the ACK when the INVITE had none
        self._branches = itertools.count(1)
        self._seq = world.rng.getrandbits(16)
        self._ts = world.rng.getrandbits(32)
        self._ssrc = world.rng.getrandbits(32)
        self._voice_at = 0
        self._out = np.zeros(0, np.int16)  # samples not yet packetised
        self._overlay = np.zeros(0, np.int16)  # in-band tones queued on top of the voice
        self._events: list[tuple[int, int]] = []  # RFC 4733: (event, remaining packets) being sent
        self._event_state: tuple[int, int, int, int] | None = None  # event, start ts, duration, packets left
        self._marker = True
        self._events_with_audio = False
        world.phones.append(self)

    # -- SIP ----------------------------------------------------------------------------------------------------

    def _branch(self) -> str:
        return f"z9hG4bK-{self.call_id.split('@')[0]}-{next(self._branches)}"

    def _request(
        self,
        method: str,
        *,
        cseq: int,
        branch: str,
        uri: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        content_type: str = "application/sdp",
        extra: dict[str, str] | None = None,
    ) -> bytes:
        host, port = self.sip_address
        to = f"<sip:{self.user}@{ENGINE_HOST}:5060>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri or self.engine_target} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
            f'From: "SIPp caller" <sip:{self.caller}@{host}:{port}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:sipp@{host}:{port};transport=UDP>",
            "Max-Forwards: 70",
        ]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, data: bytes) -> None:
        self.world.engine.receive_sip(data, self.sip_address, self.world.now)
        self.world.pump()

    def offer(self, **kwargs: Any) -> bytes:
        options: dict[str, Any] = {
            "codecs": (self.codec,),
            "ptime": self.ptime,
            "telephone_event": self.telephone_event,
        }
        options.update(kwargs)
        return offer_sdp(self.rtp_address[0], self.rtp_address[1], **options)

    def invite_bytes(self, sdp: bytes | None = None, *, with_sdp: bool = True) -> bytes:
        self.invite_branch = self._branch()
        body = (sdp if sdp is not None else self.offer()) if with_sdp else b""
        return self._request("INVITE", cseq=self.cseq, branch=self.invite_branch, body=body, extra=self.x_headers)

    def invite(self, sdp: bytes | None = None, *, with_sdp: bool = True) -> None:
        self.send(self.invite_bytes(sdp, with_sdp=with_sdp))

    def cancel(self) -> None:
        self.send(self._request("CANCEL", cseq=1, branch=self.invite_branch))

    def _in_dialog(
        self, method: str, body: bytes = b"", content_type: str = "application/sdp", cseq: int | None = None
    ) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = self._branch()
        if method == "INVITE":
            self.invite_branch = branch
        return self._request(
            method, cseq=cseq, branch=branch, uri=self.contact_uri(), to_tag=self.to_tag, body=body,
            content_type=content_type,
        )  # fmt: skip

    def contact_uri(self) -> str:
        for response in self.responses:
            if response.status == 200 and response.cseq.method == "INVITE" and response.contacts:
                return str(response.contacts[0].uri)
        return self.engine_target

    def bye(self) -> None:
        self.sending = False
        self.send(self._in_dialog("BYE"))

    def info(self, digit: str) -> None:
        body = f"Signal={digit}\r\nDuration=160\r\n".encode()
        self.send(self._in_dialog("INFO", body, "application/dtmf-relay"))

    def reinvite(self, sdp: bytes | None) -> None:
        self.send(self._in_dialog("INVITE", sdp or b""))

    def ack(self, response: SipResponse, sdp: bytes | None = None) -> None:
        if response.status >= 300:  # the INVITE transaction's own ACK: same branch, the 487's To
            branch, uri = self.invite_branch, self.engine_target
        else:
            branch, uri = self._branch(), self.contact_uri()
        self.send(
            self._request(
                "ACK", cseq=response.cseq.number, branch=branch, uri=uri, to_tag=response.to_addr.tag,
                body=sdp or b"",
            )
        )  # fmt: skip

    def on_sip(self, data: bytes) -> None:
        message = parse_message(data)
        if isinstance(message, SipRequest):
            self.requests.append(message)
            if message.method == "BYE":
                self.sending = False
                if self.answer_bye:
                    self.world.reply(self, message, 200)
            return
        self.responses.append(message)
        if message.cseq.method != "INVITE":
            return
        if message.to_addr.tag and self.to_tag is None and message.status > 100:
            self.to_tag = message.to_addr.tag
        if message.status == 200 and message.body:
            self.engine_sdp = message.body
            for line in message.body.decode().splitlines():
                if line.startswith("m=audio "):
                    self.media_port = int(line.split()[1]) or None
        if message.status >= 200 and self.auto_ack:
            late = self.late_answer_sdp if message.status == 200 and message.cseq.number == 1 else None
            self.ack(message, late)
            if message.status == 200 and self.media_port:
                self.sending = True

    def on_tick(self) -> None:
        """A tick has begun (before the RTP of it is sent)."""

    def statuses(self, method: str = "INVITE") -> list[int]:
        return [r.status for r in self.responses if r.cseq.method == method]

    def last(self, status: int, method: str = "INVITE") -> SipResponse:
        return next(r for r in reversed(self.responses) if r.status == status and r.cseq.method == method)

    # -- RTP ------------------------------------------------------------------------------------------------

    def key_inband(self, digit: str, seconds: float = 0.1) -> None:
        self._overlay = np.concatenate([self._overlay, dtmf_samples(digit, seconds)])

    def key_rfc4733(self, digit: str, packets: int = 5, *, with_audio: bool = False) -> None:
        """One key press as RFC 4733 events: in place of audio packets, or `with_audio` beside them (phones that
        send the event and leave the tone in the audio)."""
        self._events.append((DTMF_EVENTS[digit], packets))
        self._events_with_audio = with_audio

    def _packet(self, pt: int, payload: bytes, marker: bool, timestamp: int) -> bytes:
        packet = RtpPacket(pt, self._seq, timestamp, self._ssrc, payload, marker=marker)
        self._seq = (self._seq + 1) & 0xFFFF
        return build_rtp(packet)

    def media_tick(self) -> list[bytes]:
        """This tick's 20 ms of audio in, the datagrams due out (ptime 30: one every 1.5 ticks)."""
        frame = np.zeros(160, np.int16)
        if self.voice is not None:
            frame = np.resize(np.roll(self.voice, -self._voice_at), 160).astype(np.int16)
            self._voice_at = (self._voice_at + 160) % len(self.voice)
        if len(self._overlay):
            extra = self._overlay[:160]
            frame = np.clip(frame.astype(np.int32) + np.pad(extra, (0, 160 - len(extra))), -32768, 32767).astype(
                np.int16
            )
            self._overlay = self._overlay[160:]
        self._out = np.concatenate([self._out, frame])
        step = self.ptime * 8
        datagrams: list[bytes] = []
        pt = 0 if self.codec == "PCMU" else 8
        while len(self._out) >= step:
            chunk, self._out = self._out[:step], self._out[step:]
            if self._event_state is None and self._events and self.telephone_event is not None:
                event, count = self._events.pop(0)
                self._event_state = (event, self._ts, 0, count)
            if self._event_state is not None and self.telephone_event is not None:
                event, start, duration, left = self._event_state
                duration += step
                end = left <= 1
                body = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
                for _ in range(3 if end else 1):
                    datagrams.append(self._packet(self.telephone_event, body, duration == step, start))
                self._event_state = None if end else (event, start, duration, left - 1)
                if self._events_with_audio:
                    datagrams.append(self._packet(pt, g711.encode(self.codec, chunk), self._marker, self._ts))
            else:
                datagrams.append(self._packet(pt, g711.encode(self.codec, chunk), self._marker, self._ts))
                self._marker = False
            self._ts = (self._ts + step) & 0xFFFFFFFF
        return datagrams

    def heard(self, since: float = 0.0, until: float = float("inf")) -> Samples:
        """What the engine sent us (audio payload types only), decoded, in order."""
        chunks = []
        for item in self.rx:
            pt = item.packet.payload_type
            if since <= item.at < until and pt in (0, 8):
                chunks.append(g711.decode("PCMA" if pt == 8 else "PCMU", item.packet.payload))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def packets(self, since: float = 0.0) -> list[RtpPacket]:
        return [item.packet for item in self.rx if item.at >= since]


class Callee(Phone):
    """A phone the engine calls, answering as SIPp's UAS scenarios do: 100 and 180 at once, then — `answer` set —
    that final status (200 with its SDP answer). `challenge`: the first INVITE gets a 401 with this digest
    challenge first. It answers BYE and CANCEL, and sends RTP once it has answered, from `rtp_address`. What it
    sends reaches the engine at the next tick, as over a network, not while the engine is still sending."""

    def __init__(
        self,
        world: World,
        *,
        host: str,
        sip_port: int = 5060,
        answer: int | None = 200,
        challenge: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(world, host=host, **kwargs)
        self.sip_address = (host, sip_port)
        self.answer = answer
        self.challenge = challenge
        self.invites: list[SipRequest] = []
        self.answered_invite: SipRequest | None = None
        self.my_tag = f"callee{self.from_tag}"
        self.contact = f"sip:callee@{host}:{sip_port}"  # what its responses' Contact names (behind NAT: not it)
        self._outbox: list[bytes] = []

    def send(self, data: bytes) -> None:
        self._outbox.append(data)

    def on_tick(self) -> None:
        outbox, self._outbox = self._outbox, []
        for data in outbox:
            super().send(data)

    def on_sip(self, data: bytes) -> None:
        message = parse_message(data)
        if isinstance(message, SipResponse):
            self.responses.append(message)
            return
        self.requests.append(message)
        if message.method == "INVITE":
            self.invites.append(message)
            if self.challenge is not None and len(self.invites) == 1:
                self.respond(message, 401, extra={"WWW-Authenticate": self.challenge})
                return
            self.respond(message, 100)
            self.respond(message, 180)
            if self.answer is not None:
                self.answer_invite(self.answer)
        elif message.method == "BYE":
            self.sending = False
            self.respond(message, 200)
        elif message.method == "CANCEL":
            self.respond(message, 200)
            self.respond(self.invites[-1], 487)

    def answer_invite(self, status: int = 200) -> None:
        invite = self.invites[-1]
        if status != 200:
            self.respond(invite, status)
            return
        for line in (invite.body or b"").decode().splitlines():
            if line.startswith("m=audio "):
                self.media_port = int(line.split()[1])
        self.answered_invite = invite
        self.respond(invite, 200, self.offer())
        self.sending = True

    def respond(self, request: SipRequest, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        to = request.headers.get("To") or ""
        lines = [f"SIP/2.0 {status} Whatever"]
        lines += [f"Via: {via}" for via in request.headers.get_all("Via")]
        lines += [
            f"From: {request.headers.get('From')}",
            f"To: {to}" + (f";tag={self.my_tag}" if status > 100 and ";tag=" not in to else ""),
            f"Call-ID: {request.call_id}",
            f"CSeq: {request.headers.get('CSeq')}",
            f"Contact: <{self.contact}>",
        ]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def hang_up(self) -> None:
        """A BYE in the dialog of the answered INVITE, as the called party sends it."""
        invite = self.answered_invite
        assert invite is not None
        host, port = self.sip_address
        contact = invite.contacts[0].uri if invite.contacts else invite.uri
        self.sending = False
        lines = [
            f"BYE {contact} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={self._branch()};rport",
            f"From: {invite.headers.get('To')};tag={self.my_tag}",
            f"To: {invite.headers.get('From')}",
            f"Call-ID: {invite.call_id}",
            f"CSeq: {self.cseq + 1} BYE",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())


AnswerScript = Callable[[FetchAnswer], WebhookResult | None]
WebhookScript = Callable[[SendWebhook], WebhookResult | None]


def ok(ncco: list[dict[str, Any]] | None) -> WebhookResult:
    return WebhookResult(True, 200, parse_ncco(ncco) if ncco is not None else None, None, 0.01)


def kept(inputs: list[SendWebhook], request: SendWebhook) -> WebhookResult:
    """An input webhook the app answers with nothing more to do, kept for the test to look at."""
    inputs.append(request)
    return ok(None)


def failed(error: str = "connection refused") -> WebhookResult:
    return WebhookResult(False, None, None, error, 0.5)


@dataclass
class World:
    """The engine, its clock, the phones, and the application's scripted answers."""

    settings: EngineSettings = field(
        default_factory=lambda: EngineSettings(
            contact_host=ENGINE_HOST, contact_port=5060, answer_url=ANSWER_URL, event_url=EVENT_URL
        )
    )
    seed: int = 7
    answer: AnswerScript | None = None  # None result: hold the request (the test answers it later)
    webhook: WebhookScript | None = None
    audio: dict[str, Samples] = field(default_factory=dict)  # talk text / stream URL -> audio
    default_audio: Samples = field(default_factory=lambda: tone(300.0, 0.5))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = NOW
        self.ports = FakePorts()
        counter = itertools.count(1)
        self.engine = VoiceEngine(
            self.settings,
            self.ports,
            self.now,
            random=random.Random(self.seed + 1),
            new_uuid=lambda: f"00000000-0000-4000-8000-{next(counter):012d}",
        )
        self.phones: list[Phone] = []
        self.events: list[dict[str, Any]] = []
        self.event_urls: dict[str, set[str]] = {}  # by call uuid: where its events went
        self.speaking_reports: list[tuple[float, dict[str, Any]]] = []
        self.fetches: list[FetchAnswer] = []
        self.held_fetches: list[FetchAnswer] = []
        self.webhooks: list[SendWebhook] = []
        self.held_webhooks: list[SendWebhook] = []
        self.prepares: list[PrepareAudio] = []
        self.held_audio: list[PrepareAudio] = []
        self.hold_audio = False
        self.stray_sip: list[tuple[Address, bytes]] = []
        self.stray_rtp: list[tuple[int, bytes, Address]] = []
        self.rtcp_out: list[tuple[int, bytes, Address]] = []
        self.audio_ready_at: dict[tuple[str, int], float] = {}

    # -- plumbing -------------------------------------------------------------------------------------------

    def phone(self, **kwargs: Any) -> Phone:
        return Phone(self, **kwargs)

    def reply(self, phone: Phone, request: SipRequest, status: int) -> None:
        lines = [f"SIP/2.0 {status} OK"]
        lines += [f"Via: {via}" for via in request.headers.get_all("Via")]
        lines += [
            f"From: {request.headers.get('From')}",
            f"To: {request.headers.get('To')}",
            f"Call-ID: {request.call_id}",
            f"CSeq: {request.headers.get('CSeq')}",
            "Content-Length: 0",
        ]
        phone.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def audio_for(self, source: TalkSource | StreamSource) -> Samples:
        key = source.text if isinstance(source, TalkSource) else source.url
        return self.audio.get(key, self.default_audio)

    def pump(self) -> None:
        """Deliver everything the engine has drained, and what that causes, until it is quiet."""
        for _ in range(1000):
            sip, rtp, requests = self.engine.drain()
            if not (sip or rtp or requests):
                return
            for out in sip:
                phone = next((p for p in self.phones if p.sip_address == out.destination), None)
                if phone is None:
                    self.stray_sip.append((out.destination, out.data))
                else:
                    phone.on_sip(out.data)
            for port, data, destination in rtp:
                if len(data) >= 2 and 192 <= data[1] <= 223:  # RTCP, from the port above the RTP port
                    self.rtcp_out.append((port, data, destination))
                    continue
                phone = next((p for p in self.phones if p.rtp_address == destination), None)
                if phone is None:
                    self.stray_rtp.append((port, data, destination))
                else:
                    phone.rx.append(Received(self.now, parse_rtp(data), port))
            for request in requests:
                self._handle(request)
        raise AssertionError("the engine never went quiet")

    def _handle(self, request: object) -> None:
        engine = self.engine
        if isinstance(request, SendEvent):
            self.events.append(request.payload)
            self.event_urls.setdefault(str(request.payload.get("uuid")), set()).add(request.url)
        elif isinstance(request, ReportSpeaking):
            self.speaking_reports.append((self.now, request.payload))
        elif isinstance(request, FetchAnswer):
            self.fetches.append(request)
            call = engine.calls.get(request.call_uuid)
            for phone in self.phones:
                if call is not None and phone.sip_address == call.source:
                    phone.uuid = request.call_uuid
            result = self.answer(request) if self.answer is not None else None
            if result is None:
                self.held_fetches.append(request)
            else:
                engine.answer_fetched(request.call_uuid, result, self.now)
        elif isinstance(request, SendWebhook):
            self.webhooks.append(request)
            result = self.webhook(request) if self.webhook is not None else None
            if result is None:
                self.held_webhooks.append(request)
            else:
                engine.webhook_answered(request.call_uuid, request.request_id, result, self.now)
        elif isinstance(request, PrepareAudio):
            self.prepares.append(request)
            if self.hold_audio:
                self.held_audio.append(request)
            else:
                self.audio_ready_at[(request.call_uuid, request.playback_id)] = self.now
                engine.audio_ready(request.call_uuid, request.playback_id, self.audio_for(request.source), self.now)
        else:
            raise AssertionError(f"unknown request {request!r}")

    # -- the clock ------------------------------------------------------------------------------------------

    def tick(self, count: int = 1, step: float = TICK) -> None:
        for _ in range(count):
            self.now = round(self.now + step, 6)
            for phone in list(self.phones):
                phone.on_tick()
            for phone in self.phones:
                if phone.sending and phone.media_port is not None:
                    for datagram in phone.media_tick():
                        self.engine.receive_rtp(phone.media_port, datagram, phone.rtp_address, self.now)
            self.engine.tick(self.now)
            self.pump()

    def run(self, seconds: float) -> None:
        self.tick(round(seconds / TICK))

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let time pass in coarse steps (the shell skips ahead like this when it falls behind): timers run out."""
        self.tick(round(seconds / step), step)

    def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        for _ in range(round(seconds / TICK)):
            if condition():
                return
            self.tick()
        assert condition(), f"not reached within {seconds} s"

    # -- what the app saw -----------------------------------------------------------------------------------

    def statuses(self, uuid: str) -> list[str]:
        return [e["status"] for e in self.events if e.get("uuid") == uuid]

    def event(self, uuid: str, status: str) -> dict[str, Any]:
        return next(e for e in self.events if e.get("uuid") == uuid and e["status"] == status)

    def uuid_of(self, phone: Phone) -> str:
        assert phone.uuid is not None, "the engine has not asked for this phone's answer"
        return phone.uuid

    def idle(self) -> dict[str, Any]:
        """Everything that must be empty once every call is over and every timer has run out."""
        engine = self.engine
        tables = {k: v for k, v in engine.agent.table_sizes().items() if v}
        return {
            "calls": list(engine.calls),
            "conferences": engine.mixer.conferences(),
            "started_conferences": sorted(engine._started),
            "dtmf_streams": engine._dtmf.streams(),
            "ports": sorted(self.ports.open_ports),
            "bad_closes": self.ports.bad_closes,
            "sip_tables": tables,
            "by_leg": len(engine._by_leg),
            "by_port": len(engine._by_port),
            "media_rows": len(engine._media),
        }


IDLE: dict[str, Any] = {
    "calls": [],
    "conferences": [],
    "started_conferences": [],
    "dtmf_streams": [],
    "ports": [],
    "bad_closes": [],
    "sip_tables": {},
    "by_leg": 0,
    "by_port": 0,
    "media_rows": 0,
}
