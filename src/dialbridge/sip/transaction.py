"""SIP transactions (RFC 3261 section 17, with the RFC 6026 Accepted states), sans-I/O.

A transaction is fed requests/responses and the current time, and queues what must go on the wire (`outbox`, whole
messages for the transaction's one destination) and what its transaction user must learn (`events`). The owner
drains both with `take_output()` after every call and removes the transaction once `terminated` is true.

Timer values (section 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2 and table 4):
    T1 = 0.5 s (RTT estimate), T2 = 4 s (cap on non-INVITE/response retransmit interval), T4 = 5 s (network lifetime)
    A: INVITE retransmit, starts at T1, doubles without cap (UDP only)    B: INVITE timeout, 64*T1
    D: absorb response retransmits, 32 s on UDP, 0 on TCP                   E: non-INVITE retransmit, T1 doubling to T2
    F: non-INVITE timeout, 64*T1     G: final response retransmit, T1 doubling to T2 (UDP only)
    H: wait for ACK, 64*T1           I: absorb ACK retransmits, T4 on UDP, 0 on TCP
    J: absorb request retransmits, 64*T1 on UDP, 0 on TCP                   K: absorb response retransmits, T4 / 0
    L: Accepted (server, RFC 6026), 64*T1                                    M: Accepted (client, RFC 6026), 64*T1
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dialbridge.sip.message import (
    MAGIC_COOKIE,
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
)

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_D_UNRELIABLE = 32.0


class TransactionState(enum.Enum):
    CALLING = "calling"  # client INVITE: request sent, nothing heard
    TRYING = "trying"  # non-INVITE: request sent / received, no response yet
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"  # RFC 6026: a 2xx passed; the TU owns the 2xx/ACK exchange
    CONFIRMED = "confirmed"  # server INVITE: ACK for our non-2xx arrived
    TERMINATED = "terminated"


# --- what a transaction tells its user ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A client transaction passes a response up (each 1xx, the first final, and every 2xx in Accepted)."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B/F (client: no final response) or Timer H (server INVITE: no ACK for our non-2xx)."""


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport reported that the destination is unreachable (RFC 3261 17.1.4 / 17.2.4)."""


TransactionEvent = ResponseReceived | TransactionTimedOut | TransportFailed


# --- keys ---------------------------------------------------------------------------------------------------------

TransactionKey = tuple[str, ...]


def server_key(request: SipRequest, *, method: str | None = None) -> TransactionKey:
    """Key matching a request to a server transaction (RFC 3261 17.2.3).

    With a magic-cookie branch: branch + sent-by + method (ACK counts as INVITE; CANCEL is its own transaction, so
    pass method="INVITE" to find the INVITE a CANCEL targets). Otherwise the RFC 2543 fallback: Request-URI, From tag,
    Call-ID, CSeq number and top Via. The To tag is left out so that the ACK (which carries our tag) still matches.
    """
    via = request.top_via
    effective = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, via.sent_by.lower(), effective)
    via_ident = f"{via.transport} {via.sent_by.lower()} {via.branch or ''}"
    return (
        "2543",
        request.uri,
        request.from_addr.tag or "",
        request.call_id,
        str(request.cseq.number),
        via_ident,
        effective,
    )


def client_key(message: SipMessage) -> TransactionKey:
    """Key matching a response to the client transaction that sent the request (RFC 3261 17.1.3)."""
    branch = message.top_via.branch or ""
    return ("client", branch, message.cseq.method)


# --- base ---------------------------------------------------------------------------------------------------------


class _Transaction:
    """Timers as a name->deadline map; subclasses implement `_fire(name, now)` and the message inputs."""

    def __init__(self, request: SipRequest, *, reliable: bool) -> None:
        self.request = request
        self.reliable = reliable
        self.state = TransactionState.TRYING
        self.outbox: list[SipMessage] = []
        self.events: list[TransactionEvent] = []
        self._timers: dict[str, float] = {}
        self._intervals: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    def take_output(self) -> tuple[list[SipMessage], list[TransactionEvent]]:
        outbox, events = self.outbox, self.events
        self.outbox, self.events = [], []
        return outbox, events

    def next_timer(self) -> float | None:
        return min(self._timers.values(), default=None)

    def on_timer(self, now: float) -> None:
        # Fire in deadline order; a handler may re-arm or cancel timers, so re-read each round.
        while self._timers:
            name, deadline = min(self._timers.items(), key=lambda item: item[1])
            if deadline > now:
                return
            del self._timers[name]
            self._fire(name, now)

    def transport_failed(self) -> None:
        """Any state --transport error--> TERMINATED, telling the TU (17.1.4, 17.2.4)."""
        if not self.terminated:
            self._terminate()
            self.events.append(TransportFailed())

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _start(self, name: str, now: float, interval: float) -> None:
        self._intervals[name] = interval
        self._timers[name] = now + interval

    def _terminate(self) -> None:
        self.state = TransactionState.TERMINATED
        self._timers.clear()

    def _linger(self, name: str, now: float, duration: float) -> None:
        """Enter a state that only absorbs retransmissions for `duration` (0 on reliable transports: end now)."""
        if duration <= 0:
            self._terminate()
        else:
            self._start(name, now, duration)


# --- server transactions ------------------------------------------------------------------------------------------


class ServerInviteTransaction(_Transaction):
    """RFC 3261 17.2.1 + RFC 6026 7.1.

    PROCEEDING --1xx from TU--> PROCEEDING (sent; INVITE retransmits resend the latest 1xx)
    PROCEEDING --2xx from TU--> ACCEPTED   (Timer L; INVITE retransmits absorbed; more 2xx from the TU pass through)
    PROCEEDING --300-699-->     COMPLETED  (Timer G resends on UDP, Timer H; INVITE retransmits resend the final)
    COMPLETED  --ACK-->         CONFIRMED  (Timer I absorbs ACK retransmits)
    COMPLETED  --Timer H-->     TERMINATED (TransactionTimedOut: the peer never ACKed)
    ACCEPTED   --Timer L-->     TERMINATED;   CONFIRMED --Timer I--> TERMINATED
    """

    def __init__(self, request: SipRequest, now: float, *, reliable: bool) -> None:
        super().__init__(request, reliable=reliable)
        self.state = TransactionState.PROCEEDING
        self.last_response: SipResponse | None = None

    @property
    def final_sent(self) -> bool:
        return self.state is not TransactionState.PROCEEDING

    def on_request(self, request: SipRequest, now: float) -> None:
        """A retransmitted INVITE or an ACK for our non-2xx final (both matched by `server_key`)."""
        if request.method == "ACK":
            if self.state is TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._timers.pop("G", None)
                self._timers.pop("H", None)
                self._linger("I", now, 0.0 if self.reliable else T4)
            return
        if self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED) and self.last_response:
            self.outbox.append(self.last_response)

    def respond(self, response: SipResponse, now: float) -> None:
        state = self.state
        if state is TransactionState.PROCEEDING:
            self.last_response = response
            self.outbox.append(response)
            if response.status >= 300:
                self.state = TransactionState.COMPLETED
                if not self.reliable:
                    self._start("G", now, T1)
                self._start("H", now, 64 * T1)
            elif response.status >= 200:
                self.state = TransactionState.ACCEPTED
                self._start("L", now, 64 * T1)
        elif state is TransactionState.ACCEPTED and 200 <= response.status < 300:
            self.outbox.append(response)  # the TU's 2xx retransmissions
        # Anything else after a final response is a TU bug; dropping it is safer than confusing the peer.

    def _fire(self, name: str, now: float) -> None:
        if name == "G" and self.state is TransactionState.COMPLETED and self.last_response:
            self.outbox.append(self.last_response)
            self._start("G", now, min(2 * self._intervals["G"], T2))
        elif name == "H" and self.state is TransactionState.COMPLETED:
            self._terminate()
            self.events.append(TransactionTimedOut())
        elif name in ("I", "L"):
            self._terminate()


class ServerNonInviteTransaction(_Transaction):
    """RFC 3261 17.2.2.

    TRYING     --request retransmit--> absorbed
    TRYING/PROCEEDING --1xx from TU--> PROCEEDING (retransmits resend the latest 1xx)
    TRYING/PROCEEDING --final-->      COMPLETED  (retransmits resend the final; Timer J, 0 on TCP)
    COMPLETED  --Timer J-->           TERMINATED
    """

    def __init__(self, request: SipRequest, now: float, *, reliable: bool) -> None:
        super().__init__(request, reliable=reliable)
        self.last_response: SipResponse | None = None

    @property
    def final_sent(self) -> bool:
        return self.state in (TransactionState.COMPLETED, TransactionState.TERMINATED)

    def on_request(self, request: SipRequest, now: float) -> None:
        if self.state is not TransactionState.TRYING and self.last_response is not None and not self.terminated:
            self.outbox.append(self.last_response)

    def respond(self, response: SipResponse, now: float) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return
        self.last_response = response
        self.outbox.append(response)
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
        else:
            self.state = TransactionState.COMPLETED
            self._linger("J", now, 0.0 if self.reliable else 64 * T1)

    def _fire(self, name: str, now: float) -> None:
        if name == "J":
            self._terminate()


ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction


# --- client transactions ------------------------------------------------------------------------------------------


class ClientNonInviteTransaction(_Transaction):
    """RFC 3261 17.1.2 (BYE, OPTIONS, REGISTER, ...).

    TRYING     --Timer E--> resend, E = min(2E, T2) (UDP only)      TRYING/PROCEEDING --Timer F--> TERMINATED (timeout)
    TRYING     --1xx-->     PROCEEDING (Timer E now fires every T2)  PROCEEDING --1xx--> passed up
    TRYING/PROCEEDING --final--> COMPLETED (passed up; Timer K, 0 on TCP, absorbs retransmitted finals)
    COMPLETED  --Timer K--> TERMINATED
    """

    def __init__(self, request: SipRequest, now: float, *, reliable: bool) -> None:
        super().__init__(request, reliable=reliable)
        self.key = client_key(request)
        self.outbox.append(request)
        if not reliable:
            self._start("E", now, T1)
        self._start("F", now, 64 * T1)

    def on_response(self, response: SipResponse, now: float) -> None:
        if self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self.events.append(ResponseReceived(response))
            if response.status < 200:
                self.state = TransactionState.PROCEEDING
            else:
                self.state = TransactionState.COMPLETED
                self._timers.clear()
                self._linger("K", now, 0.0 if self.reliable else T4)

    def _fire(self, name: str, now: float) -> None:
        if name == "E" and self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self.outbox.append(self.request)
            interval = T2 if self.state is TransactionState.PROCEEDING else min(2 * self._intervals["E"], T2)
            self._start("E", now, interval)
        elif name == "F" and self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self._terminate()
            self.events.append(TransactionTimedOut())
        elif name == "K":
            self._terminate()


class ClientInviteTransaction(_Transaction):
    """RFC 3261 17.1.1 + RFC 6026 7.2.

    CALLING    --Timer A--> resend, A doubles (UDP only)             CALLING --Timer B--> TERMINATED (timeout)
    CALLING/PROCEEDING --1xx--> PROCEEDING (passed up; A and B stop)
    CALLING/PROCEEDING --300-699--> COMPLETED (ACK sent by us, response passed up; Timer D)
    COMPLETED  --300-699--> ACK resent, not passed up                 COMPLETED --Timer D--> TERMINATED
    CALLING/PROCEEDING --2xx--> ACCEPTED (passed up; the TU ACKs 2xx itself; Timer M)
    ACCEPTED   --2xx--> passed up (retransmits or forked answers: the TU re-ACKs)  ACCEPTED --Timer M--> TERMINATED
    """

    def __init__(self, request: SipRequest, now: float, *, reliable: bool) -> None:
        super().__init__(request, reliable=reliable)
        self.state = TransactionState.CALLING
        self.key = client_key(request)
        self.ack: SipRequest | None = None
        self.outbox.append(request)
        if not reliable:
            self._start("A", now, T1)
        self._start("B", now, 64 * T1)

    def on_response(self, response: SipResponse, now: float) -> None:
        state = self.state
        if state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self.events.append(ResponseReceived(response))
            if response.status < 200:
                self.state = TransactionState.PROCEEDING
                self._timers.pop("A", None)
                self._timers.pop("B", None)
            elif response.status < 300:
                self.state = TransactionState.ACCEPTED
                self._timers.clear()
                self._start("M", now, 64 * T1)
            else:
                self.state = TransactionState.COMPLETED
                self._timers.clear()
                self.ack = build_non_2xx_ack(self.request, response)
                self.outbox.append(self.ack)
                self._linger("D", now, 0.0 if self.reliable else TIMER_D_UNRELIABLE)
        elif state is TransactionState.COMPLETED and response.status >= 300 and self.ack is not None:
            self.outbox.append(self.ack)
        elif state is TransactionState.ACCEPTED and 200 <= response.status < 300:
            self.events.append(ResponseReceived(response))

    def _fire(self, name: str, now: float) -> None:
        if name == "A" and self.state is TransactionState.CALLING:
            self.outbox.append(self.request)
            self._start("A", now, 2 * self._intervals["A"])
        elif name == "B" and self.state is TransactionState.CALLING:
            self._terminate()
            self.events.append(TransactionTimedOut())
        elif name in ("D", "M"):
            self._terminate()


ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction


def build_non_2xx_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 300-699 (RFC 3261 17.1.1.3).

    Same Request-URI, Call-ID, From and top Via (same branch) as the INVITE; To from the response (with its tag);
    CSeq number of the INVITE with method ACK; the INVITE's Route headers.
    """
    return _in_invite_transaction(invite, "ACK", response.headers.get("To") or invite.headers.get("To") or "")


def build_cancel(invite: SipRequest) -> SipRequest:
    """The CANCEL for our INVITE (RFC 3261 9.1): as the non-2xx ACK, but with the INVITE's own To and method CANCEL,
    so that the peer matches it to the INVITE's transaction. It is sent as a client transaction of its own."""
    return _in_invite_transaction(invite, "CANCEL", invite.headers.get("To") or "")


def _in_invite_transaction(invite: SipRequest, method: str, to: str) -> SipRequest:
    headers = Headers()
    top_via = invite.headers.get("Via")
    if top_via is None:
        raise SipParseError("INVITE without Via")
    headers.add("Via", top_via)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", to)
    headers.add("Call-ID", invite.headers.get("Call-ID") or "")
    headers.add("CSeq", f"{invite.cseq.number} {method}")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    return SipRequest(method=method, uri=invite.uri, headers=headers)
