"""The SIP user agent core (RFC 3261 section 8, 12-15), UAS side: owns transactions, dialogs and call legs.

Sans-I/O: `receive(bytes, source, now)` and the commands take the time; `drain()` hands back the events and the
datagrams/stream writes to perform; `next_timer()` / `on_timer(now)` drive retransmissions and timeouts. One
`CallLeg` per incoming INVITE dialog. Its transitions (made by the commands and the `_on_*` handlers, each through
`_move`, which checks them against `_LEG_TRANSITIONS`):

    OFFERED   --ringing()-->           OFFERED   (180 with To-tag)
    OFFERED   --accept()-->            ACCEPTED  (200 + SDP, resent at T1, 2T1 .. T2 until ACK)
    OFFERED   --reject()/hangup()-->   ENDED     (final 3xx-6xx; the INVITE transaction absorbs the ACK)
    OFFERED   --CANCEL / BYE-->        ENDED     (487 to the INVITE, CallCancelled / CallEnded("bye"))
    ACCEPTED  --ACK-->                 CONFIRMED (CallConfirmed; a deferred hangup() now sends its BYE)
    ACCEPTED  --no ACK in 64*T1-->     ENDING    (BYE sent, CallEnded("ack_timeout"))
    CONFIRMED --re-INVITE/UPDATE-->    CONFIRMED (OfferReceived; answer_offer()/reject_offer(); 491 if one is pending)
    CONFIRMED --BYE-->                 ENDED     (200, CallEnded("bye"))
    CONFIRMED --hangup()-->            ENDING    (BYE in a client non-INVITE transaction)
    ENDING    --BYE final/timeout-->   ENDED     (CallEnded("hangup") unless already reported)
    any       --transport_failed()-->  ENDED     (TCP calls on that connection: CallEnded("transport_error"))

Commands for a leg that no longer exists or is in the wrong state are ignored: the engine and the network race
(a CANCEL can land while the engine is about to accept), and the engine learns the outcome from the events.

Outbound calls (next issue) slot in beside this: a `ClientInviteTransaction` created by a `dial()` command, a
`Dialog.as_uac` from its 2xx, the ACK for the 2xx sent by the leg (the transaction sends non-2xx ACKs), and 401/407
answered by re-sending with credentials. Responses already reach `_on_response`, keyed by branch + CSeq method.
"""

from __future__ import annotations

import enum
import logging
import random as random_module
from collections.abc import Mapping
from dataclasses import dataclass

from dialbridge.sip.dialog import Dialog, DialogId, DialogState, response_record_routes
from dialbridge.sip.message import (
    DEFAULT_MAX_SIZE,
    MAGIC_COOKIE,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from dialbridge.sip.transaction import (
    T1,
    T2,
    ClientNonInviteTransaction,
    ClientTransaction,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TransactionKey,
    TransactionState,
    TransactionTimedOut,
    TransportFailed,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE")
ALLOW = ", ".join(ALLOWED_METHODS)
ACCEPT = "application/sdp"
SUPPORTED: tuple[str, ...] = ()  # no extensions yet (no 100rel, timer, replaces): any Require gets 420


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes to put on the wire: one UDP datagram, or a write on the TCP connection to `destination`."""

    data: bytes
    destination: Address
    transport: str  # "udp" | "tcp"


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
class CallEnded:
    """The leg is over. reason: "bye" | "ack_timeout" | "hangup" | "rejected" | "transport_error"."""

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


SipEvent = IncomingCall | CallConfirmed | CallCancelled | CallEnded | OfferReceived | OfferAnswered | InfoReceived


# --- internal state -----------------------------------------------------------------------------------------------


class LegState(enum.Enum):
    OFFERED = "offered"
    ACCEPTED = "accepted"
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


@dataclass(eq=False, slots=True)
class _ClientEntry:
    key: TransactionKey
    transaction: ClientTransaction
    destination: Address
    transport: str
    leg_id: str | None = None


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
class CallLeg:
    leg_id: str
    dialog: Dialog
    invite_entry: _ServerEntry
    source: Address
    transport: str
    state: LegState = LegState.OFFERED
    pending_2xx: _Pending2xx | None = None
    pending_offer: _PendingOffer | None = None
    bye_key: TransactionKey | None = None
    end_reported: bool = False
    hangup_requested: bool = False  # hangup() before the ACK: BYE waits for it (RFC 3261 15)
    invite_had_offer: bool = False


# Every leg state change goes through `_move`, which enforces the diagram in the module docstring.
_LEG_TRANSITIONS: dict[LegState, frozenset[LegState]] = {
    LegState.OFFERED: frozenset({LegState.ACCEPTED, LegState.ENDED}),
    LegState.ACCEPTED: frozenset({LegState.CONFIRMED, LegState.ENDED}),  # ACK timeout: CONFIRMED, then ENDING
    LegState.CONFIRMED: frozenset({LegState.CONFIRMED, LegState.ENDING, LegState.ENDED}),
    LegState.ENDING: frozenset({LegState.ENDED}),
    LegState.ENDED: frozenset({LegState.ENDED}),
}


def _move(leg: CallLeg, state: LegState) -> None:
    if state not in _LEG_TRANSITIONS[leg.state]:
        raise RuntimeError(f"call leg {leg.leg_id}: no transition {leg.state.value} -> {state.value}")
    leg.state = state


def _is_sdp(message: SipMessage) -> bool:
    return bool(message.body) and message.content_type == "application/sdp"


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
    ) -> None:
        self.contact_host = _bracket(contact_host)
        self.contact_port = contact_port
        self.user_agent = user_agent
        self.max_message_size = max_message_size
        self._random = random if random is not None else random_module.Random()
        self._server: dict[TransactionKey, _ServerEntry] = {}
        self._client: dict[TransactionKey, _ClientEntry] = {}
        self._merge: dict[tuple[str, str, int, str], TransactionKey] = {}
        self._dialogs: dict[DialogId, str] = {}
        self._legs: dict[str, CallLeg] = {}
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
        """The engine could not reach `destination` (TCP connection lost or refused).

        Transactions sending there end (a BYE in flight then ends its call as "hangup"); calls that arrived on that
        TCP connection end with CallEnded("transport_error"), since nothing can reach the peer any more.
        """
        for server_entry in list(self._server.values()):
            if server_entry.destination == destination:
                server_entry.transaction.transport_failed()
                self._pump_server(server_entry)
        for client_entry in list(self._client.values()):
            if client_entry.destination == destination:
                client_entry.transaction.transport_failed()
                self._pump_client(client_entry, now)
        for leg in list(self._legs.values()):
            if _reliable(leg.transport) and leg.source == destination:
                self._end_leg(leg, "transport_error")

    def next_timer(self) -> float | None:
        deadlines = [entry.transaction.next_timer() for entry in self._server.values()]
        deadlines += [entry.transaction.next_timer() for entry in self._client.values()]
        for leg in self._legs.values():
            if leg.pending_2xx is not None:
                deadlines.append(min(leg.pending_2xx.next_at, leg.pending_2xx.give_up_at))
        return min((d for d in deadlines if d is not None), default=None)

    def on_timer(self, now: float) -> None:
        for server_entry in list(self._server.values()):
            deadline = server_entry.transaction.next_timer()
            if deadline is not None and deadline <= now:
                server_entry.transaction.on_timer(now)
                self._pump_server(server_entry)
        for client_entry in list(self._client.values()):
            deadline = client_entry.transaction.next_timer()
            if deadline is not None and deadline <= now:
                client_entry.transaction.on_timer(now)
                self._pump_client(client_entry, now)
        for leg in list(self._legs.values()):
            self._leg_2xx_timer(leg, now)

    def drain(self) -> tuple[list[SipEvent], list[Outgoing]]:
        events, outgoing = self._events, self._outgoing
        self._events, self._outgoing = [], []
        return events, outgoing

    # --- public: commands ------------------------------------------------------------------------------------------

    def ringing(self, leg_id: str, now: float) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.state is not LegState.OFFERED:
            return
        response = self._dialog_response(leg, leg.invite_entry.transaction.request, 180, dialog_creating=True)
        self._respond_with(leg.invite_entry, response, now)

    def accept(self, leg_id: str, sdp: bytes, now: float) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.state is not LegState.OFFERED:
            return
        entry = leg.invite_entry
        response = self._dialog_response(leg, entry.transaction.request, 200, sdp=sdp, dialog_creating=True)
        self._respond_with(entry, response, now)
        _move(leg, LegState.ACCEPTED)
        leg.dialog.state = DialogState.CONFIRMED
        leg.pending_2xx = self._pending_2xx(response, entry, now, offer_in_2xx=not leg.invite_had_offer, initial=True)

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
        leg = self._legs.get(leg_id)
        if leg is None:
            return
        if leg.state is LegState.OFFERED:
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
            leg.pending_2xx = self._pending_2xx(
                response, pending.entry, now, offer_in_2xx=not pending.had_offer, initial=False
            )

    def reject_offer(self, leg_id: str, status: int, now: float) -> None:
        if not 300 <= status <= 699:
            raise ValueError(f"reject_offer() needs a 3xx-6xx status, not {status}")
        leg = self._legs.get(leg_id)
        if leg is None or leg.pending_offer is None:
            return
        pending = leg.pending_offer
        leg.pending_offer = None
        self._respond(pending.entry, status, now, to_tag=leg.dialog.local_tag)

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
            self._on_ack(request, now)
            return
        entry = self._new_server(request, key, destination, transport, now)
        if request.method == "CANCEL":
            self._on_cancel(request, entry, now)
            return

        to_tag = request.to_addr.tag
        if to_tag is None and entry.merge_key is not None:
            original = self._merge.get(entry.merge_key)
            if original is not None and original != key and original in self._server:
                # 8.2.2.2: the same request reached us by another path (a forking proxy); answer the copy 482.
                self._respond(entry, 482, now, to_tag=self._new_tag())
                return
            self._merge[entry.merge_key] = key
        unsupported = [option.strip() for value in request.headers.get_all("Require") for option in value.split(",")]
        unsupported = [option for option in unsupported if option and option not in SUPPORTED]
        if unsupported:
            self._respond(
                entry, 420, now, to_tag=to_tag or self._new_tag(), headers=[("Unsupported", ", ".join(unsupported))]
            )
            return
        if to_tag is not None:
            self._on_in_dialog(request, entry, to_tag, now)
        else:
            self._on_out_of_dialog(request, entry, source, transport, now)

    def _on_out_of_dialog(
        self, request: SipRequest, entry: _ServerEntry, source: Address, transport: str, now: float
    ) -> None:
        method = request.method
        if method == "INVITE":
            self._on_invite(request, entry, source, transport, now)
        elif method == "OPTIONS":
            self._respond_options(entry, now, self._new_tag())
        elif method == "REGISTER":
            self._on_register(request, entry, now)
        elif method in ("BYE", "INFO", "UPDATE", "PRACK"):
            self._respond(entry, 481, now, to_tag=self._new_tag())  # dialog-only methods without a dialog
        else:
            self._respond(entry, 405, now, to_tag=self._new_tag(), headers=[("Allow", ALLOW)])

    def _on_register(self, request: SipRequest, entry: _ServerEntry, now: float) -> None:
        """The registrar hook: REGISTER is refused until a registrar is plugged in here."""
        self._respond(entry, 405, now, to_tag=self._new_tag(), headers=[("Allow", ALLOW)])

    def _on_invite(self, request: SipRequest, entry: _ServerEntry, source: Address, transport: str, now: float) -> None:
        self._respond(entry, 100, now)
        if request.body and request.content_type != "application/sdp":
            self._respond(entry, 415, now, to_tag=self._new_tag(), headers=[("Accept", ACCEPT)])
            return
        request_uri = request.request_uri
        from_addr = request.from_addr
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
                request_user=request_uri.user or "",
                from_uri=str(from_addr.uri),
                from_user=from_addr.uri.user or "",
                from_display=from_addr.display_name,
                to_uri=str(request.to_addr.uri),
                x_headers=x_headers,
                sdp=request.body if _is_sdp(request) else None,
                source=source,
                transport=transport,
            )
        )

    def _on_in_dialog(self, request: SipRequest, entry: _ServerEntry, to_tag: str, now: float) -> None:
        leg = self._leg_for(request, to_tag)
        if leg is None or leg.state is LegState.ENDED or (leg.state is LegState.ENDING and request.method != "BYE"):
            self._respond(entry, 481, now)
            return
        entry.leg_id = leg.leg_id
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
            self._respond_options(entry, now, None)
        else:
            self._respond(entry, 405, now, headers=[("Allow", ALLOW)])

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

    def _on_ack(self, request: SipRequest, now: float) -> None:
        to_tag = request.to_addr.tag
        leg = self._leg_for(request, to_tag) if to_tag else None
        if leg is None or leg.pending_2xx is None or request.cseq.number != leg.pending_2xx.cseq:
            return  # ACK for nothing we wait on (a retransmitted ACK, or an unknown dialog): dropped, never answered
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
            self._respond(entry, 481, now, to_tag=self._new_tag())
            return
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

    # --- leg helpers ------------------------------------------------------------------------------------------------

    def _leg_for(self, request: SipRequest, to_tag: str | None) -> CallLeg | None:
        if to_tag is None:
            return None
        leg_id = self._dialogs.get((request.call_id, to_tag, request.from_addr.tag or ""))
        return self._legs.get(leg_id) if leg_id else None

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

    def _pending_2xx(
        self, response: SipResponse, entry: _ServerEntry, now: float, *, offer_in_2xx: bool, initial: bool
    ) -> _Pending2xx:
        return _Pending2xx(
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
        self._respond(leg.invite_entry, status, now, reason=reason, to_tag=leg.dialog.local_tag, headers=extra)

    def _abandon_pending_offer(self, leg: CallLeg, now: float) -> None:
        if leg.pending_offer is not None:
            self._respond(leg.pending_offer.entry, 487, now, to_tag=leg.dialog.local_tag)
            leg.pending_offer = None

    def _send_bye(self, leg: CallLeg, now: float) -> None:
        dialog = leg.dialog
        hop = dialog.next_hop(leg.transport)
        # On TCP we reuse the connection the call arrived on (the peer may not accept inbound connections).
        reuse = _reliable(leg.transport)
        destination, transport = (leg.source, leg.transport) if reuse else (hop.address, hop.transport)
        request = dialog.create_request(
            "BYE",
            via_host=self.contact_host,
            via_port=self.contact_port,
            transport=transport,
            branch=self._new_branch(),
            user_agent=self.user_agent,
        )
        transaction = ClientNonInviteTransaction(request, now, reliable=_reliable(transport))
        entry = _ClientEntry(transaction.key, transaction, destination, transport, leg.leg_id)
        self._client[entry.key] = entry
        leg.bye_key = entry.key
        _move(leg, LegState.ENDING)
        leg.pending_2xx = None  # a re-INVITE's 2xx awaiting its ACK: the BYE supersedes it
        self._pump_client(entry, now)

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
        for message in outbox:
            self._send(message, entry.destination, entry.transport)
        for event in events:
            if isinstance(event, TransactionTimedOut):
                log.info("no ACK for our final response to %s", entry.transaction.request.call_id)
        if entry.transaction.terminated:
            self._server.pop(entry.key, None)
            if entry.merge_key is not None and self._merge.get(entry.merge_key) == entry.key:
                del self._merge[entry.merge_key]

    def _pump_client(self, entry: _ClientEntry, now: float) -> None:
        outbox, events = entry.transaction.take_output()
        for message in outbox:
            self._send(message, entry.destination, entry.transport)
        if entry.transaction.terminated:
            self._client.pop(entry.key, None)
        for event in events:
            finished = isinstance(event, TransactionTimedOut | TransportFailed) or (
                isinstance(event, ResponseReceived) and event.response.status >= 200
            )
            if finished and entry.leg_id is not None:
                leg = self._legs.get(entry.leg_id)
                if leg is not None and leg.bye_key == entry.key:
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
            response.headers.add("Allow", ALLOW)
        response.headers.add("Server", self.user_agent)
        if sdp:
            response.headers.add("Content-Type", "application/sdp")
            response.body = sdp
        return response

    def _respond_options(self, entry: _ServerEntry, now: float, to_tag: str | None) -> None:
        headers = [
            ("Contact", self._contact(entry.transport)),
            ("Allow", ALLOW),
            ("Accept", ACCEPT),
            ("Supported", ", ".join(SUPPORTED)),
        ]
        self._respond(entry, 200, now, to_tag=to_tag, headers=headers)

    def _reply_stateless(self, request: SipRequest, status: int, reason: str, source: Address, transport: str) -> None:
        """Answer a request we will not process (malformed, oversized) without a transaction (RFC 3261 8.2)."""
        try:
            self._stamp_via(request, source)
            destination = self._response_destination(request.top_via, source, transport)
        except SipParseError:
            return
        phrase = "Bad Request" if status == 400 else None
        response = build_response(request, status, phrase, to_tag=self._new_tag())
        response.headers.add("Server", self.user_agent)
        if status == 400:
            response.headers.add("Warning", f'399 {self.contact_host} "{_warning_text(reason)}"')
        self._send(response, destination, transport)

    # --- transport details ------------------------------------------------------------------------------------------

    def _stamp_via(self, request: SipRequest, source: Address) -> None:
        """RFC 3261 18.2.1 received= when sent-by is not the source; RFC 3581 rport= when asked for."""
        via = request.top_via
        changes: dict[str, str | None] = {}
        if via.host.strip("[]").lower() != source[0].lower():
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

    def _send(self, message: SipMessage, destination: Address, transport: str) -> None:
        self._outgoing.append(Outgoing(message.to_bytes(), destination, transport))

    def _contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:{self.contact_host}:{self.contact_port}{suffix}>"

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
