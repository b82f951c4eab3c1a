"""The SIP user agent core (RFC 3261 section 8, 12-15, 22): owns transactions, dialogs and call legs, both ways.

Sans-I/O: `receive(bytes, source, now)` and the commands take the time; `drain()` hands back the events and the
datagrams/stream writes to perform; `next_timer()` / `on_timer(now)` drive retransmissions and timeouts. One
`CallLeg` per call: made by an incoming INVITE (UAS) or by `dial()` (UAC). Its transitions (made by the commands and
the `_on_*` handlers, each through `_move`, which checks them against `_LEG_TRANSITIONS`):

Incoming (UAS):
    OFFERED   --ringing()-->           OFFERED   (180 with To-tag)
    OFFERED   --accept()-->            ACCEPTED  (200 + SDP, resent at T1, 2T1 .. T2 until ACK)
    OFFERED   --reject()/hangup()-->   ENDED     (final 3xx-6xx; the INVITE transaction absorbs the ACK)
    OFFERED   --CANCEL / BYE-->        ENDED     (487 to the INVITE, CallCancelled / CallEnded("bye"))
    ACCEPTED  --ACK-->                 CONFIRMED (CallConfirmed; a deferred hangup() now sends its BYE)
    ACCEPTED  --no ACK in 64*T1-->     ENDING    (BYE sent, CallEnded("ack_timeout"))

Outbound (UAC, `dial()`; the INVITE is a ClientInviteTransaction, which ACKs non-2xx finals itself):
    CALLING     --100-->                      CALLING    (a provisional arrived: a CANCEL may now be sent, 9.1)
    CALLING/EARLY --101-199-->                EARLY      (CallProgress; 183 carries early-media SDP)
    CALLING/EARLY --2xx-->                    CONFIRMED  (ACK sent to the dialog's next hop, CallAnswered)
    CALLING/EARLY --401/407 + credentials-->  CALLING    (INVITE re-sent: new branch, CSeq+1, (Proxy-)Authorization)
    CALLING/EARLY --3xx-6xx-->                ENDED      (CallFailed(status); 401/407 again for a realm: the same)
    CALLING/EARLY --Timer B / transport-->    ENDED      (CallFailed(408) / CallFailed(503))
    CALLING/EARLY --hangup()-->               CANCELLING (CANCEL now, or once a provisional arrives)
    CALLING/EARLY --ring_timeout-->           CANCELLING (CallFailed(408) now; the cancel then runs unreported)
    CANCELLING  --final non-2xx / Timer B / 64*T1 after the CANCEL--> ENDED (CallEnded("cancelled"))
    CANCELLING  --2xx (crossed the CANCEL)--> CONFIRMED, then ENDING (ACK, BYE; CallEnded("hangup"))
    any         --a further 2xx-->            (re-ACKed if retransmitted; another fork's dialog is ACKed and BYEd)

Both, once the dialog is confirmed (in-dialog requests are handled alike whichever side made the dialog):
    CONFIRMED --re-INVITE/UPDATE-->    CONFIRMED (OfferReceived; answer_offer()/reject_offer(); 491 if one is pending)
    CONFIRMED --BYE-->                 ENDED     (200, CallEnded("bye"))
    CONFIRMED --hangup()-->            ENDING    (BYE in a client non-INVITE transaction)
    ENDING    --401/407 to our BYE-->  ENDING    (UAC with credentials: BYE re-sent answering it, once per realm)
    ENDING    --BYE final/timeout-->   ENDED     (CallEnded("hangup") unless already reported)

A lost TCP connection ends no call (RFC 3261 18; proxies close idle connections mid-call: Kamailio after 120 s). The
legs it carried are marked `flow_lost`: their next in-dialog request goes to the dialog's next hop (route set /
Contact) over a new connection the shell opens, and an in-dialog request or ACK the peer sends over a new connection
makes that the leg's flow. A server transaction's responses go, as 18.2.2 says, to the Via's received= address at its
sent-by port over a new connection. What was in flight on the connection (a client transaction) fails with it, as
does a call still being dialled (CallFailed(503)); a request to a next hop that cannot be reached fails as any does.

Commands for a leg that no longer exists or is in the wrong state are ignored: the engine and the network race
(a CANCEL can land while the engine is about to accept), and the engine learns the outcome from the events.

UAC limits for now: early dialogs are not tracked (requests inside one, e.g. UPDATE before the answer, get 481),
no 100rel/PRACK, no late offer, and 3xx is reported (CallFailed) rather than followed. In-dialog requests go to
the dialog's next hop (Record-Route / Contact) on UDP (to a phone we called at its registration: where it
registered from, `dial(registered_flow=)`): if the peer names a host there, the shell resolves
`Outgoing.destination` itself (`sip/resolver.py`; SRV first when `Outgoing.port_named` is False, RFC 3263) and
reports one it cannot reach with `transport_failed`.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import itertools
import logging
import random as random_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

from dialbridge.log_text import escaped_for_log
from dialbridge.sip.auth import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    parse_challenges,
    parse_params,
    select_challenges,
)
from dialbridge.sip.dialog import Dialog, DialogId, DialogState, NextHop, response_record_routes
from dialbridge.sip.message import (
    DEFAULT_MAX_SIZE,
    MAGIC_COOKIE,
    REASON_PHRASES,
    NameAddr,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from dialbridge.sip.registrar import Registrar, Reply
from dialbridge.sip.transaction import (
    T1,
    T2,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TransactionEvent,
    TransactionKey,
    TransactionState,
    TransactionTimedOut,
    TransportFailed,
    build_cancel,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE")
ALLOW = ", ".join(ALLOWED_METHODS)
# Methods of other SIP extensions: known, so refused with 405; any other method is unknown: 501 (RFC 3261 8.2.1).
_KNOWN_METHODS = frozenset(
    (*ALLOWED_METHODS, "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
ACCEPT = "application/sdp"
SUPPORTED: tuple[str, ...] = ()  # no extensions yet (no 100rel, timer, replaces): any Require gets 420
# Headers dial() builds itself; `headers=` may not override them.
_DIAL_OWN_HEADERS = frozenset(
    h.lower()
    for h in ("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type", "Content-Length")
)
# Server transactions held at once (each up to 32 s, ~4.4 KB for an INVITE's): bounds what a flood from many
# addresses, each under its own rate, can make us hold; 3/4 of it for requests outside a call in progress.
DEFAULT_MAX_SERVER_TRANSACTIONS = 4096
_FULL_RETRY_AFTER_S = 5  # our answer to a request refused while the server-transaction table is full
_MAX_AUTH_ROUNDS = 4  # per call leg (INVITE and BYE): stale=true nonces could otherwise bounce us forever


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes to put on the wire: one UDP datagram, or a write on the TCP connection to `destination`."""

    data: bytes
    destination: Address
    transport: str  # "udp" | "tcp"
    # False: the URI this goes to named no port; `destination` carries the default (5060), and for a host name the
    # shell looks up the SIP service's SRV records first (RFC 3263 4.2), falling back to that port.
    port_named: bool = True


# --- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new INVITE. 100 Trying has been sent; answer with ringing()/accept()/reject()."""

    leg_id: str
    request_uri: str
    request_user: str  # user part of the Request-URI ("" if none): the dialled number
    from_uri: str
    from_user: str
    from_display: str | None
    to_uri: str
    x_headers: dict[str, str]  # headers named X-..., as spelt by the peer (first value of each)
    sdp: bytes | None  # the offer, or None for a late offer (then accept() must carry ours)
    source: Address
    transport: str
    account: str | None = None  # the registrar's account the caller authenticated as (407 challenge), if any


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The ACK for our 200 arrived. `sdp` is the peer's answer when the INVITE had no offer, else None."""

    leg_id: str
    sdp: bytes | None


@dataclass(frozen=True, slots=True)
class CallCancelled:
    """CANCEL before our final response: 200 to the CANCEL and 487 to the INVITE are already sent. The leg is gone."""

    leg_id: str


@dataclass(frozen=True, slots=True)
class CallProgress:
    """dial(): a provisional response above 100 (180 Ringing, 183 with early-media SDP in `sdp`)."""

    leg_id: str
    status: int
    reason: str
    sdp: bytes | None


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """dial(): a 2xx arrived and the agent has ACKed it. `sdp` is the peer's answer (None if the 2xx had none)."""

    leg_id: str
    sdp: bytes | None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """dial() did not connect: the final 3xx-6xx (401/407 once auth is exhausted), 408 on Timer B, 503 when the
    transport failed. The leg is gone; no CallEnded follows. `no_answer`: our own ring timeout gave up (a 408 from
    Timer B or the far end means nothing answered at all, which is not the same for the people waiting)."""

    leg_id: str
    status: int
    reason: str
    no_answer: bool = False


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The leg is over. reason: "bye" | "ack_timeout" | "hangup" | "rejected" | "transport_error" | "cancelled"
    (a dial() hung up before the answer)."""

    leg_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """A re-INVITE or UPDATE in the dialog. sdp None (re-INVITE only): the peer wants our offer in the 200; its
    answer then arrives as OfferAnswered. Reply with answer_offer() or reject_offer()."""

    leg_id: str
    sdp: bytes | None
    method: str  # "INVITE" | "UPDATE"


@dataclass(frozen=True, slots=True)
class OfferAnswered:
    """The ACK to our 200 for an offerless re-INVITE, carrying the peer's answer to the offer in that 200."""

    leg_id: str
    sdp: bytes | None


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """An INFO in the dialog (already answered 200)."""

    leg_id: str
    content_type: str
    body: bytes


SipEvent = (
    IncomingCall
    | CallConfirmed
    | CallCancelled
    | CallEnded
    | OfferReceived
    | OfferAnswered
    | InfoReceived
    | CallProgress
    | CallAnswered
    | CallFailed
)


# --- internal state -----------------------------------------------------------------------------------------------


class LegState(enum.Enum):
    OFFERED = "offered"  # UAS only
    ACCEPTED = "accepted"  # UAS only
    CALLING = "calling"  # UAC only
    EARLY = "early"  # UAC only
    CANCELLING = "cancelling"  # UAC only
    CONFIRMED = "confirmed"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(eq=False, slots=True)
class _ServerEntry:
    key: TransactionKey
    transaction: ServerTransaction
    destination: Address  # where responses go (RFC 3261 18.2.2 / RFC 3581)
    transport: str
    leg_id: str | None = None
    merge_key: tuple[str, str, int, str] | None = None
    timer_at: float | None = None  # the deadline of its live record on the agent's timer heap


@dataclass(eq=False, slots=True)
class _ClientEntry:
    key: TransactionKey
    transaction: ClientTransaction
    destination: Address
    transport: str
    leg_id: str | None = None
    port_named: bool = True  # as `Outgoing.port_named`, for every (re)transmission of the request
    # INVITE only: the ACK sent for each 2xx, by To-tag, resent when that 2xx is retransmitted (13.2.2.4). Kept on
    # the transaction (Timer M) rather than the leg, so 2xx retransmits are still ACKed after the leg has gone.
    acks: dict[str, Outgoing] = field(default_factory=dict)
    timer_at: float | None = None  # the deadline of its live record on the agent's timer heap


@dataclass(eq=False, slots=True)
class _Pending2xx:
    """A 2xx to an INVITE that the UAS core retransmits until the ACK (RFC 3261 13.3.1.4)."""

    response: SipResponse
    cseq: int
    destination: Address
    transport: str
    next_at: float
    interval: float
    give_up_at: float
    offer_in_2xx: bool  # the INVITE had no SDP, so the ACK carries the answer
    initial: bool


@dataclass(eq=False, slots=True)
class _PendingOffer:
    entry: _ServerEntry
    method: str
    had_offer: bool


@dataclass(eq=False, slots=True)
class _Dial:
    """What a UAC leg needs until its INVITE has a final response (one INVITE per auth round)."""

    invite: SipRequest  # the INVITE of the current round
    invite_key: TransactionKey
    auth: DigestClient | None
    # (answer header, realm) -> the latest challenge: every round answers them all again (a proxy's and the
    # callee's realms both stay needed), each with a fresh nc/cnonce.
    challenges: dict[tuple[str, str], DigestChallenge] = field(default_factory=dict)
    auth_rounds: int = 0
    provisional: bool = False  # 9.1: a CANCEL may only follow a provisional response
    cancel_sent: bool = False
    give_up_at: float | None = None  # 64*T1 after our CANCEL: end even if no final response comes (9.1)
    ring_deadline: float | None = None  # dial(ring_timeout=): no final response by then -> CallFailed(408) + CANCEL


@dataclass(eq=False, slots=True)
class CallLeg:
    leg_id: str
    dialog: Dialog  # UAC: a stand-in (no remote tag, not indexed) until the 2xx builds the real one
    invite_entry: _ServerEntry | None  # UAS: the INVITE's server transaction; None for UAC legs
    source: Address  # UAS: where the INVITE came from; UAC: where ours went (TCP requests reuse that connection)
    transport: str
    state: LegState = LegState.OFFERED
    pending_2xx: _Pending2xx | None = None
    pending_offer: _PendingOffer | None = None
    bye_key: TransactionKey | None = None
    end_reported: bool = False
    hangup_requested: bool = False  # hangup() before the ACK: BYE waits for it (RFC 3261 15)
    invite_had_offer: bool = False
    dial: _Dial | None = None  # set on UAC legs (made by dial())
    flow_lost: bool = False  # TCP: the connection `source` names is gone; requests go to the next hop anew
    # UAC: the callee is a phone registered from `source`: every request of the dialog goes there, over UDP too
    registered_flow: bool = False
    timer_at: float | None = None  # the deadline of its live record on the agent's timer heap


TimerOwner = _ServerEntry | _ClientEntry | CallLeg


# Every leg state change goes through `_move`, which enforces the diagrams in the module docstring. One table serves
# both: the UAS-only states (OFFERED, ACCEPTED) and the UAC-only ones (CALLING, EARLY, CANCELLING) lead only to their
# own kind or to the shared CONFIRMED/ENDING/ENDED, so a leg never crosses to the other side's states, and in-dialog
# requests are handled the same whichever side created the dialog.
_LEG_TRANSITIONS: dict[LegState, frozenset[LegState]] = {
    # UAS (incoming)
    LegState.OFFERED: frozenset({LegState.ACCEPTED, LegState.ENDED}),
    LegState.ACCEPTED: frozenset({LegState.CONFIRMED, LegState.ENDED}),  # ACK timeout: CONFIRMED, then ENDING
    # UAC (dial); CALLING -> CALLING: a 100 Trying, or the INVITE re-sent with credentials after 401/407.
    LegState.CALLING: frozenset(
        {LegState.CALLING, LegState.EARLY, LegState.CANCELLING, LegState.CONFIRMED, LegState.ENDED}
    ),
    LegState.EARLY: frozenset(
        {LegState.EARLY, LegState.CALLING, LegState.CANCELLING, LegState.CONFIRMED, LegState.ENDED}
    ),
    LegState.CANCELLING: frozenset({LegState.CONFIRMED, LegState.ENDED}),  # CONFIRMED: a 2xx crossed our CANCEL
    # both
    LegState.CONFIRMED: frozenset({LegState.CONFIRMED, LegState.ENDING, LegState.ENDED}),
    LegState.ENDING: frozenset({LegState.ENDED}),
    LegState.ENDED: frozenset({LegState.ENDED}),
}


_DIALLING = frozenset({LegState.CALLING, LegState.EARLY, LegState.CANCELLING})  # UAC: no final response yet


def _move(leg: CallLeg, state: LegState) -> None:
    if state not in _LEG_TRANSITIONS[leg.state]:
        raise RuntimeError(f"call leg {leg.leg_id}: no transition {leg.state.value} -> {state.value}")
    leg.state = state


def _uas_entry(leg: CallLeg) -> _ServerEntry:
    """The INVITE server transaction of an incoming call (the UAS-only states OFFERED/ACCEPTED guarantee one)."""
    if leg.invite_entry is None:
        raise RuntimeError(f"call leg {leg.leg_id} is outbound: it has no INVITE server transaction")
    return leg.invite_entry


def _answered_realm(value: str) -> str | None:
    try:
        return parse_params(value)[1].get("realm")
    except ValueError:
        return None


def _dial_of(leg: CallLeg) -> _Dial:
    if leg.dial is None:
        raise RuntimeError(f"call leg {leg.leg_id} is inbound: it has no dial state")
    return leg.dial


def _leg_deadline(leg: CallLeg) -> float | None:
    """When the leg's own timers (`SipAgent._leg_timer`) next have something to do: resend a 2xx or give up on its
    ACK; for dial(), the ring timeout while dialling and the end of the wait after our CANCEL."""
    deadline: float | None = None
    pending = leg.pending_2xx
    if pending is not None:
        deadline = min(pending.next_at, pending.give_up_at)
    dial = leg.dial
    if dial is not None:
        if dial.ring_deadline is not None and leg.state in _DIALLING:
            deadline = dial.ring_deadline if deadline is None else min(deadline, dial.ring_deadline)
        if dial.give_up_at is not None and leg.state is LegState.CANCELLING:
            deadline = dial.give_up_at if deadline is None else min(deadline, dial.give_up_at)
    return deadline


def _is_sdp(message: SipMessage) -> bool:
    return bool(message.body) and message.content_type == "application/sdp"


def _reconnect_address(request: SipRequest, lost: Address) -> Address | None:
    """RFC 3261 18.2.2: where a response goes over TCP once the request's connection is gone: the Via's received=
    host (the source we stamped) at its sent-by port. None when that is the lost connection's own address."""
    via = request.top_via
    address = ((via.received or lost[0]).strip("[]"), via.port or 5060)
    return None if address == lost else address


def _adopt_flow(leg: CallLeg, source: Address, transport: str) -> None:
    """A leg whose TCP connection was lost takes the one the peer now sends its in-dialog requests on."""
    if leg.flow_lost and _reliable(transport) and _reliable(leg.transport):
        leg.source = source
        leg.flow_lost = False


def _accepts_sdp(request: SipRequest) -> bool:
    """Whether the request's Accept (if any) admits an SDP body in the answer (RFC 3261 20.1)."""
    ranges = [value.split(";", 1)[0].strip().lower() for value in request.headers.get_all("Accept")]
    ranges = [media_range for media_range in ranges if media_range]
    return not ranges or any(r in ("application/sdp", "application/*", "*/*") for r in ranges)


def _unsupported(request: SipRequest) -> list[str]:
    """The options the request's Require names that we do not support (420 Bad Extension)."""
    options = [option.strip() for value in request.headers.get_all("Require") for option in value.split(",")]
    return [option for option in options if option and option not in SUPPORTED]


def _dialog_live(leg: CallLeg | None, method: str) -> TypeGuard[CallLeg]:
    """An in-dialog request names a dialog of ours that it may still concern (else 481): one its tags name, and
    once that dialog is ending, only a BYE."""
    return leg is not None and leg.state is not LegState.ENDED and (leg.state is not LegState.ENDING or method == "BYE")


def _method_refusal(method: str) -> int:
    """405 for a method the engine knows but does not serve, 501 for one it does not know (RFC 3261 8.2.1)."""
    return 405 if method in _KNOWN_METHODS else 501


def _reliable(transport: str) -> bool:
    """TCP (and later TLS/WS): no retransmissions by transactions, and answers go back on the connection."""
    return transport != "udp"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SipAgent:
    def __init__(
        self,
        *,
        contact_host: str,
        contact_port: int,
        user_agent: str = "dialbridge",
        random: random_module.Random | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
        registrar: Registrar | None = None,
        max_server_transactions: int = DEFAULT_MAX_SERVER_TRANSACTIONS,
    ) -> None:
        self.contact_host = _bracket(contact_host)
        # Answers REGISTER and authenticates INVITEs from its accounts; without one, REGISTER gets 405.
        self.registrar = registrar
        #: What the Allow header says we serve: REGISTER too while a registrar is plugged in.
        self.allow = f"{ALLOW}, REGISTER" if registrar is not None else ALLOW
        self.contact_port = contact_port
        self.user_agent = user_agent
        self.max_message_size = max_message_size
        self.max_server_transactions = max_server_transactions
        self._random = random if random is not None else random_module.Random()
        self._tag_key = self._random.getrandbits(128).to_bytes(16, "big")
        self._server: dict[TransactionKey, _ServerEntry] = {}
        self._client: dict[TransactionKey, _ClientEntry] = {}
        self._merge: dict[tuple[str, str, int, str], TransactionKey] = {}
        self._dialogs: dict[DialogId, str] = {}
        self._legs: dict[str, CallLeg] = {}
        # Every transaction's and leg's next deadline, so that a tick with nothing due (the engine calls on_timer
        # every 20 ms) looks at nothing. (deadline, order, owner): the order breaks ties, first scheduled first.
        # Records are pushed by `_schedule` after anything that may have changed the owner's deadline and never
        # removed; a record whose deadline is no longer its owner's `timer_at`, or whose owner is gone, is skipped
        # when it comes up.
        self._timers: list[tuple[float, int, TimerOwner]] = []
        self._timer_order = itertools.count()
        self._events: list[SipEvent] = []
        self._outgoing: list[Outgoing] = []

    # --- public: I/O side -------------------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float, transport: str = "udp") -> None:
        """One datagram (UDP) or one message framed by `SipStreamFramer` (TCP) from `source`."""
        transport = transport.lower()
        try:
            message = parse_message(data, max_size=self.max_message_size, stream=_reliable(transport))
        except SipParseError as exc:
            self.answer_parse_error(exc, source, transport)
            return
        if isinstance(message, SipResponse):
            self._on_response(message, now)
            return
        try:
            self._on_request(message, source, now, transport)
        except SipParseError as exc:  # a header only parsed on use (parse_message validated the core ones)
            if message.method == "ACK":
                return
            entry = self._server.get(server_key(message))
            if entry is not None and not entry.transaction.final_sent:
                self._respond(entry, exc.status, now, to_tag=self._new_tag())  # don't leave the transaction hanging
            elif entry is None:
                self._reply_stateless(message, exc.status, str(exc), source, transport)

    def answer_parse_error(self, error: SipParseError, source: Address, transport: str = "tcp") -> None:
        """Answer (400/513/...) a request that could not be parsed or framed, if it can be addressed.

        `receive` does this itself; the TCP shell calls it with what `SipStreamFramer.feed` raised, before closing.
        """
        if error.request is not None and error.request.method != "ACK":
            self._reply_stateless(error.request, error.status, str(error), source, transport.lower())

    def transport_failed(self, destination: Address, now: float) -> None:
        """The engine could not reach `destination`: a TCP connection lost, or one that could not be opened, or a UDP
        datagram unsendable (its name does not resolve, or its address is of the other family).

        Client transactions sending there fail (a BYE in flight then ends its call as "hangup", a dial CallFailed
        503). Server transactions answer at their request's Via address instead when that is another one (18.2.2),
        and fail otherwise. Calls whose connection it was go on (`flow_lost`; see the module doc). Phones registered
        over it are reached at their Contact from now on (`Registrar.flow_closed`).
        """
        if self.registrar is not None:
            self.registrar.flow_closed(destination)
        for server_entry in list(self._server.values()):
            if server_entry.destination != destination:
                continue
            elsewhere = _reconnect_address(server_entry.transaction.request, destination)
            if _reliable(server_entry.transport) and elsewhere is not None:
                server_entry.destination = elsewhere
            else:
                server_entry.transaction.transport_failed()
                self._pump_server(server_entry)
        for client_entry in list(self._client.values()):
            if client_entry.destination == destination:
                client_entry.transaction.transport_failed()
                self._pump_client(client_entry, now)
        for leg in list(self._legs.values()):
            if _reliable(leg.transport) and leg.source == destination:
                leg.flow_lost = True
                pending = leg.pending_2xx
                if pending is not None and pending.destination == destination:
                    invite = leg.invite_entry.transaction.request if leg.invite_entry is not None else None
                    elsewhere = _reconnect_address(invite, destination) if invite is not None else None
                    if elsewhere is not None:
                        pending.destination = elsewhere

    def reliable_peers_in_use(self) -> set[Address]:
        """The TCP peers a call leg or a transaction still needs: their connections must stay open, however quiet
        (an in-dialog request may come after a long silence)."""
        peers = {leg.source for leg in self._legs.values() if _reliable(leg.transport)}
        entries: list[_ServerEntry | _ClientEntry] = [*self._server.values(), *self._client.values()]
        peers.update(entry.destination for entry in entries if _reliable(entry.transport))
        if self.registrar is not None:  # a registered phone is reached over the connection it registered on
            peers.update(self.registrar.open_flows())
        return peers

    def next_timer(self) -> float | None:
        """The earliest deadline of any transaction, leg or registration, or None when nothing waits."""
        registrar = self.registrar.next_timer() if self.registrar is not None else None
        ours = self._next_own_timer()
        return min((d for d in (ours, registrar) if d is not None), default=None)

    def _next_own_timer(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, _, owner = timers[0]
            if owner.timer_at == deadline and self._timer_owner_live(owner):
                if self._deadline_of(owner) == deadline:
                    return deadline
                # A leg's deadline moved later or went (its ACK came, its call ended): look again where it is now.
                heapq.heappop(timers)
                owner.timer_at = None
                self._schedule(owner)
            else:
                heapq.heappop(timers)
        return None

    def on_timer(self, now: float) -> None:
        """Run what is due by `now`: each transaction or leg whose deadline has come, once, in deadline order."""
        timers = self._timers
        due: list[TimerOwner] = []
        while timers and timers[0][0] <= now:
            deadline, _, owner = heapq.heappop(timers)
            if owner.timer_at == deadline:
                owner.timer_at = None
                due.append(owner)
        for owner in due:
            if not self._timer_owner_live(owner):  # ended by an earlier one's handler
                continue
            if isinstance(owner, _ServerEntry):
                owner.transaction.on_timer(now)
                self._pump_server(owner)
            elif isinstance(owner, _ClientEntry):
                owner.transaction.on_timer(now)
                self._pump_client(owner, now)
            else:
                self._leg_timer(owner, now)
        if self.registrar is not None:
            registrar_due = self.registrar.next_timer()
            if registrar_due is not None and registrar_due <= now:
                self.registrar.on_timer(now)

    def drain(self) -> tuple[list[SipEvent], list[Outgoing]]:
        events, outgoing = self._events, self._outgoing
        self._events, self._outgoing = [], []
        return events, outgoing

    # --- public: commands ------------------------------------------------------------------------------------------

    def dial(
        self,
        request_uri: str,
        *,
        destination: Address,
        transport: str,
        sdp: bytes,
        now: float,
        from_uri: str,
        from_display: str | None = None,
        to_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        credentials: DigestCredentials | None = None,
        ring_timeout: float | None = None,
        registered_flow: bool = False,
    ) -> str:
        """Start an outbound call (UAC): send an INVITE with our offer to `destination` (already resolved).

        Returns the leg id; the outcome arrives as CallProgress* then CallAnswered or CallFailed (or CallEnded
        after hangup()). `headers` are added as given (not Via/From/To/Call-ID/CSeq/Contact/...). Raises
        ValueError for a bad URI, transport or header.

        `ring_timeout` (seconds): with no final response by then, CallFailed(408) is reported and the INVITE is
        cancelled in the background (nothing more is reported for the leg). Without it, only Timer B (no response
        at all in 64*T1) or hangup() end an unanswered call: a 1xx stops Timer B (RFC 3261 17.1.1.2).

        `registered_flow`: the callee is a phone that registered from `destination` (the request URI its Contact).
        Behind NAT that Contact, and so the Contact of its answer, names an address nobody can reach: the ACK and
        every later request of the dialog go to `destination` too (RFC 5626's flow), not to the dialog's next hop.
        """
        transport = transport.lower()
        if transport not in ("udp", "tcp"):
            raise ValueError(f"dial(): unsupported transport {transport!r}")
        if not sdp:
            raise ValueError("dial() needs an SDP offer (late offer, with the answer in the ACK, is not supported)")
        target = SipUri.parse(request_uri)
        remote = NameAddr(uri=SipUri.parse(to_uri) if to_uri else target.without_params())
        local = NameAddr(uri=SipUri.parse(from_uri), display_name=from_display)
        extra = list(headers.items()) if headers else []
        for name, value in extra:
            bad = not name or ":" in name or "\r" in name + value or "\n" in name + value
            if bad or name.lower() in _DIAL_OWN_HEADERS:
                raise ValueError(f"dial(): header {name!r} cannot be set this way")
        dialog = Dialog(
            call_id=f"{self._random.getrandbits(128):032x}",
            local_tag=self._new_tag(),
            remote_tag="",
            local_uri=local,
            remote_uri=remote,
            remote_target=target,
            local_seq=self._random.randint(1, 1 << 20),  # 8.1.1.5: any start below 2**31
        )
        invite = dialog.create_request(
            "INVITE",
            via_host=self.contact_host,
            via_port=self.contact_port,
            transport=transport,
            branch=self._new_branch(),
            user_agent=self.user_agent,
            contact=self._contact(transport),
            body=sdp,
            cseq=dialog.local_seq,
        )
        invite.headers.add("Allow", self.allow)
        for name, value in extra:
            invite.headers.add(name, value)
        leg_id = self._new_leg_id()
        auth = DigestClient(credentials, self._random) if credentials is not None else None
        leg = CallLeg(
            leg_id=leg_id,
            dialog=dialog,
            invite_entry=None,
            source=destination,
            transport=transport,
            state=LegState.CALLING,
            invite_had_offer=bool(sdp),
            registered_flow=registered_flow,
            dial=_Dial(
                invite=invite,
                invite_key=(),
                auth=auth,
                ring_deadline=None if ring_timeout is None else now + ring_timeout,
            ),
        )
        self._legs[leg_id] = leg
        self._send_invite(leg, invite, now)
        self._schedule(leg)  # the ring timeout
        return leg_id

    def ringing(self, leg_id: str, now: float) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.state is not LegState.OFFERED:
            return
        entry = _uas_entry(leg)
        response = self._dialog_response(leg, entry.transaction.request, 180, dialog_creating=True)
        self._respond_with(entry, response, now)

    def accept(self, leg_id: str, sdp: bytes, now: float) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.state is not LegState.OFFERED:
            return
        entry = _uas_entry(leg)
        response = self._dialog_response(leg, entry.transaction.request, 200, sdp=sdp, dialog_creating=True)
        self._respond_with(entry, response, now)
        _move(leg, LegState.ACCEPTED)
        leg.dialog.state = DialogState.CONFIRMED
        self._await_ack(leg, response, entry, now, offer_in_2xx=not leg.invite_had_offer, initial=True)

    def reject(
        self,
        leg_id: str,
        status: int,
        now: float,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not 300 <= status <= 699:
            raise ValueError(f"reject() needs a 3xx-6xx status, not {status}")
        leg = self._legs.get(leg_id)
        if leg is None or leg.state is not LegState.OFFERED:
            return
        self._final_to_invite(leg, status, now, reason=reason, headers=headers)
        self._end_leg(leg, "rejected")

    def hangup(self, leg_id: str, now: float) -> None:
        """End a leg: UAS -> 480 before the answer, BYE after; UAC (dial) -> CANCEL before the answer, BYE after."""
        leg = self._legs.get(leg_id)
        if leg is None:
            return
        if leg.dial is not None and leg.state in (LegState.CALLING, LegState.EARLY):
            _move(leg, LegState.CANCELLING)
            if leg.dial.provisional:
                self._send_cancel(leg, now)
            # else 9.1: no CANCEL before a provisional; one goes out when it arrives, or Timer B ends the leg.
        elif leg.state is LegState.OFFERED:
            self._final_to_invite(leg, 480, now)
            self._end_leg(leg, "hangup")
        elif leg.state is LegState.ACCEPTED:
            leg.hangup_requested = True
        elif leg.state is LegState.CONFIRMED:
            self._abandon_pending_offer(leg, now)
            self._send_bye(leg, now)

    def answer_offer(self, leg_id: str, sdp: bytes, now: float) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.pending_offer is None or leg.state in (LegState.ENDING, LegState.ENDED):
            return
        pending = leg.pending_offer
        leg.pending_offer = None
        request = pending.entry.transaction.request
        leg.dialog.update_remote_target(request)  # target refresh only once the request succeeds (12.2.2)
        response = self._dialog_response(leg, request, 200, sdp=sdp)
        self._respond_with(pending.entry, response, now)
        if pending.method == "INVITE":
            self._await_ack(leg, response, pending.entry, now, offer_in_2xx=not pending.had_offer, initial=False)

    def reject_offer(self, leg_id: str, status: int, now: float, headers: Mapping[str, str] | None = None) -> None:
        if not 300 <= status <= 699:
            raise ValueError(f"reject_offer() needs a 3xx-6xx status, not {status}")
        leg = self._legs.get(leg_id)
        if leg is None or leg.pending_offer is None:
            return
        pending = leg.pending_offer
        leg.pending_offer = None
        extra = list(headers.items()) if headers else []
        self._respond(pending.entry, status, now, to_tag=leg.dialog.local_tag, headers=extra)

    # --- requests -------------------------------------------------------------------------------------------------

    def _on_request(self, request: SipRequest, source: Address, now: float, transport: str) -> None:
        self._stamp_via(request, source)
        destination = self._response_destination(request.top_via, source, transport)
        key = server_key(request)
        existing = self._server.get(key)
        if existing is not None:
            accepted_invite = (
                isinstance(existing.transaction, ServerInviteTransaction)
                and existing.transaction.state is TransactionState.ACCEPTED
            )
            if not (request.method == "ACK" and accepted_invite):
                existing.transaction.on_request(request, now)  # a retransmission, or the ACK for our non-2xx
                self._pump_server(existing)
                return
        if request.method == "ACK":
            self._on_ack(request, source, transport, now)
            return
        to_tag = request.to_addr.tag
        leg = self._leg_for(request, to_tag)
        stateless = self._stateless_answer(request, leg, transport)
        if stateless is not None:
            status, headers = stateless
            self._reply_stateless(request, status, "", source, transport, headers)
            return
        if len(self._server) >= self._server_admission_limit(request, leg):
            self._reply_stateless(request, 503, "", source, transport, [("Retry-After", str(_FULL_RETRY_AFTER_S))])
            return
        entry = self._new_server(request, key, destination, transport, now)
        if request.method == "CANCEL":
            self._on_cancel(request, entry, now)
            return

        if to_tag is None and entry.merge_key is not None:
            original = self._merge.get(entry.merge_key)
            if original is not None and original != key and original in self._server:
                # 8.2.2.2: the same request reached us by another path (a forking proxy); answer the copy 482.
                self._respond(entry, 482, now, to_tag=self._new_tag())
                return
            self._merge[entry.merge_key] = key
        unsupported = _unsupported(request)
        if unsupported:
            self._respond(
                entry, 420, now, to_tag=to_tag or self._new_tag(), headers=[("Unsupported", ", ".join(unsupported))]
            )
            return
        if to_tag is None:
            self._on_out_of_dialog(request, entry, source, transport, now)
        elif _dialog_live(leg, request.method):
            self._on_in_dialog(leg, request, entry, now)
        else:
            self._respond(entry, 481, now)

    def _stateless_answer(
        self, request: SipRequest, leg: CallLeg | None, transport: str
    ) -> tuple[int, list[tuple[str, str]]] | None:
        """The answer to a non-INVITE request that needs no transaction (RFC 3261 8.2.7): an OPTIONS outside a
        dialog, and the refusals of requests that create nothing (405, 420, 481). A retransmission is simply
        answered again, alike (the To-tag is derived from the request), so a flood from many addresses, each under
        its own rate, is answered without holding anything. None: the request is taken in a server transaction.
        (INVITEs always are; REGISTER too, for the registrar.)"""
        method = request.method
        if method == "INVITE":
            return None
        if method == "CANCEL":
            target = self._server.get(server_key(request, method="INVITE"))
            invite_pending = target is not None and isinstance(target.transaction, ServerInviteTransaction)
            return None if invite_pending else (481, [])
        unsupported = _unsupported(request)
        if unsupported:
            return 420, [("Unsupported", ", ".join(unsupported))]
        if request.to_addr.tag is not None:
            return None if _dialog_live(leg, method) else (481, [])
        if method == "OPTIONS":
            return 200, self._options_headers(transport)
        if method == "REGISTER":
            return None
        if method in ("BYE", "INFO", "UPDATE", "PRACK"):
            return 481, []  # dialog-only methods without a dialog
        return _method_refusal(method), [("Allow", self.allow)]

    def _server_admission_limit(self, request: SipRequest, leg: CallLeg | None) -> int:
        """How full the server-transaction table may be for `request` to get one. Requests of a call in progress
        (in its dialog, or a CANCEL of its INVITE) may use it all; others only the first part, so that a flood of
        INVITEs from many addresses leaves room for the BYE of a call that is already up."""
        if leg is not None or request.method == "CANCEL":
            return self.max_server_transactions
        return self.max_server_transactions * 3 // 4

    def _on_out_of_dialog(
        self, request: SipRequest, entry: _ServerEntry, source: Address, transport: str, now: float
    ) -> None:
        """INVITE and REGISTER: every other request outside a dialog was answered by `_stateless_answer`."""
        if request.method == "INVITE":
            self._on_invite(request, entry, source, transport, now)
        else:
            self._on_register(request, entry, source, transport, now)

    def _on_register(
        self, request: SipRequest, entry: _ServerEntry, source: Address, transport: str, now: float
    ) -> None:
        if self.registrar is None:
            self._respond(entry, 405, now, to_tag=self._new_tag(), headers=[("Allow", self.allow)])
            return
        self._reply(entry, self.registrar.register(request, source, transport, now), now)

    def _reply(self, entry: _ServerEntry, reply: Reply, now: float) -> None:
        self._respond(entry, reply.status, now, to_tag=self._new_tag(), headers=list(reply.headers))

    def _on_invite(self, request: SipRequest, entry: _ServerEntry, source: Address, transport: str, now: float) -> None:
        self._respond(entry, 100, now)
        if request.body and request.content_type != "application/sdp":
            self._respond(entry, 415, now, to_tag=self._new_tag(), headers=[("Accept", ACCEPT)])
            return
        if not _accepts_sdp(request):
            self._respond(entry, 406, now, to_tag=self._new_tag())  # our answer must be SDP (RFC 4475 3.3.15)
            return
        request_uri = request.request_uri
        from_addr = request.from_addr
        account: str | None = None
        if self.registrar is not None and self.registrar.is_local_user(from_addr.uri):
            # A call from one of our accounts proves it, as a registrar's own users' calls do (RFC 3261 22.3).
            outcome = self.registrar.authenticate(request, now, proxy=True)
            if isinstance(outcome, Reply):
                self._reply(entry, outcome, now)
                return
            account = outcome.username
        leg_id = self._new_leg_id()
        fallback = SipUri(scheme="sip", user=None, host=_bracket(source[0]), port=source[1])
        dialog = Dialog.as_uas(request, self._new_tag(), fallback)
        leg = CallLeg(
            leg_id=leg_id,
            dialog=dialog,
            invite_entry=entry,
            source=source,
            transport=transport,
            invite_had_offer=_is_sdp(request),
        )
        entry.leg_id = leg_id
        self._legs[leg_id] = leg
        self._dialogs[dialog.id] = leg_id
        x_headers: dict[str, str] = {}
        for name, value in request.headers:
            if name.lower().startswith("x-"):
                x_headers.setdefault(name, value)
        self._events.append(
            IncomingCall(
                leg_id=leg_id,
                request_uri=request.uri,
                request_user=request_uri.unescaped_user,
                from_uri=str(from_addr.uri),
                from_user=from_addr.uri.unescaped_user,
                from_display=from_addr.display_name,
                to_uri=str(request.to_addr.uri),
                x_headers=x_headers,
                sdp=request.body if _is_sdp(request) else None,
                source=source,
                transport=transport,
                account=account,
            )
        )

    def _on_in_dialog(self, leg: CallLeg, request: SipRequest, entry: _ServerEntry, now: float) -> None:
        entry.leg_id = leg.leg_id
        _adopt_flow(leg, entry.destination, entry.transport)
        if not leg.dialog.check_remote_seq(request):
            self._respond(entry, 500, now, reason="CSeq Out of Order")
            return
        method = request.method
        if method == "BYE":
            self._on_bye(leg, entry, now)
        elif method == "INVITE":
            self._on_reinvite(leg, request, entry, now)
        elif method == "UPDATE":
            self._on_update(leg, request, entry, now)
        elif method == "INFO":
            self._respond(entry, 200, now)
            self._events.append(InfoReceived(leg.leg_id, request.content_type or "", request.body))
        elif method == "OPTIONS":
            self._respond(entry, 200, now, headers=self._options_headers(entry.transport))
        else:
            self._respond(entry, _method_refusal(method), now, headers=[("Allow", self.allow)])

    def _on_bye(self, leg: CallLeg, entry: _ServerEntry, now: float) -> None:
        self._respond(entry, 200, now)
        if leg.state is LegState.OFFERED:
            self._final_to_invite(leg, 487, now)  # RFC 3261 15.1.2: BYE on an early dialog ends the INVITE
        self._abandon_pending_offer(leg, now)
        leg.pending_2xx = None
        if leg.state is LegState.ENDING:
            return  # crossed BYEs: ours reports the end when it completes
        self._end_leg(leg, "bye")

    def _on_reinvite(self, leg: CallLeg, request: SipRequest, entry: _ServerEntry, now: float) -> None:
        self._respond(entry, 100, now)
        if request.body and request.content_type != "application/sdp":
            self._respond(entry, 415, now, headers=[("Accept", ACCEPT)])
        elif leg.state is LegState.OFFERED:
            # 14.2: our answer to the first INVITE is still outstanding.
            self._respond(entry, 500, now, headers=[("Retry-After", str(self._random.randint(0, 10)))])
        elif leg.pending_offer is not None or leg.pending_2xx is not None:
            self._respond(entry, 491, now)  # 14.2: an offer/answer exchange is still in progress
        else:
            leg.pending_offer = _PendingOffer(entry=entry, method="INVITE", had_offer=_is_sdp(request))
            self._events.append(OfferReceived(leg.leg_id, request.body if _is_sdp(request) else None, "INVITE"))

    def _on_update(self, leg: CallLeg, request: SipRequest, entry: _ServerEntry, now: float) -> None:
        if not _is_sdp(request):
            self._respond_with(entry, self._dialog_response(leg, request, 200), now)  # a refresh without offer
        elif leg.pending_offer is not None or (leg.pending_2xx is not None and not leg.pending_2xx.initial):
            self._respond(entry, 491, now)
        else:
            leg.pending_offer = _PendingOffer(entry=entry, method="UPDATE", had_offer=True)
            self._events.append(OfferReceived(leg.leg_id, request.body, "UPDATE"))

    def _on_ack(self, request: SipRequest, source: Address, transport: str, now: float) -> None:
        to_tag = request.to_addr.tag
        leg = self._leg_for(request, to_tag) if to_tag else None
        if leg is None or leg.pending_2xx is None or request.cseq.number != leg.pending_2xx.cseq:
            return  # ACK for nothing we wait on (a retransmitted ACK, or an unknown dialog): dropped, never answered
        _adopt_flow(leg, source, transport)
        pending = leg.pending_2xx
        leg.pending_2xx = None
        sdp = request.body if pending.offer_in_2xx and _is_sdp(request) else None
        if pending.initial:
            _move(leg, LegState.CONFIRMED)
            if leg.hangup_requested:
                self._send_bye(leg, now)
                return
            self._events.append(CallConfirmed(leg.leg_id, sdp))
        elif pending.offer_in_2xx:
            self._events.append(OfferAnswered(leg.leg_id, sdp))

    def _on_cancel(self, request: SipRequest, entry: _ServerEntry, now: float) -> None:
        invite_entry = self._server.get(server_key(request, method="INVITE"))
        if invite_entry is None or not isinstance(invite_entry.transaction, ServerInviteTransaction):
            raise RuntimeError("a CANCEL without its INVITE's transaction is answered by _stateless_answer")
        leg = self._legs.get(invite_entry.leg_id) if invite_entry.leg_id else None
        to_tag = leg.dialog.local_tag if leg else self._new_tag()
        self._respond(entry, 200, now, to_tag=to_tag)  # 9.2: 200 even when the INVITE already has its final
        if invite_entry.transaction.final_sent:
            return
        self._respond(invite_entry, 487, now, to_tag=to_tag)
        if leg is None:
            return
        if leg.state is LegState.OFFERED and invite_entry is leg.invite_entry:
            leg.end_reported = True
            self._events.append(CallCancelled(leg.leg_id))
            self._finish_leg(leg)
        elif leg.pending_offer is not None and leg.pending_offer.entry is invite_entry:
            leg.pending_offer = None  # a cancelled re-INVITE: the dialog and the old session stay

    # --- responses (to our client transactions) -----------------------------------------------------------------------

    def _on_response(self, response: SipResponse, now: float) -> None:
        entry = self._client.get(client_key(response))
        if entry is None:
            return  # stray, or a retransmission after the transaction ended: dropped (17.1.3)
        entry.transaction.on_response(response, now)
        self._pump_client(entry, now)

    # --- outbound calls (dial) ---------------------------------------------------------------------------------------

    def _send_invite(self, leg: CallLeg, invite: SipRequest, now: float) -> None:
        dial = _dial_of(leg)
        transaction = ClientInviteTransaction(invite, now, reliable=_reliable(leg.transport))
        entry = _ClientEntry(transaction.key, transaction, leg.source, leg.transport, leg.leg_id)
        self._client[entry.key] = entry
        dial.invite = invite
        dial.invite_key = entry.key
        dial.provisional = False
        self._pump_client(entry, now)

    def _on_dial_event(self, entry: _ClientEntry, event: TransactionEvent, now: float) -> None:
        leg = self._legs.get(entry.leg_id) if entry.leg_id else None
        if leg is not None and leg.state not in _DIALLING:
            # The INVITE was already answered: its transaction lingers in Accepted for 2xx retransmits, and a
            # transport failure then is the dialog's business, not the INVITE's. (An earlier auth round's INVITE
            # needs no check: in Completed it only absorbs retransmits, and a transport failure also fails the
            # current round, which has the same destination.)
            leg = None
        if isinstance(event, ResponseReceived):
            status = event.response.status
            if 200 <= status < 300:
                self._on_dial_2xx(entry, leg, event.response, now)
            elif leg is None:
                return
            elif status < 200:
                self._on_dial_provisional(leg, event.response, now)
            else:
                self._on_dial_final(leg, event.response, now)
        elif leg is not None:
            if leg.state is LegState.CANCELLING:
                self._end_leg(leg, "cancelled")
            elif isinstance(event, TransactionTimedOut):
                self._fail_dial(leg, 408)
            else:
                self._fail_dial(leg, 503)

    def _on_dial_provisional(self, leg: CallLeg, response: SipResponse, now: float) -> None:
        dial = _dial_of(leg)
        dial.provisional = True
        if leg.state is LegState.CANCELLING:
            if not dial.cancel_sent:
                self._send_cancel(leg, now)  # hangup() came before any provisional (9.1)
            return
        if response.status > 100:
            _move(leg, LegState.EARLY)
            self._events.append(
                CallProgress(leg.leg_id, response.status, response.reason, response.body if _is_sdp(response) else None)
            )

    def _on_dial_2xx(self, entry: _ClientEntry, leg: CallLeg | None, response: SipResponse, now: float) -> None:
        tag = response.to_addr.tag or ""
        sent = entry.acks.get(tag)
        if sent is not None:
            self._outgoing.append(sent)  # a retransmitted 2xx: the same ACK again, nothing new to report
            return
        invite = entry.transaction.request
        dialog = Dialog.as_uac(invite, response)
        dialled = self._legs.get(entry.leg_id) if entry.leg_id else None  # `leg` is None once it was answered
        registered_flow = dialled is not None and dialled.registered_flow
        hop = self._in_dialog_destination(dialog, entry.destination, entry.transport, registered_flow=registered_flow)
        ack = dialog.create_request(
            "ACK",
            via_host=self.contact_host,
            via_port=self.contact_port,
            transport=hop.transport,
            branch=self._new_branch(),
            user_agent=self.user_agent,
            cseq=invite.cseq.number,
        )
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.headers.get_all(name):
                ack.headers.add(name, value)  # 13.2.2.4: the ACK carries the INVITE's credentials
        out = Outgoing(ack.to_bytes(), hop.address, hop.transport, hop.port_named)
        entry.acks[tag] = out
        self._outgoing.append(out)
        if leg is None:
            # Another fork answered too (or the call is already answered, or gone): one dialog is all we want, so
            # this one is ACKed and ended at once (13.2.2.4).
            bye = self._new_bye(dialog, entry.destination, entry.transport, now, None, registered_flow=registered_flow)
            self._pump_client(bye, now)
            return
        leg.dialog = dialog
        self._dialogs[dialog.id] = leg.leg_id
        cancelled = leg.state is LegState.CANCELLING
        _move(leg, LegState.CONFIRMED)
        if cancelled:
            self._send_bye(leg, now)  # the 2xx crossed our CANCEL: ACK it, then BYE (CallEnded("hangup"))
        else:
            self._events.append(CallAnswered(leg.leg_id, response.body if _is_sdp(response) else None))

    def _on_dial_final(self, leg: CallLeg, response: SipResponse, now: float) -> None:
        """3xx-6xx (the transaction has ACKed it): answer a challenge, or the call failed."""
        if leg.state is LegState.CANCELLING:
            self._end_leg(leg, "cancelled")  # normally 487; any final ends a call we were cancelling
        elif response.status in (401, 407) and self._retry_with_credentials(leg, response, now):
            return
        else:
            self._fail_dial(leg, response.status, response.reason)

    def _retry_with_credentials(self, leg: CallLeg, response: SipResponse, now: float) -> bool:
        """RFC 3261 22.2/22.3: re-send the INVITE answering the challenge (new branch, CSeq + 1, same Call-ID and
        From-tag). False, so that the call fails, when `_authorized_retry` gives up."""
        invite = self._authorized_retry(leg, _dial_of(leg).invite, response)
        if invite is None:
            return False
        _move(leg, LegState.CALLING)
        self._send_invite(leg, invite, now)
        return True

    def _retry_bye(self, leg: CallLeg, entry: _ClientEntry, response: SipResponse, now: float) -> bool:
        """A trunk that challenges our BYE (it bills until it accepts one): answer as for the INVITE."""
        bye = self._authorized_retry(leg, entry.transaction.request, response)
        if bye is None:
            return False
        retry = self._new_client(bye, entry.destination, entry.transport, now, leg.leg_id, port_named=entry.port_named)
        leg.bye_key = retry.key
        self._pump_client(retry, now)
        return True

    def _authorized_retry(self, leg: CallLeg, request: SipRequest, response: SipResponse) -> SipRequest | None:
        """`request` again with a new branch, the dialog's next CSeq, and an answer to every challenge met so far,
        each with a fresh nc/cnonce (a proxy's 407 and the callee's 401 both stay needed). None for incoming calls
        or without credentials, after `_MAX_AUTH_ROUNDS`, or when a realm that `request` already answered
        challenges again without stale=true: the credentials are wrong."""
        dial = leg.dial
        if dial is None or dial.auth is None or dial.auth_rounds >= _MAX_AUTH_ROUNDS:
            return None
        proxy = response.status == 407
        header = "Proxy-Authorization" if proxy else "Authorization"
        challenges = select_challenges(
            parse_challenges(response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"))
        )
        answered = {_answered_realm(value) for value in request.headers.get_all(header)}
        if not challenges or any(c.realm in answered and not c.stale for c in challenges):
            return None
        for challenge in challenges:
            dial.challenges[(header, challenge.realm)] = challenge
        headers = request.headers.copy()
        headers.replace_first("Via", str(request.top_via.with_params(branch=self._new_branch())))
        leg.dialog.local_seq += 1  # a new request in the dialog (12.2.1.1), even if only a BYE follows
        headers.set("CSeq", f"{leg.dialog.local_seq} {request.method}")
        headers.remove("Authorization")
        headers.remove("Proxy-Authorization")
        for (name, _realm), challenge in dial.challenges.items():
            headers.add(name, dial.auth.authorization(challenge, request.method, request.uri, request.body))
        dial.auth_rounds += 1
        return SipRequest(method=request.method, uri=request.uri, headers=headers, body=request.body)

    def _send_cancel(self, leg: CallLeg, now: float) -> None:
        """RFC 3261 9.1 (`build_cancel`), as a transaction of its own. Its outcome does not matter: the INVITE's 487
        ends us."""
        dial = _dial_of(leg)
        cancel = build_cancel(dial.invite)
        cancel.headers.add("User-Agent", self.user_agent)
        entry = self._new_client(cancel, leg.source, leg.transport, now, None)
        dial.cancel_sent = True
        dial.give_up_at = now + 64 * T1
        self._schedule(leg)
        self._pump_client(entry, now)

    def _dial_timer(self, leg: CallLeg, now: float) -> None:
        dial = _dial_of(leg)
        if dial.ring_deadline is not None and dial.ring_deadline <= now:
            dial.ring_deadline = None
            if leg.state in (LegState.CALLING, LegState.EARLY):
                # Reported now, once: the CANCEL (or the ACK + BYE of a 2xx that crosses it) then runs unreported.
                leg.end_reported = True
                self._events.append(CallFailed(leg.leg_id, 408, "No Answer", no_answer=True))
                self.hangup(leg.leg_id, now)
        if dial.give_up_at is None or dial.give_up_at > now or leg.state is not LegState.CANCELLING:
            return
        # 9.1: no final response 64*T1 after our CANCEL: consider the INVITE cancelled and destroy its transaction.
        self._client.pop(dial.invite_key, None)
        self._end_leg(leg, "cancelled")

    def _fail_dial(self, leg: CallLeg, status: int, reason: str | None = None) -> None:
        leg.end_reported = True
        self._events.append(CallFailed(leg.leg_id, status, reason or REASON_PHRASES.get(status, "Unknown")))
        self._finish_leg(leg)

    # --- leg helpers ------------------------------------------------------------------------------------------------

    def _leg_for(self, request: SipRequest, to_tag: str | None) -> CallLeg | None:
        if to_tag is None:
            return None
        leg_id = self._dialogs.get((request.call_id, to_tag, request.from_addr.tag or ""))
        return self._legs.get(leg_id) if leg_id else None

    def _leg_timer(self, leg: CallLeg, now: float) -> None:
        self._leg_2xx_timer(leg, now)
        if leg.dial is not None and leg.state is not LegState.ENDED:
            self._dial_timer(leg, now)
        self._schedule(leg)

    def _leg_2xx_timer(self, leg: CallLeg, now: float) -> None:
        pending = leg.pending_2xx
        if pending is None:
            return
        if pending.next_at <= now < pending.give_up_at:
            self._send(pending.response, pending.destination, pending.transport)
            pending.interval = min(2 * pending.interval, T2)
            pending.next_at = now + pending.interval
        if pending.give_up_at <= now:
            # 13.3.1.4: no ACK for 64*T1 -> the dialog is confirmed but the session is torn down with a BYE.
            leg.pending_2xx = None
            _move(leg, LegState.CONFIRMED)
            self._abandon_pending_offer(leg, now)
            if not leg.hangup_requested:
                leg.end_reported = True
                self._events.append(CallEnded(leg.leg_id, "ack_timeout"))
            self._send_bye(leg, now)

    def _await_ack(
        self,
        leg: CallLeg,
        response: SipResponse,
        entry: _ServerEntry,
        now: float,
        *,
        offer_in_2xx: bool,
        initial: bool,
    ) -> None:
        """Resend the 2xx `response` (just sent) until its ACK comes (13.3.1.4)."""
        leg.pending_2xx = _Pending2xx(
            response=response,
            cseq=entry.transaction.request.cseq.number,
            destination=entry.destination,
            transport=entry.transport,
            next_at=now + T1,
            interval=T1,
            give_up_at=now + 64 * T1,
            offer_in_2xx=offer_in_2xx,
            initial=initial,
        )
        self._schedule(leg)

    def _final_to_invite(
        self,
        leg: CallLeg,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = list(headers.items()) if headers else []
        self._respond(_uas_entry(leg), status, now, reason=reason, to_tag=leg.dialog.local_tag, headers=extra)

    def _abandon_pending_offer(self, leg: CallLeg, now: float) -> None:
        if leg.pending_offer is not None:
            self._respond(leg.pending_offer.entry, 487, now, to_tag=leg.dialog.local_tag)
            leg.pending_offer = None

    def _send_bye(self, leg: CallLeg, now: float) -> None:
        entry = self._new_bye(
            leg.dialog,
            leg.source,
            leg.transport,
            now,
            leg.leg_id,
            flow_lost=leg.flow_lost,
            registered_flow=leg.registered_flow,
        )
        leg.bye_key = entry.key
        _move(leg, LegState.ENDING)
        leg.pending_2xx = None  # a re-INVITE's 2xx awaiting its ACK: the BYE supersedes it
        self._pump_client(entry, now)

    def _new_bye(
        self,
        dialog: Dialog,
        source: Address,
        transport: str,
        now: float,
        leg_id: str | None,
        *,
        flow_lost: bool = False,
        registered_flow: bool = False,
    ) -> _ClientEntry:
        hop = self._in_dialog_destination(
            dialog, source, transport, flow_lost=flow_lost, registered_flow=registered_flow
        )
        request = dialog.create_request(
            "BYE",
            via_host=self.contact_host,
            via_port=self.contact_port,
            transport=hop.transport,
            branch=self._new_branch(),
            user_agent=self.user_agent,
        )
        return self._new_client(request, hop.address, hop.transport, now, leg_id, port_named=hop.port_named)

    def _new_client(
        self,
        request: SipRequest,
        destination: Address,
        transport: str,
        now: float,
        leg_id: str | None,
        *,
        port_named: bool = True,
    ) -> _ClientEntry:
        """A client non-INVITE transaction for `request`, registered; the caller pumps it to send it."""
        transaction = ClientNonInviteTransaction(request, now, reliable=_reliable(transport))
        entry = _ClientEntry(transaction.key, transaction, destination, transport, leg_id, port_named)
        self._client[entry.key] = entry
        return entry

    @staticmethod
    def _in_dialog_destination(
        dialog: Dialog, source: Address, transport: str, *, flow_lost: bool = False, registered_flow: bool = False
    ) -> NextHop:
        """Where a request in the dialog goes. On TCP we reuse the connection the call came in on or our INVITE
        went out on (the peer may not accept inbound connections) while it lasts, and to a registered phone we
        keep to where it registered from (`dial(registered_flow=)`); on UDP otherwise, or once that connection is
        gone, the next hop (route set / Contact)."""
        if (_reliable(transport) or registered_flow) and not flow_lost:
            return NextHop(source[0], source[1], transport)
        return dialog.next_hop(transport)

    def _end_leg(self, leg: CallLeg, reason: str) -> None:
        if not leg.end_reported:
            leg.end_reported = True
            self._events.append(CallEnded(leg.leg_id, reason))
        self._finish_leg(leg)

    def _finish_leg(self, leg: CallLeg) -> None:
        """Forget the leg and its dialog; its transactions stay until their own timers end them."""
        _move(leg, LegState.ENDED)
        leg.dialog.state = DialogState.TERMINATED
        leg.pending_2xx = None
        self._legs.pop(leg.leg_id, None)
        self._dialogs.pop(leg.dialog.id, None)

    # --- the timer heap ---------------------------------------------------------------------------------------------

    def _schedule(self, owner: TimerOwner) -> None:
        """Put the owner's next deadline on the heap, if it has one and it is not there yet. Called after everything
        that may have changed it: each pump of a transaction (every input to one is followed by a pump), and for a leg
        each command or timer that sets one of its deadlines. One that moves later or goes without a call here (an
        ACK, a call ending) only leaves a record that wakes the owner for nothing, which `next_timer` re-files."""
        deadline = self._deadline_of(owner)
        if deadline == owner.timer_at:
            return
        owner.timer_at = deadline
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._timer_order), owner))

    @staticmethod
    def _deadline_of(owner: TimerOwner) -> float | None:
        if isinstance(owner, CallLeg):
            return _leg_deadline(owner)
        return owner.transaction.next_timer()

    def _timer_owner_live(self, owner: TimerOwner) -> bool:
        if isinstance(owner, _ServerEntry):
            return self._server.get(owner.key) is owner
        if isinstance(owner, _ClientEntry):
            return self._client.get(owner.key) is owner
        return self._legs.get(owner.leg_id) is owner

    # --- transactions -----------------------------------------------------------------------------------------------

    def _new_server(
        self, request: SipRequest, key: TransactionKey, destination: Address, transport: str, now: float
    ) -> _ServerEntry:
        reliable = _reliable(transport)
        transaction: ServerTransaction
        if request.method == "INVITE":
            transaction = ServerInviteTransaction(request, now, reliable=reliable)
        else:
            transaction = ServerNonInviteTransaction(request, now, reliable=reliable)
        entry = _ServerEntry(key=key, transaction=transaction, destination=destination, transport=transport)
        if request.to_addr.tag is None and request.method != "CANCEL":
            cseq = request.cseq
            entry.merge_key = (request.from_addr.tag or "", request.call_id, cseq.number, cseq.method)
        self._server[key] = entry
        return entry

    def _pump_server(self, entry: _ServerEntry) -> None:
        outbox, events = entry.transaction.take_output()
        self._schedule(entry)
        for message in outbox:
            self._send(message, entry.destination, entry.transport)
        for event in events:
            if isinstance(event, TransactionTimedOut):
                log.info("no ACK for our final response to %s", escaped_for_log(entry.transaction.request.call_id))
        if entry.transaction.terminated:
            self._server.pop(entry.key, None)
            if entry.merge_key is not None and self._merge.get(entry.merge_key) == entry.key:
                del self._merge[entry.merge_key]

    def _pump_client(self, entry: _ClientEntry, now: float) -> None:
        outbox, events = entry.transaction.take_output()
        self._schedule(entry)
        for message in outbox:
            self._send(message, entry.destination, entry.transport, port_named=entry.port_named)
        if entry.transaction.terminated:
            self._client.pop(entry.key, None)
        for event in events:
            if isinstance(entry.transaction, ClientInviteTransaction):  # only dial() sends INVITEs so far
                self._on_dial_event(entry, event, now)
                continue
            finished = isinstance(event, TransactionTimedOut | TransportFailed) or (
                isinstance(event, ResponseReceived) and event.response.status >= 200
            )
            if finished and entry.leg_id is not None:
                leg = self._legs.get(entry.leg_id)
                if leg is not None and leg.bye_key == entry.key:
                    if (
                        isinstance(event, ResponseReceived)
                        and event.response.status in (401, 407)
                        and self._retry_bye(leg, entry, event.response, now)
                    ):
                        continue
                    self._end_leg(leg, "hangup")  # 15.1.1: any final response (or none) ends the dialog

    def _respond(
        self,
        entry: _ServerEntry,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        response = build_response(entry.transaction.request, status, reason, to_tag=to_tag, headers=headers)
        response.headers.add("Server", self.user_agent)
        if body:
            response.headers.add("Content-Type", "application/sdp")
            response.body = body
        self._respond_with(entry, response, now)

    def _respond_with(self, entry: _ServerEntry, response: SipResponse, now: float) -> None:
        entry.transaction.respond(response, now)
        self._pump_server(entry)

    def _dialog_response(
        self, leg: CallLeg, request: SipRequest, status: int, *, sdp: bytes | None = None, dialog_creating: bool = False
    ) -> SipResponse:
        """18x/2xx in the dialog: To-tag, Contact, Record-Route (dialog-creating only), Allow, and the SDP if any."""
        response = build_response(request, status, to_tag=leg.dialog.local_tag)
        if dialog_creating:
            response_record_routes(request, response)
        response.headers.add("Contact", self._contact(leg.transport))
        if status >= 200:
            response.headers.add("Allow", self.allow)
        response.headers.add("Server", self.user_agent)
        if sdp:
            response.headers.add("Content-Type", "application/sdp")
            response.body = sdp
        return response

    def _options_headers(self, transport: str) -> list[tuple[str, str]]:
        return [
            ("Contact", self._contact(transport)),
            ("Allow", self.allow),
            ("Accept", ACCEPT),
            ("Supported", ", ".join(SUPPORTED)),
        ]

    def _reply_stateless(
        self,
        request: SipRequest,
        status: int,
        reason: str,
        source: Address,
        transport: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Answer a request without a transaction (RFC 3261 8.2.7): one we will not process (malformed, oversized,
        over the server-transaction cap) or one answered without state (`_stateless_answer`)."""
        try:
            self._stamp_via(request, source)
            destination = self._response_destination(request.top_via, source, transport)
        except SipParseError:
            return
        phrase = "Bad Request" if status == 400 else None
        response = build_response(request, status, phrase, to_tag=self._stateless_tag(request), headers=headers)
        response.headers.add("Server", self.user_agent)
        if status == 400:
            response.headers.add("Warning", f'399 {self.contact_host} "{_warning_text(reason)}"')
        self._send(response, destination, transport)

    # --- transport details ------------------------------------------------------------------------------------------

    def _stamp_via(self, request: SipRequest, source: Address) -> None:
        """RFC 3261 18.2.1 received= when sent-by is not the source; RFC 3581 rport= when asked for. A received=
        the client wrote itself is overwritten with the source, whatever its sent-by: our responses go there, and
        the client's own would send them to any third party it names (reflection)."""
        via = request.top_via
        changes: dict[str, str | None] = {}
        if via.received is not None or via.host.strip("[]").lower() != source[0].lower():
            changes["received"] = source[0]
        if via.has_rport and via.rport is None:
            changes["received"] = source[0]
            changes["rport"] = str(source[1])
        if changes:
            request.headers.replace_first("Via", str(via.with_params(**changes)))

    @staticmethod
    def _response_destination(via: Via, source: Address, transport: str) -> Address:
        """RFC 3261 18.2.2 / RFC 3581 4: TCP answers on the connection; rport -> source; else received / sent-by."""
        if _reliable(transport) or via.has_rport:
            return source
        if via.received:
            return (via.received.strip("[]"), via.port or 5060)
        return (via.host.strip("[]"), via.port or 5060)

    def _send(self, message: SipMessage, destination: Address, transport: str, *, port_named: bool = True) -> None:
        self._outgoing.append(Outgoing(message.to_bytes(), destination, transport, port_named))

    def _contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:{self.contact_host}:{self.contact_port}{suffix}>"

    def _stateless_tag(self, request: SipRequest) -> str:
        """8.2.7: a stateless UAS gives a request's retransmissions the same To-tag: a keyed hash of what names the
        request (the raw Via, From, Call-ID and CSeq), so that no one can make two requests share a tag on purpose."""
        names = [request.headers.get(name) or "" for name in ("Via", "From", "Call-ID", "CSeq")]
        digest = hashlib.blake2b("\n".join(names).encode(), digest_size=8, key=self._tag_key)
        return digest.hexdigest()

    def _new_tag(self) -> str:
        return f"{self._random.getrandbits(64):016x}"

    def _new_branch(self) -> str:
        return f"{MAGIC_COOKIE}{self._random.getrandbits(64):016x}"

    def _new_leg_id(self) -> str:
        while True:
            leg_id = f"leg-{self._random.getrandbits(48):012x}"
            if leg_id not in self._legs:
                return leg_id

    # --- introspection (tests, metrics) -----------------------------------------------------------------------------

    def table_sizes(self) -> dict[str, int]:
        """How many transactions, dialogs and legs are held: all zero once calls end and timers have run out."""
        return {
            "server_transactions": len(self._server),
            "client_transactions": len(self._client),
            "dialogs": len(self._dialogs),
            "legs": len(self._legs),
            "merge_index": len(self._merge),
        }


def _warning_text(reason: str) -> str:
    return "".join(c for c in reason if c.isprintable() and c not in '"\\')[:100]
