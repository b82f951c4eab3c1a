"""Sans-I/O SIP core (RFC 3261): messages, transactions, dialogs, digest auth, and the agent that answers calls
(UAS, for the voice engine) and places them (UAC, `SipAgent.dial`, for the WebRTC-SIP gateway).

The engine owns the sockets and the clock: it feeds `SipAgent.receive(data, source, now, transport)` (TCP data first
cut into messages by `SipStreamFramer`), calls `on_timer(now)` when `next_timer()` is due, and after each call sends
what `drain()` returns.
"""

from __future__ import annotations

from dialbridge.sip.agent import (
    ALLOW,
    Address,
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
from dialbridge.sip.auth import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    build_challenge,
    parse_challenges,
    select_challenges,
    verify_authorization,
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
    "CallAnswered",
    "CallCancelled",
    "CallConfirmed",
    "CallEnded",
    "CallFailed",
    "CallProgress",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "Dialog",
    "DialogState",
    "DigestChallenge",
    "DigestClient",
    "DigestCredentials",
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
    "build_challenge",
    "build_response",
    "parse_challenges",
    "parse_message",
    "select_challenges",
    "verify_authorization",
]
