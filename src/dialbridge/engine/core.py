"""The voice engine's calls, sans-I/O: SIP and RTP bytes, webhook answers and the clock in; bytes and requests out.

The engine is a local stand-in for the call side of Vonage's Voice API. For every call it asks the application's
answer webhook what to do, runs the NCCO it gets (talk, stream, input, conversation, notify) and reports each
state to the event webhook — it never sees rooms or PINs, so one call flow serves both backends.

`VoiceEngine` owns no socket, thread or clock. The shell (`engine/shell.py`) feeds it datagrams with `receive_*`,
calls `tick(now)` every 20 ms, carries out the `EngineRequest`s it emits (HTTP, speech synthesis, file loading)
and hands their results back. Everything with a deadline is checked on `tick`, so a test drives a whole call —
retransmissions, input timeouts, audio — with a fake clock.

Media, per tick, for every call at once: each call's RTP session yields 160 encoded bytes; one numpy step decodes
them all, the in-band DTMF bank and the conference mixer run over the decoded matrix, prompts are added to the
calls playing one, one step encodes them all, and each session packetises its row.
"""

from __future__ import annotations

import ipaddress
import logging
import random as random_module
import re
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from dialbridge import sdp
from dialbridge.engine.calls import (
    Action,
    CallInfo,
    Command,
    Connect,
    Conversation,
    EndConnected,
    Hangup,
    JoinConversation,
    LeaveConversation,
    NccoRunner,
    PhoneEndpoint,
    PlaceCall,
    Play,
    PostWebhook,
    StopPlayback,
    StreamSource,
    TalkSource,
    WebhookResult,
    answer_query,
    event_payload,
    timestamp,
)
from dialbridge.engine.calls.ncco import Endpoint
from dialbridge.engine.calls.payloads import INBOUND, OUTBOUND
from dialbridge.engine.deadlines import Deadlines
from dialbridge.engine.playback import FRAME, Playback
from dialbridge.log_text import escaped_for_log
from dialbridge.media import g711, tones
from dialbridge.media.dtmf import InbandDtmfBank
from dialbridge.media.mixer import ConferenceMixer
from dialbridge.rate import SourceRate
from dialbridge.rtp.events import event_to_digit
from dialbridge.rtp.session import DtmfUnavailable, RtpSession
from dialbridge.sip.agent import (
    DEFAULT_MAX_SERVER_TRANSACTIONS,
    CallAnswered,
    CallCancelled,
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallProgress,
    IncomingCall,
    InfoReceived,
    OfferAnswered,
    OfferReceived,
    Outgoing,
    SipAgent,
    SipEvent,
)
from dialbridge.sip.auth import DigestCredentials
from dialbridge.sip.message import SipParseError, SipUri, trunk_uri
from dialbridge.sip.registrar import DEFAULT_DIGEST_ALGORITHMS, Registrar, SipAccount

log = logging.getLogger(__name__)
Address = tuple[str, int]
# application/dtmf-relay: "Signal=" and the key, as itself or as its RFC 4733 event code (10 is *, 11 is #).
DTMF_RELAY = re.compile(rb"signal\s*=\s*([0-9]{1,2}|[*#A-D])(?![0-9A-Z])", re.IGNORECASE)
RATE_WINDOW_S = 60.0
MEDIA_CHECK_S = 1.0  # how often calls are looked over for a silent peer (rtp_timeout_s)
MESSAGE_RATE_WINDOW_S = 1.0
# With a 488 for an offer without a codec we take (RFC 3261 §20.43; a pseudonym as the warn-agent: valid for any host).
INCOMPATIBLE_MEDIA = {"Warning": '305 dialbridge "Incompatible media format"'}
SAME_PRESS_S = 0.5  # a signalled digit this soon after the same key was heard in-band is that press again
SPEAKING_REPORT_S = 0.25
# How a call we placed that never connected is reported (Vonage's outbound statuses), by the final SIP status.
_UNCONNECTED_STATUS = {486: "busy", 600: "busy", 403: "rejected", 603: "rejected"}


class MediaPorts(Protocol):
    """Where calls get their RTP port (even) and RTCP port (+1); the shell binds the sockets."""

    def open(self) -> int: ...  # raises OSError when no port pair is free

    def close(self, port: int) -> None: ...


# What the engine asks its shell to do; each result comes back through the matching VoiceEngine method.
@dataclass(frozen=True, slots=True)
class FetchAnswer:
    call_uuid: str
    url: str
    query: dict[str, str]


@dataclass(frozen=True, slots=True)
class SendWebhook:
    call_uuid: str
    request_id: int
    url: str
    method: str
    payload: dict[str, Any]
    purpose: str  # "input" | "notify": both may answer with an NCCO that replaces the rest of the call's


@dataclass(frozen=True, slots=True)
class SendEvent:
    url: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReportSpeaking:
    """Who in one conversation is speaking now: POSTed to the application when that changes (at most every
    `SPEAKING_REPORT_S`), so that a room can show it; the latest report replaces the ones before it."""

    url: str
    conversation: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PrepareAudio:
    """Synthesise a talk or load a stream; answer with `audio_ready`."""

    call_uuid: str
    playback_id: int
    source: TalkSource | StreamSource


EngineRequest = FetchAnswer | SendWebhook | SendEvent | ReportSpeaking | PrepareAudio
SignalledDtmf = Literal["rfc4733", "info"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    contact_host: str
    contact_port: int
    answer_url: str
    event_url: str
    dial_in_user: str = "dialin"
    dial_in_number: str | None = None  # E.164 with +
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_calls: int = 500
    # Calls answered or ringing whose caller has not ACKed yet, in all and per caller network (/24, /64): a caller
    # that never ACKs holds a line for 64*T1, so these caps keep lines free for callers that do.
    max_unconfirmed_calls: int = 100
    max_unconfirmed_calls_per_network: int = 10
    #: An answered call from which no RTP or RTCP has come for this long (the phone gone without a BYE: its
    #: network, its battery, a TCP connection closed and never back) is hung up; 0: never. Not while on hold.
    rtp_timeout_s: float = 60.0
    invites_per_source_per_minute: int = 120
    # Every SIP message, counted before it is parsed: past this a source's messages are dropped unread.
    messages_per_source_per_second: int = 100
    # SIP server transactions held at once: over it, new requests get a stateless 503 (see the agent's default).
    max_sip_server_transactions: int = DEFAULT_MAX_SERVER_TRANSACTIONS
    join_tone: bool = True
    speaking_url: str | None = None  # where to report who speaks in each conversation; None: nowhere
    # Where calls to phone numbers go (a connect's phone endpoint): the trunk's URI, the number as its user part.
    sip_trunk_uri: str | None = None
    sip_trunk_username: str | None = None
    sip_trunk_password: str | None = field(default=None, repr=False)
    sip_accounts: tuple[SipAccount, ...] = ()  # softphones that register; none: REGISTER gets 405
    sip_digest_algorithms: tuple[str, ...] = DEFAULT_DIGEST_ALGORITHMS  # what their challenges offer, the best first


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """A call as the call-control API shows it."""

    uuid: str
    conversation_uuid: str
    from_: str
    to: str
    status: str
    start_time: float
    end_time: float | None
    duration: int | None
    muted: bool
    earmuffed: bool
    conversation: str | None
    direction: str = INBOUND


@dataclass(slots=True)
class EngineStats:
    calls_by_state: dict[str, int] = field(default_factory=dict)
    calls_total: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    sip_dropped: int = 0  # SIP messages over their source's rate, dropped unparsed
    rtp_in: int = 0
    rtp_out: int = 0
    digits: int = 0


class Call:
    """One phone call: its SIP leg, its media, its NCCO, and what it is hearing."""

    __slots__ = (
        "account",
        "alaw",
        "answered_at",
        "conference",
        "confirmed",
        "connect",
        "conversation",
        "conversation_uuid",
        "direction",
        "dtmf_source",
        "earmuffed",
        "ended",
        "ended_at",
        "event_url",
        "from_",
        "hold",
        "inband",
        "inband_heard",
        "leg_id",
        "length_limit",
        "limit_at",
        "local_sdp",
        "muted",
        "network",
        "on_answer",
        "overlay",
        "peer",
        "playback",
        "port",
        "rtp",
        "runner",
        "sdp_session_id",
        "sdp_version",
        "source",
        "started_at",
        "state",
        "to",
        "uuid",
        "x_headers",
    )

    def __init__(
        self,
        leg_id: str,
        uuid: str,
        conversation_uuid: str,
        from_: str,
        to: str,
        now: float,
        *,
        event_url: str,
        direction: str = INBOUND,
    ) -> None:
        self.leg_id = leg_id
        self.uuid = uuid
        self.conversation_uuid = conversation_uuid
        self.from_ = from_
        self.to = to
        self.state = "started"
        self.started_at = now
        self.answered_at: float | None = None
        self.ended = False
        self.port: int | None = None
        self.rtp: RtpSession | None = None
        self.alaw = False
        self.local_sdp: bytes | None = None
        self.sdp_session_id = 0  # our o= line's: the same in every SDP of the call (RFC 3264 §8)
        self.sdp_version = 1
        self.runner: NccoRunner | None = None
        self.playback: Playback | _PendingPlayback | None = None
        self.overlay: Playback | _PendingPlayback | None = None  # PUT /talk, /stream: on top of everything
        self.hold: Playback | _PendingPlayback | None = None  # music on hold until the conference starts
        self.ended_at: float | None = None
        self.muted = False
        self.earmuffed = False
        self.conference: str | None = None
        self.conversation: Conversation | None = None
        self.inband = False  # in-band DTMF detection runs on this call (until a signalled digit arrives)
        self.inband_heard: tuple[str, float] | None = None  # the last digit detected in-band, and when
        self.dtmf_source: SignalledDtmf | None = None  # how this call signals digits, from its first signalled one
        self.source: Address = ("", 0)
        self.network = ""  # the caller's /24 or /64 (`_caller_network`)
        self.confirmed = False  # the caller has ACKed our answer
        self.x_headers: dict[str, str] = {}
        self.direction = direction
        self.event_url = event_url  # where this call's events go
        self.peer: str | None = None  # the other call of a connect: the one it placed, or the one that placed it
        self.connect: Connect | None = None  # on a call a connect placed: that action
        self.length_limit = 0.0  # a call we placed: how long it may last once answered (seconds)
        self.limit_at: float | None = None  # ... and when it has lasted that long
        # A call placed by POST /v1/calls: the NCCO to run when it is answered, or the answer URL to ask for one.
        self.on_answer: tuple[Action, ...] | str | None = None
        self.account: SipAccount | None = None  # the registrar's account the caller authenticated as

    @property
    def info(self) -> CallInfo:
        return CallInfo(uuid=self.uuid, conversation_uuid=self.conversation_uuid, from_=self.from_, to=self.to)


class VoiceEngine:
    def __init__(
        self,
        settings: EngineSettings,
        ports: MediaPorts,
        now: float,
        *,
        random: random_module.Random | None = None,
        new_uuid: Callable[[], str] = lambda: str(uuid_module.uuid4()),
    ) -> None:
        self.settings = settings
        self._ports = ports
        self._random = random or random_module.Random()
        self._new_uuid = new_uuid
        registrar = None
        if settings.sip_accounts:
            registrar = Registrar(
                settings.sip_accounts, domain=settings.contact_host, digest_algorithms=settings.sip_digest_algorithms
            )
        self.agent = SipAgent(
            contact_host=settings.contact_host,
            contact_port=settings.contact_port,
            registrar=registrar,
            max_server_transactions=settings.max_sip_server_transactions,
        )
        self.mixer = ConferenceMixer()
        self._dtmf = InbandDtmfBank()
        self.calls: dict[str, Call] = {}  # by uuid
        self._by_leg: dict[str, Call] = {}
        self._by_port: dict[int, Call] = {}
        self._media: list[Call] = []  # calls with an RTP session, in the rows of the tick's matrices
        # Each call's next NCCO or length-limit deadline, and its next RTCP report: a tick looks only at the calls
        # with one due. Filed again after whatever may move them (`_run`, an answer, a report sent).
        self._timers: Deadlines[Call] = Deadlines(_call_deadline)
        self._rtcp: Deadlines[Call] = Deadlines(_rtcp_deadline)
        self._alaw = np.zeros(0, np.bool_)
        self._requests: list[EngineRequest] = []
        self._rtp_out: list[tuple[int, bytes, Address]] = []
        self._sip_out: list[Outgoing] = []
        self._pending_sip_events: list[SipEvent] = []
        self._next_id = 0
        self._invites: SourceRate[str] = SourceRate(settings.invites_per_source_per_minute, RATE_WINDOW_S)
        self._next_media_check = 0.0
        self._messages: SourceRate[str] = SourceRate(settings.messages_per_source_per_second, MESSAGE_RATE_WINDOW_S)
        self.stats = EngineStats()
        self._ended: deque[CallSnapshot] = deque(maxlen=1000)
        self._started: set[str] = set()  # conferences a startOnEnter member has joined
        self._speaking: frozenset[str] = frozenset()  # the members speaking, as of the last mix
        self._speaking_changed: set[str] = set()  # conferences with a change not reported yet
        self._next_speaking_report = 0.0
        self._join_tone = tones.join_tone() if settings.join_tone else None
        self._leave_tone = tones.leave_tone() if settings.join_tone else None

    # ---- input ---------------------------------------------------------------------------------------------

    def receive_sip(self, data: bytes, source: Address, now: float, transport: str = "udp") -> None:
        # Counted before anything is parsed, so that a flood from one address costs a table lookup per message, not
        # a parse, a transaction and an answer. Over the rate it is dropped unanswered: an answer would need the
        # parse, and would go to whoever the flood spoofs; a real client's retransmission gets through a second on.
        if not self._messages.allow(source[0], now) and not self._is_trunk(source[0]):
            self.stats.sip_dropped += 1
            return
        self.agent.receive(data, source, now, transport)
        self._after_sip(now)

    def answer_parse_error(self, error: SipParseError, peer: Address, now: float) -> None:
        """A TCP stream that could not be framed: answer what can be addressed (400/513) before it is closed."""
        self.agent.answer_parse_error(error, peer, "tcp")
        self._after_sip(now)

    def transport_failed(self, peer: Address, now: float) -> None:
        """`peer` cannot be reached: its TCP connection is gone (its calls end), or a message to it could not be
        sent (an unknown name, an address of the other family: its transactions fail)."""
        self.agent.transport_failed(peer, now)
        self._after_sip(now)

    def tcp_peers_in_use(self) -> set[Address]:
        """The TCP peers whose connections carry a call or a transaction (not to be closed as idle)."""
        return self.agent.reliable_peers_in_use()

    def source_table_sizes(self) -> dict[str, int]:
        """How many sources each rate limit remembers: all zero once a window has passed in silence."""
        return {"invites": self._invites.sources, "sip_messages": self._messages.sources}

    def receive_rtp(self, port: int, data: bytes, source: Address, now: float) -> None:
        call = self._by_port.get(port)
        if call is None or call.rtp is None:
            return
        self.stats.rtp_in += 1
        for digit in call.rtp.receive(data, source, now):
            self._signalled_digit(call, digit.digit, "rfc4733", now)

    def receive_rtcp(self, port: int, data: bytes, source: Address, now: float) -> None:
        call = self._by_port.get(port)
        if call is not None and call.rtp is not None:
            call.rtp.receive_rtcp(data, source, now)

    def answer_fetched(self, call_uuid: str, result: WebhookResult, now: float) -> None:
        call = self.calls.get(call_uuid)
        if call is None or call.ended:
            return
        if result.ok and result.ncco is not None:
            self._answer(call, result.ncco, now)
            return
        # Never silence, never a hang: the caller is answered, hears an apology, and the event says why.
        log.warning("answer webhook for call %s failed: %s", call.uuid, result.error)
        self._answer(call, None, now, failure=f"answer webhook failed: {result.error}")

    def webhook_answered(self, call_uuid: str, request_id: int, result: WebhookResult, now: float) -> None:
        call = self.calls.get(call_uuid)
        if call is None or call.ended or call.runner is None:
            return
        self._run(call, call.runner.webhook_answered(request_id, result, now), now)

    def audio_ready(self, call_uuid: str, playback_id: int, samples: npt.NDArray[np.int16] | None, now: float) -> None:
        """The audio of a `PrepareAudio`; None when it could not be made (the playback counts as finished)."""
        call = self.calls.get(call_uuid)
        if call is None or call.ended or call.runner is None:
            return
        if playback_id < 0:  # the engine's own: a PUT /talk or /stream, or music on hold
            for slot in ("overlay", "hold"):
                pending = getattr(call, slot)
                if isinstance(pending, _PendingPlayback) and pending.playback_id == playback_id:
                    ready = None if samples is None else Playback(playback_id, samples, pending.loop_count)
                    setattr(call, slot, ready)
            return
        if call.playback is not None and call.playback.playback_id == playback_id:
            if samples is None:
                call.playback = None
                self._run(call, call.runner.playback_finished(playback_id, now), now)
            else:
                loop = call.playback.loop_count if isinstance(call.playback, _PendingPlayback) else 1
                call.playback = Playback(playback_id, samples, loop)

    # ---- call control (the REST API's verbs) ---------------------------------------------------------------

    def snapshots(self, conversation_uuid: str | None = None, now: float | None = None) -> list[CallSnapshot]:
        """Live calls, then the most recent ended ones (Vonage lists both); a live call's duration is up to `now`."""
        live = [self._snapshot(call, now) for call in self.calls.values()]
        found = [*live, *reversed(self._ended)]
        if conversation_uuid is not None:
            found = [snap for snap in found if snap.conversation_uuid == conversation_uuid]
        return found

    def snapshot(self, call_uuid: str, now: float | None = None) -> CallSnapshot | None:
        call = self.calls.get(call_uuid)
        if call is not None:
            return self._snapshot(call, now)
        return next((snap for snap in self._ended if snap.uuid == call_uuid), None)

    def hangup(self, call_uuid: str, now: float, reason: str = "hangup") -> bool:
        call = self._live(call_uuid)
        if call is None:
            return False
        self._end(call, now, reason, send_bye=True)
        return True

    def set_muted(self, call_uuid: str, muted: bool) -> bool:
        call = self._live(call_uuid)
        if call is None:
            return False
        call.muted = muted
        if call.conference is not None:
            self.mixer.set_can_speak(call.uuid, self._can_speak(call))
        return True

    def set_earmuffed(self, call_uuid: str, earmuffed: bool) -> bool:
        call = self._live(call_uuid)
        if call is None:
            return False
        call.earmuffed = earmuffed
        if call.conference is not None:
            self.mixer.set_can_hear(call.uuid, self._can_hear(call))
        return True

    def transfer(self, call_uuid: str, ncco: tuple[Action, ...], now: float) -> bool:
        call = self._live(call_uuid)
        if call is None or call.runner is None:
            return False
        if call.conference is not None:
            self._leave_conference(call, now)
        call.playback = None
        self._run(call, call.runner.transfer(ncco, now), now)
        return True

    def play_into_call(self, call_uuid: str, source: TalkSource | StreamSource) -> bool:
        """PUT /talk or /stream: heard on top of whatever the call hears, until it ends or is stopped. False for a
        call that is not live; ValueError for one still ringing."""
        call = self._live(call_uuid)
        if call is None:
            return False
        if call.runner is None:  # ringing: its NCCO has not come yet, and audio made now would have nowhere to go
            raise ValueError("the call is not answered yet; talk and stream play into answered calls")
        call.overlay = self._prepare_audio(call, source)
        return True

    def _prepare_audio(self, call: Call, source: TalkSource | StreamSource) -> _PendingPlayback:
        """Ask the shell for audio the engine plays itself (not the runner): what the call holds until it is ready."""
        self._next_id -= 1  # negative ids: never one of the runner's playbacks
        self._requests.append(PrepareAudio(call.uuid, self._next_id, source))
        return _PendingPlayback(self._next_id, source.loop)

    def stop_playing_into_call(self, call_uuid: str) -> bool:
        call = self._live(call_uuid)
        if call is None or call.overlay is None:
            return False
        call.overlay = None
        return True

    def send_dtmf(self, call_uuid: str, digits: str, now: float) -> bool:
        call = self._live(call_uuid)
        if call is None or call.rtp is None:
            return False
        try:
            call.rtp.send_dtmf(digits, now)
        except DtmfUnavailable:
            raise ValueError("this call's SDP has no telephone-event: it cannot be sent DTMF") from None
        return True

    def create_call(
        self,
        to: Endpoint,
        from_: str,
        answer: tuple[Action, ...] | str,
        now: float,
        *,
        event_url: str | None = None,
        ringing_timer: float = 60.0,
        length_timer: float = 7200.0,
    ) -> CallSnapshot:
        """POST /v1/calls: call `to`; once it answers, run `answer` on it (an NCCO, or the answer URL to GET one
        from, as for a call that comes in). Its events go to `event_url` (else the application's). A call that
        cannot be placed comes back ended, `failed`."""
        call = self._dial(
            to, from_, event_url or self.settings.event_url, "CON-" + self._new_uuid(), now, ringing_timer, length_timer
        )
        call.on_answer = answer
        return self._snapshot(call, now)

    def _live(self, call_uuid: str) -> Call | None:
        call = self.calls.get(call_uuid)
        return None if call is None or call.ended else call

    def _snapshot(self, call: Call, now: float | None = None) -> CallSnapshot:
        start = call.answered_at
        end = call.ended_at if call.ended_at is not None else now
        return CallSnapshot(
            uuid=call.uuid,
            conversation_uuid=call.conversation_uuid,
            from_=call.from_,
            to=call.to,
            status=call.state,
            start_time=call.started_at,
            end_time=call.ended_at,
            duration=None if start is None else round((end if end is not None else start) - start),
            muted=call.muted,
            earmuffed=call.earmuffed,
            conversation=call.conference,
            direction=call.direction,
        )

    # ---- the clock -----------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Every 20 ms: timers, then one frame of audio in and out for every call."""
        self.run_timers(now)
        self.run_media(now)

    def run_timers(self, now: float) -> None:
        """The first half of `tick`: SIP and NCCO timers, and the rate tables' upkeep."""
        self.agent.on_timer(now)
        self._after_sip(now)
        self._invites.forget_idle(now)
        self._messages.forget_idle(now)
        if now >= self._next_media_check:
            self._next_media_check = now + MEDIA_CHECK_S
            self._end_silent_calls(now)
        with self._timers.due(now) as due_calls:
            for call in due_calls:
                if call.ended:  # ended by an earlier one's commands
                    continue
                runner = call.runner
                if runner is not None:
                    due = runner.next_timer()
                    if due is not None and due <= now:
                        self._run(call, runner.on_timer(now), now)
                if not call.ended and call.limit_at is not None and call.limit_at <= now:
                    self._end(call, now, "limit", send_bye=True)

    def _end_silent_calls(self, now: float) -> None:
        """Hang up answered calls whose peer has sent no RTP or RTCP for `rtp_timeout_s` while it should have."""
        timeout = self.settings.rtp_timeout_s
        if timeout <= 0:
            return
        for call in list(self._media):
            rtp = call.rtp
            if call.ended or rtp is None or not call.confirmed or not rtp.expects_media:
                continue
            if now - rtp.heard_at > timeout:
                log.info("call %s: no RTP or RTCP for %g s; hanging up", call.uuid, timeout)
                self._end(call, now, "rtp_timeout", send_bye=True)

    def run_media(self, now: float) -> None:
        """The second half of `tick`: one frame of audio in and out for every call, and the RTCP reports due."""
        self._mix(now)
        if self._speaking_changed and now >= self._next_speaking_report:
            self._report_speaking(now)
        with self._rtcp.due(now) as due_calls:
            for call in due_calls:
                rtp = call.rtp
                if rtp is not None and call.port is not None and not call.ended:
                    report = rtp.rtcp_due(now)
                    if report is not None and rtp.rtcp_destination is not None:
                        self._rtp_out.append((call.port + 1, report, rtp.rtcp_destination))

    def drain(self) -> tuple[list[Outgoing], list[tuple[int, bytes, Address]], list[EngineRequest]]:
        """SIP to send, RTP/RTCP to send (from local port, data, destination), and requests for the shell."""
        # What commands since the last SIP input made the agent send (a 200 OK, a BYE) goes out now, not a tick
        # later; the events they caused are handled with the next input or tick.
        events, outgoing = self.agent.drain()
        self._sip_out.extend(outgoing)
        self._pending_sip_events.extend(events)
        sip, self._sip_out = self._sip_out, []
        rtp, self._rtp_out = self._rtp_out, []
        requests, self._requests = self._requests, []
        return sip, rtp, requests

    # ---- SIP events ----------------------------------------------------------------------------------------

    def _after_sip(self, now: float) -> None:
        """Handle what the agent reported, until it reports nothing more: commands given while handling one event
        (a reject, a hangup) may produce further events, which are handled the same way."""
        events, outgoing = self.agent.drain()
        self._sip_out.extend(outgoing)
        events = [*self._pending_sip_events, *events]
        self._pending_sip_events = []
        while events:
            for event in events:
                self._sip_event(event, now)
            events, outgoing = self.agent.drain()
            self._sip_out.extend(outgoing)

    def _sip_event(self, event: SipEvent, now: float) -> None:
        if isinstance(event, IncomingCall):
            self._incoming(event, now)
            return
        call = self._by_leg.get(event.leg_id)
        if call is None:
            return
        if isinstance(event, CallConfirmed):
            call.confirmed = True
            self._confirmed(call, event.sdp, now)
        elif isinstance(event, CallCancelled):
            call.state = "cancelled"
            self._end(call, now, "cancelled", send_bye=False)
        elif isinstance(event, CallEnded):
            self._end(call, now, event.reason, send_bye=False)
        elif isinstance(event, OfferReceived):
            self._reoffer(call, event.sdp, now)
        elif isinstance(event, InfoReceived):
            digit = _relayed_digit(event.body) if "dtmf" in event.content_type.lower() else None
            if digit is not None:
                self._signalled_digit(call, digit, "info", now)
        elif isinstance(event, CallProgress):
            if call.state == "started" and event.status in (180, 183):
                self._event(call, "ringing", now)
        elif isinstance(event, CallAnswered):
            self._placed_answered(call, event.sdp, now)
        elif isinstance(event, CallFailed):
            status = "timeout" if event.no_answer else _UNCONNECTED_STATUS.get(event.status, "failed")
            self._end(call, now, f"{event.status} {event.reason}", send_bye=False, status=status)
        elif isinstance(event, OfferAnswered) and event.sdp is not None and call.rtp is not None:
            try:
                params = sdp.accept_answer(event.sdp)
            except sdp.SdpError:
                log.warning("call %s: unusable SDP answer to our re-offer; keeping the media as it was", call.uuid)
            else:
                call.rtp.update(params, now)
                self._set_codec(call, params)

    def _refuse(self, event: IncomingCall, status: int, now: float, headers: dict[str, str] | None = None) -> None:
        self.stats.refused[status] = self.stats.refused.get(status, 0) + 1
        self.agent.reject(event.leg_id, status, now, headers=headers)

    def _incoming(self, event: IncomingCall, now: float) -> None:
        settings = self.settings
        account = self.agent.registrar.accounts.get(event.account) if self.agent.registrar and event.account else None
        # A caller that proved it is one of our accounts may call from anywhere: the allow list is for trunks.
        if account is None and settings.allowed_networks and not _allowed(event.source[0], settings.allowed_networks):
            self._refuse(event, 403, now)
            return
        # An allow list names the trunks, which carry every caller's call from a few addresses: the per-source rate
        # is for the open internet (a scanner); max_calls still bounds what a trunk can start.
        if not settings.allowed_networks and not self._invites.allow(event.source[0], now):
            self._refuse(event, 503, now, {"Retry-After": "60"})
            return
        if not self._is_dial_in(event.request_user):
            self._refuse(event, 404, now)
            return
        network = _caller_network(event.source[0])
        if self._at_capacity() or self._unconfirmed_full(network):
            self._refuse(event, 503, now, {"Retry-After": "30"})
            return
        try:
            port = self._ports.open()
        except OSError:
            log.warning("no RTP port free for a call from %s", event.source[0])
            self._refuse(event, 503, now, {"Retry-After": "30"})
            return
        session_id = self._random.getrandbits(48)
        try:
            params, local = self._local_sdp(port, session_id, 1, event.sdp or None, initial=True)
        except sdp.NoUsableMedia:
            self._ports.close(port)
            self._refuse(event, 488, now, INCOMPATIBLE_MEDIA)
            return
        except sdp.SdpError:
            self._ports.close(port)
            self._refuse(event, 400, now)
            return
        call = self._new_call(event.leg_id, event.from_user, event.request_user, now)
        call.port, call.local_sdp, call.source, call.x_headers = port, local, event.source, dict(event.x_headers)
        call.sdp_session_id = session_id
        call.network = network
        call.account = account
        self._by_leg[call.leg_id] = call
        self._by_port[port] = call
        if params is not None:
            self._start_media(call, params, now)  # unconfirmed: until the ACK, or the caller's own RTP
        self.agent.ringing(call.leg_id, now)
        self._ring(call, now)

    def _new_call(self, leg_id: str, from_: str, request_user: str, now: float) -> Call:
        number = (self.settings.dial_in_number or "").lstrip("+")
        call = Call(
            leg_id,
            self._new_uuid(),
            "CON-" + self._new_uuid(),
            from_=from_,
            to=number or request_user,
            now=now,
            event_url=self.settings.event_url,
        )
        self.calls[call.uuid] = call
        self.stats.calls_total += 1
        return call

    def _ring(self, call: Call, now: float) -> None:
        """Tell the app the call exists and ask it what to do (Vonage: started, ringing, the answer webhook)."""
        self._event(call, "started", now)
        self._event(call, "ringing", now)
        account = call.account
        query = answer_query(
            call.info,
            call.x_headers,
            sip_account=account.username if account else None,
            sip_account_room=account.room if account else None,
        )
        self._requests.append(FetchAnswer(call.uuid, self.settings.answer_url, query))

    def _at_capacity(self) -> bool:
        return sum(1 for call in self.calls.values() if not call.ended) >= self.settings.max_calls

    def _unconfirmed_full(self, network: str) -> bool:
        """A caller that never ACKs our answer holds its line for 64*T1 at no cost to itself, so unconfirmed calls
        (answered, the ACK not in) get only a share of the lines, in all and per caller network (an attacker's
        addresses share one), and callers that do ACK always find one. A call still waiting for the answer webhook
        is not one: that wait is ours, and under load it grows with every caller (bench/voice.py's 400, from one
        /24, had 275 refused when it counted). An allow list's trunks bring every caller from a few addresses: the
        total caps them, not the per-network share."""
        settings = self.settings
        unconfirmed = [
            call
            for call in self.calls.values()
            if call.answered_at is not None and not call.confirmed and not call.ended
        ]
        if len(unconfirmed) >= settings.max_unconfirmed_calls:
            return True
        if settings.allowed_networks:
            return False
        same_network = sum(1 for call in unconfirmed if call.network == network)
        return same_network >= settings.max_unconfirmed_calls_per_network

    def _is_trunk(self, host: str) -> bool:
        networks = self.settings.allowed_networks
        return bool(networks) and _allowed(host, networks)

    def _is_dial_in(self, user: str) -> bool:
        if user == self.settings.dial_in_user:
            return True
        number = self.settings.dial_in_number
        return bool(number) and user.lstrip("+") == (number or "").lstrip("+")

    def _answer(self, call: Call, ncco: tuple[Action, ...] | None, now: float, failure: str = "") -> None:
        """Answer a call that rings here and run its NCCO; a call we placed has been answered already."""
        if call.direction == INBOUND:
            assert call.local_sdp is not None
            self.agent.accept(call.leg_id, call.local_sdp, now)
            call.answered_at = now
            self._event(call, "answered", now)
        call.runner = NccoRunner(call.info, event_url=call.event_url)
        commands = call.runner.start(ncco, now) if ncco is not None else call.runner.fail(failure, now)
        self._run(call, commands, now)

    def _confirmed(self, call: Call, answer: bytes | None, now: float) -> None:
        if call.rtp is not None:  # the INVITE's offer was answered in our 200: its media may go out from now on
            call.rtp.confirm()
            return
        # A late offer: ours went in the 200 and the ACK must carry the answer (RFC 3264 s. 5). Without a usable
        # one the call can have no media: it ends now (RFC 3261 s. 13.2.2.4), not as a silent call holding a slot.
        params: sdp.AudioParameters | None = None
        problem = "no SDP answer"
        if answer is not None:
            try:
                params = sdp.accept_answer(answer)
            except sdp.SdpError:
                problem = "unusable SDP answer"
        if params is None:
            log.warning("call %s: %s in the ACK to our offer; hanging up", call.uuid, problem)
            self._end(call, now, f"failed: {problem}", send_bye=True)
            return
        self._start_media(call, params, now)

    # ---- calls we place -----------------------------------------------------------------------------------

    def _place(self, caller: Call, connect: Connect, now: float) -> None:
        """A connect: call its endpoint for `caller`, who hears the ringback tone (if any) until the answer bridges
        the two (`_placed_answered`). The placed call's events go to the connect's eventUrl."""
        from_ = connect.from_ or self.settings.dial_in_number or caller.from_
        event_url = connect.event_url[0] if connect.event_url else self.settings.event_url
        placed = self._dial(
            connect.endpoint, from_, event_url, caller.conversation_uuid, now, connect.timeout, connect.limit
        )
        placed.connect = connect
        placed.peer, caller.peer = caller.uuid, placed.uuid
        if connect.ringback_tone is not None and not placed.ended:
            caller.hold = self._prepare_audio(caller, StreamSource(connect.ringback_tone, loop=0))
        if placed.ended:  # it could not even be dialled: its failed event is out, and the caller's NCCO goes on
            self._peer_ended(caller, placed, None, now)

    def _dial(
        self,
        endpoint: Endpoint,
        from_: str,
        event_url: str,
        conversation_uuid: str,
        now: float,
        ring_timeout: float,
        length_limit: float,
    ) -> Call:
        """Place a call (UAC) to `endpoint`: a new outbound call, reported `started` — or, when it cannot be placed
        (no trunk, a bad URI, no port or line free), already ended as `failed`."""
        to = endpoint.number if isinstance(endpoint, PhoneEndpoint) else endpoint.uri
        call = Call("", self._new_uuid(), conversation_uuid, from_, to, now, event_url=event_url, direction=OUTBOUND)
        call.length_limit = length_limit
        self.calls[call.uuid] = call
        self.stats.calls_total += 1
        self._event(call, "started", now)
        try:
            target = self._dial_target(endpoint)
            if self._at_capacity():
                raise ValueError(f"the engine holds its maximum of {self.settings.max_calls} calls")
            call.port = self._ports.open()
            self._by_port[call.port] = call
            call.sdp_session_id = self._random.getrandbits(48)
            call.local_sdp = sdp.make_offer(
                local_host=self.settings.contact_host,
                local_port=call.port,
                session_id=call.sdp_session_id,
                session_version=1,
            )
            call.leg_id = self.agent.dial(
                target.request_uri,
                destination=target.destination,
                transport=target.transport,
                sdp=call.local_sdp,
                now=now,
                from_uri=f"sip:{from_}@{self.settings.contact_host}",
                headers=target.headers,
                credentials=target.credentials,
                ring_timeout=ring_timeout,
                registered_flow=target.registered,
            )
        except (ValueError, OSError) as exc:  # SipParseError is a ValueError; OSError: no RTP port free
            log.warning("call %s could not be placed: %s", call.uuid, exc)
            self._end(call, now, f"failed: {exc}", send_bye=False, status="failed")
            return call
        call.source = target.destination
        self._by_leg[call.leg_id] = call
        return call

    def _dial_target(self, endpoint: Endpoint) -> _DialTarget:
        """How to call `endpoint`: a phone number through the trunk (as the embedded backend's dial-out calls
        phones); one of our accounts at our domain at the phone registered for it; any other SIP URI as it is. A
        SIP endpoint's headers go as X- headers (Vonage's). ValueError when it cannot be called: no trunk, a bad
        URI, an account with no phone registered (Vonage's unreachable endpoint: `failed`)."""
        if isinstance(endpoint, PhoneEndpoint):
            settings = self.settings
            if not settings.sip_trunk_uri:
                raise ValueError("phones are called through a SIP trunk: set DIALBRIDGE_SIP_TRUNK_URI")
            username, password = settings.sip_trunk_username, settings.sip_trunk_password
            credentials = DigestCredentials(username, password) if username and password else None
            return _DialTarget.at_uri(trunk_uri(settings.sip_trunk_uri, endpoint.number), credentials=credentials)
        headers = {name if name[:2].lower() == "x-" else f"X-{name}": value for name, value in endpoint.headers}
        uri = SipUri.parse(endpoint.uri)
        registrar, account = self.agent.registrar, uri.user
        if registrar is None or account is None or not registrar.is_local_user(uri):
            return _DialTarget.at_uri(endpoint.uri, headers=headers)
        binding = registrar.latest_binding(account)
        if binding is None:
            raise ValueError(f"account {account} has no phone registered")
        if not binding.flow_open:  # the TCP connection it registered on is gone: a new one, to where it listens
            return _DialTarget.at_uri(binding.contact, headers=headers)
        # The request goes to the Contact the phone registered, sent to where that REGISTER came from: behind NAT
        # the Contact names an address nobody can reach, and over TCP the source is the connection it came on.
        return _DialTarget(binding.contact, binding.source, binding.transport, None, headers, registered=True)

    def _placed_answered(self, call: Call, answer: bytes | None, now: float) -> None:
        """A call we placed was answered (and ACKed): its media starts, to the address its answer names (ours to
        trust: we chose whom to call), and it is bridged with the call whose connect placed it."""
        try:
            params = sdp.accept_answer(answer) if answer is not None else None
        except sdp.SdpError:
            params = None
        if params is None:
            log.warning("call %s: no usable SDP answer to our offer; hanging up", call.uuid)
            self._end(call, now, "failed: no usable SDP answer", send_bye=True)
            return
        call.confirmed = True
        call.answered_at = now
        self._start_media(call, params, now)
        self._event(call, "answered", now)
        call.limit_at = now + call.length_limit
        self._timers.schedule(call)
        caller = self.calls.get(call.peer) if call.peer is not None else None
        if caller is not None:
            caller.hold = None  # the ringback tone
            self._bridge(caller, call)
        elif isinstance(call.on_answer, str):
            self._requests.append(FetchAnswer(call.uuid, call.on_answer, answer_query(call.info)))
        elif call.on_answer is not None:
            self._answer(call, call.on_answer, now)

    def _bridge(self, caller: Call, placed: Call) -> None:
        """Each of the two hears the other: both in a private conference of two, started."""
        name = f"connect:{placed.uuid}"
        self._started.add(name)
        for call in (caller, placed):
            call.conference, call.conversation = name, Conversation(name)
            self.mixer.join(call.uuid, name, can_speak=self._can_speak(call), can_hear=self._can_hear(call))

    def _unlink(self, call: Call) -> Call | None:
        """Part `call` from the other call of its connect; that call, if it is still live."""
        peer = self.calls.get(call.peer) if call.peer is not None else None
        call.peer = None
        if peer is None or peer.ended:
            return None
        peer.peer = None
        return peer

    def _peer_ended(self, survivor: Call, ended: Call, final: dict[str, Any] | None, now: float) -> None:
        """One call of a connect has ended. The caller gone, the call placed for it goes too; the placed call gone
        (or never connected), the caller's NCCO carries on — a synchronous connect's failure asking the eventUrl
        first."""
        if ended.connect is None:
            self._end(survivor, now, "hangup" if survivor.answered_at is not None else "cancelled", send_bye=True)
            return
        survivor.hold = None
        runner = survivor.runner
        if runner is None:
            return
        if ended.connect.synchronous and ended.answered_at is None and final is not None:
            commands = runner.connect_failed(ended.event_url, ended.connect.event_method, final, now)
        else:
            commands = runner.connect_ended(now)
        self._run(survivor, commands, now)

    def _local_sdp(
        self, port: int, session_id: int, version: int, offer: bytes | None, *, initial: bool = False
    ) -> tuple[sdp.AudioParameters | None, bytes]:
        """Our answer to `offer` and what it negotiated; with no offer, ours (its answer comes in the ACK).
        `initial`: the INVITE that starts the call (see `sdp.answer_offer`)."""
        host = self.settings.contact_host
        if offer is None:
            return None, sdp.make_offer(
                local_host=host, local_port=port, session_id=session_id, session_version=version
            )
        return sdp.answer_offer(
            offer, local_host=host, local_port=port, session_id=session_id, session_version=version, initial=initial
        )

    def _reoffer(self, call: Call, offer: bytes | None, now: float) -> None:
        assert call.port is not None
        try:
            params, local = self._local_sdp(call.port, call.sdp_session_id, call.sdp_version, offer)
            if local != call.local_sdp:  # RFC 3264 §8: a changed SDP takes the next version, the same one keeps it
                call.sdp_version += 1
                params, local = self._local_sdp(call.port, call.sdp_session_id, call.sdp_version, offer)
        except sdp.NoUsableMedia:
            self.agent.reject_offer(call.leg_id, 488, now, INCOMPATIBLE_MEDIA)
            return
        except sdp.SdpError:  # malformed: refused all the same, and the call carries on as it was
            self.agent.reject_offer(call.leg_id, 488, now)
            return
        call.local_sdp = local
        self.agent.answer_offer(call.leg_id, local, now)
        if params is None:
            return
        if call.rtp is None:  # an offer before the ACK (one after it found media running or ended the call)
            self._start_media(call, params, now)
        else:
            call.rtp.update(params, now)
            self._set_codec(call, params)

    def _start_media(self, call: Call, params: sdp.AudioParameters, now: float) -> None:
        """Before the call is confirmed (its ACK), nothing is sent to an address the caller merely named."""
        call.rtp = RtpSession(
            params, ssrc=self._random.getrandbits(32), now=now, random=self._random, confirmed=call.confirmed
        )
        self._set_codec(call, params)
        self._media.append(call)
        self._rtcp.schedule(call)
        self._dtmf.add(call.uuid)
        call.inband = True
        self._rows_changed()

    def _set_codec(self, call: Call, params: sdp.AudioParameters) -> None:
        call.alaw = params.codec == "PCMA"
        self._rows_changed()

    def _rows_changed(self) -> None:
        self._alaw = np.array([call.alaw for call in self._media], np.bool_)

    # ---- NCCO ----------------------------------------------------------------------------------------------

    def _signalled_digit(self, call: Call, digit: str, source: SignalledDtmf, now: float) -> None:
        """A digit sent as RFC 4733 or SIP INFO. Phones and gateways often send each key press more than one way,
        and a press must count once; the same key pressed twice must count twice, so no time window can tell the
        two apart. Instead a call's digits come from one way only: the first signalled digit fixes it (as in
        Asterisk and FreeSWITCH, a call that sends RFC 4733 has its INFO digits ignored, and the other way round),
        and in-band detection stops then — that first digit is dropped if its tone was just heard."""
        if call.dtmf_source is None:
            call.dtmf_source = source
        elif call.dtmf_source != source:
            return
        if call.inband:
            call.inband = False
            self._dtmf.remove(call.uuid)
            heard = call.inband_heard
            if heard is not None and heard[0] == digit and now - heard[1] <= SAME_PRESS_S:
                return
        self._digit(call, digit, now)

    def _digit(self, call: Call, digit: str, now: float) -> None:
        self.stats.digits += 1
        if call.runner is not None and not call.ended:
            self._run(call, call.runner.digit(digit, now), now)

    def _run(self, call: Call, commands: list[Command], now: float) -> None:
        """Carry out what the call's runner returned; every runner event comes through here, so this is where its
        next deadline is filed."""
        self._timers.schedule(call)
        for command in commands:
            if call.ended:
                return
            if isinstance(command, Play):
                call.playback = _PendingPlayback(command.playback_id, command.source.loop)
                self._requests.append(PrepareAudio(call.uuid, command.playback_id, command.source))
            elif isinstance(command, StopPlayback):
                if call.playback is not None and call.playback.playback_id == command.playback_id:
                    call.playback = None
            elif isinstance(command, PostWebhook):
                self._requests.append(
                    SendWebhook(
                        call.uuid,
                        command.request_id,
                        command.url,
                        command.method,
                        command.payload,
                        command.purpose,
                    )
                )
            elif isinstance(command, LeaveConversation):
                self._leave_conference(call, now)
            elif isinstance(command, JoinConversation):
                self._join(call, command.name, command.conversation, now)
            elif isinstance(command, PlaceCall):
                self._place(call, command.connect, now)
            elif isinstance(command, EndConnected):
                placed = self._unlink(call)
                if placed is not None:
                    self._end(placed, now, "transferred", send_bye=True)
            elif isinstance(command, Hangup):
                self._end(call, now, command.reason, send_bye=True)

    def _join(self, call: Call, name: str, conversation: Conversation, now: float) -> None:
        """Join the conference `name`. It starts when a member with startOnEnter (the default) is in it; until then
        the others wait, hearing its musicOnHoldUrl (or silence), neither heard nor hearing."""
        if call.conference is not None:
            self._leave_conference(call, now)
        others = self.mixer.members(name) if name in self.mixer.conferences() else []
        call.conference, call.conversation = name, conversation
        log.info("call %s joined conference %s (%d already in it)", call.uuid, name, len(others))
        if conversation.start_on_enter and name not in self._started:
            self._started.add(name)
            for uuid in others:
                waiting = self.calls.get(uuid)
                if waiting is not None:
                    waiting.hold = None
                    self.mixer.set_can_speak(uuid, self._can_speak(waiting))
                    self.mixer.set_can_hear(uuid, self._can_hear(waiting))
        self.mixer.join(
            call.uuid,
            name,
            can_speak=self._can_speak(call),
            can_hear=self._can_hear(call),
            heard_by=conversation.can_speak,  # NCCO canSpeak: the legs that may hear this one
            hears=conversation.can_hear,  # canHear: the legs this one may hear
        )
        if name not in self._started and conversation.music_on_hold_url:
            call.hold = self._prepare_audio(call, StreamSource(conversation.music_on_hold_url[0], loop=0))
        if others and self._join_tone is not None:
            self.mixer.play_to_conference(name, self._join_tone)

    def _can_speak(self, call: Call) -> bool:
        conversation = call.conversation
        return not (call.muted or conversation is None or conversation.mute or call.conference not in self._started)

    def _can_hear(self, call: Call) -> bool:
        conversation = call.conversation
        return not (call.earmuffed or conversation is None or call.conference not in self._started)

    def _leave_conference(self, call: Call, now: float) -> None:
        name = call.conference
        if name is None:
            return
        self._drop_member(call)
        remaining = self.mixer.members(name)
        ends = call.conversation is not None and call.conversation.end_on_exit
        if ends or not remaining:
            # The conversation is over: whoever joins `name` next starts it afresh (or waits, without startOnEnter).
            self._started.discard(name)
        if ends:
            # Everyone is out before anyone's next action runs: that action may join `name` again.
            others = [other for other in map(self.calls.get, remaining) if other is not None]
            for other in others:
                self._drop_member(other)
            for other in others:
                if other.runner is not None:
                    self._run(other, other.runner.conversation_left(now), now)
        elif remaining and self._leave_tone is not None:
            self.mixer.play_to_conference(name, self._leave_tone)

    def _drop_member(self, call: Call) -> None:
        """Out of the mixer, and out of its music on hold, which is for members waiting in a conference."""
        self.mixer.leave(call.uuid)
        call.conference = None
        call.hold = None

    def _end(self, call: Call, now: float, reason: str, *, send_bye: bool, status: str | None = None) -> None:
        """`status`: the final event's, when the SIP outcome decides it (a placed call that never connected)."""
        if call.ended:
            return
        call.ended = True
        self._timers.forget(call)
        self._rtcp.forget(call)
        if send_bye:
            self.agent.hangup(call.leg_id, now)
        peer = self._unlink(call)
        if peer is not None and peer.conference is not None and peer.conference == call.conference:
            self._drop_member(peer)  # the bridge is over: no leave tone for the one left
        self._leave_conference(call, now)
        call.playback = None
        if call in self._media:
            self._media.remove(call)
            self._rows_changed()
        if call.inband:
            call.inband = False
            self._dtmf.remove(call.uuid)
        if call.port is not None:
            self._by_port.pop(call.port, None)
            self._ports.close(call.port)
        self._by_leg.pop(call.leg_id, None)
        del self.calls[call.uuid]
        final: dict[str, Any] | None = None
        if status is not None:
            final = self._event(call, status, now, reason=reason)
        elif call.state == "cancelled" or (call.answered_at is None and reason == "cancelled"):
            self._event(call, "cancelled", now)
        elif call.answered_at is None and reason == "rejected":
            self._event(call, "rejected", now)
        elif call.answered_at is None:
            self._event(call, "failed" if reason.startswith("failed") else "cancelled", now, reason=reason)
        else:
            self._event(call, "completed", now, start_time=call.answered_at, end_time=now, reason=reason)
        lasted = f", {now - call.answered_at:.0f} s after the answer" if call.answered_at is not None else ""
        log.info("call %s: %s (%s%s)", call.uuid, call.state, reason, lasted)
        call.ended_at = now
        self._ended.append(self._snapshot(call))
        if peer is not None:
            self._peer_ended(peer, call, final, now)

    def _event(self, call: Call, status: str, now: float, **extra: Any) -> dict[str, Any]:
        call.state = status
        if status == "answered":  # this, joining a conference and the end: what an operator looks for in the log
            from_, to = escaped_for_log(call.from_), escaped_for_log(call.to)  # the caller wrote them
            log.info("call %s from %s to %s: answered", call.uuid, from_, to)
        self.stats.calls_by_state[status] = self.stats.calls_by_state.get(status, 0) + 1
        payload = event_payload(status, call.info, now, direction=call.direction, **extra)
        self._requests.append(SendEvent(call.event_url, payload))
        return payload

    def _report_speaking(self, now: float) -> None:
        """One report per conversation whose speakers changed, at most every SPEAKING_REPORT_S: a room's list shows
        who speaks within a fraction of a second, at a few requests a second per lively room, not one per word."""
        url = self.settings.speaking_url
        assert url is not None
        for conference in self._speaking_changed:
            speaking = [member for member in self.mixer.members(conference) if member in self._speaking]
            payload = {"conversation": conference, "speaking": speaking, "timestamp": timestamp(now)}
            self._requests.append(ReportSpeaking(url, conference, payload))
        self._speaking_changed.clear()
        self._next_speaking_report = now + SPEAKING_REPORT_S

    # ---- media ---------------------------------------------------------------------------------------------

    def _mix(self, now: float) -> None:
        # A snapshot: NCCO commands run below may end calls (and so change self._media) mid-tick.
        calls = list(self._media)
        alaw = self._alaw
        if not calls:
            return
        frames = []
        for call in calls:
            if call.rtp is not None:
                frames.append(call.rtp.playout(now)[0])
        encoded = np.frombuffer(b"".join(frames), np.uint8).reshape(len(calls), FRAME)
        decoded = g711.decode_rows(encoded, alaw)
        listening = [i for i, call in enumerate(calls) if call.inband]
        if listening:
            bank = self._dtmf
            bank.inputs[[bank.row(calls[i].uuid) for i in listening]] = decoded[listening]
            for uuid, digit in bank.detect():
                keyed = self.calls.get(uuid)
                if keyed is not None:
                    keyed.inband_heard = (digit, now)
                    self._digit(keyed, digit, now)
        out = np.zeros_like(decoded)
        members = [i for i, call in enumerate(calls) if call.conference is not None]
        if members:
            rows = np.array([self.mixer.row(calls[i].uuid) for i in members], np.intp)
            self.mixer.inputs[rows] = decoded[members]
            mixed = self.mixer.mix()
            out[members] = mixed.outputs[rows]
            if mixed.speaking_changed and self.settings.speaking_url is not None:
                self._speaking = mixed.speaking
                for member, _ in mixed.speaking_changed:
                    changed = self.calls.get(member)
                    if changed is not None and changed.conference is not None:
                        self._speaking_changed.add(changed.conference)
        for i, call in enumerate(calls):
            self._add_playback(call, out, i, now)
        wire = g711.encode_rows(out, alaw)
        for i, call in enumerate(calls):
            if call.ended:
                continue
            rtp = call.rtp
            if rtp is None or call.port is None:
                continue
            destination = rtp.destination
            for packet in rtp.send(wire[i].tobytes(), now):
                if destination is not None:
                    self._rtp_out.append((call.port, packet, destination))
                    self.stats.rtp_out += 1

    def _add_playback(self, call: Call, out: npt.NDArray[np.int16], row: int, now: float) -> None:
        """What the call hears besides the conference: its NCCO's talk or stream, then a PUT /talk or /stream."""
        playback = call.playback
        if playback is not None and not isinstance(playback, _PendingPlayback):
            frame = playback.next_frame()
            if frame is None:
                call.playback = None
                if call.runner is not None:
                    self._run(call, call.runner.playback_finished(playback.playback_id, now), now)
            elif call.conference is None:
                out[row] = frame
            else:
                out[row] = np.clip(out[row].astype(np.int32) + frame, -32768, 32767)
        for slot in ("overlay", "hold"):
            extra = getattr(call, slot)
            if extra is None or isinstance(extra, _PendingPlayback):
                continue
            frame = extra.next_frame()
            if frame is None:
                setattr(call, slot, None)
            else:
                out[row] = np.clip(out[row].astype(np.int32) + frame, -32768, 32767)


@dataclass(frozen=True, slots=True)
class _DialTarget:
    """Where and how a call we place goes: the INVITE's Request-URI, the address it is sent to (resolved) and over
    which transport, credentials for a challenge, extra headers; `registered`: to a phone that registered from
    `destination`, where every request of the call goes (`SipAgent.dial(registered_flow=)`)."""

    request_uri: str
    destination: Address
    transport: str
    credentials: DigestCredentials | None = None
    headers: dict[str, str] = field(default_factory=dict)
    registered: bool = False

    @classmethod
    def at_uri(
        cls, request_uri: str, *, credentials: DigestCredentials | None = None, headers: dict[str, str] | None = None
    ) -> _DialTarget:
        """Sent where the URI names: its host and port (5060 if none), over its transport (UDP if none)."""
        uri = SipUri.parse(request_uri)
        destination = (uri.host.strip("[]"), uri.port or 5060)
        return cls(request_uri, destination, (uri.transport or "udp").lower(), credentials, headers or {})


class _PendingPlayback:
    """A playback whose audio is still being prepared: the call hears silence (or the conference) meanwhile."""

    __slots__ = ("loop_count", "playback_id")

    def __init__(self, playback_id: int, loop_count: int) -> None:
        self.playback_id = playback_id
        self.loop_count = loop_count


def _call_deadline(call: Call) -> float | None:
    """When a tick must look at the call next: its NCCO's timer (an input's timeout) or its length limit."""
    if call.ended:
        return None
    runner = call.runner.next_timer() if call.runner is not None else None
    return min((d for d in (runner, call.limit_at) if d is not None), default=None)


def _rtcp_deadline(call: Call) -> float | None:
    return call.rtp.rtcp_at if call.rtp is not None and not call.ended else None


def _relayed_digit(body: bytes) -> str | None:
    """The key of an application/dtmf-relay INFO body, or None if it names none."""
    match = DTMF_RELAY.search(body)
    if match is None:
        return None
    key = match.group(1).decode().upper()
    return event_to_digit(int(key)) if key.isdigit() else key


def _caller_network(host: str) -> str:
    """The network one party most likely holds whole: its IPv4 /24 or IPv6 /64 (a subscriber's prefix)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network((address, prefix), strict=False))


def _allowed(host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
