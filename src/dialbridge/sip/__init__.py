"""Sans-I/O SIP core (RFC 3261): messages, transactions, dialogs and the UAS agent the engine drives.

The engine owns the sockets and the clock: it feeds `SipAgent.receive(data, source, now, transport)` (TCP data first
cut into messages by `SipStreamFramer`), calls `on_timer(now)` when `next_timer()` is due, and after each call sends
what `drain()` returns.
"""

from __future__ import annotations

from dialbridge.sip.agent import (
    ALLOW,
    Address,
    CallCancelled,
    CallConfirmed,
    CallEnded,
    IncomingCall,
    InfoReceived,
    OfferAnswered,
    OfferReceived,
    Outgoing,
    SipAgent,
    SipEvent,
)
from dialbridge.sip.dialog import Dialog, DialogState
from dialbridge.sip.message import (
    CSeq,
    Headers,
    NameAddr,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from dialbridge.sip.transaction import (
    T1,
    T2,
    T4,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TransactionState,
)

__all__ = [
    "ALLOW",
    "T1",
    "T2",
    "T4",
    "Address",
    "CSeq",
    "CallCancelled",
    "CallConfirmed",
    "CallEnded",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "Dialog",
    "DialogState",
    "Headers",
    "IncomingCall",
    "InfoReceived",
    "NameAddr",
    "OfferAnswered",
    "OfferReceived",
    "Outgoing",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "SipAgent",
    "SipEvent",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "SipUri",
    "TransactionState",
    "Via",
    "build_response",
    "parse_message",
]
