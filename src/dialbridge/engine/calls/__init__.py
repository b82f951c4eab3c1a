"""Calls in the embedded voice engine: the NCCO model, the per-call NCCO runner (sans-I/O), the payloads the
engine sends to an application's webhooks, and the webhook client that sends them."""

from __future__ import annotations

from dialbridge.engine.calls.ncco import (
    Action,
    Conversation,
    Input,
    NccoError,
    Notify,
    Stream,
    Talk,
    TransferDestination,
    parse_ncco,
    parse_transfer,
)
from dialbridge.engine.calls.payloads import (
    CallInfo,
    WebhookResult,
    answer_query,
    event_payload,
    input_payload,
    timestamp,
)
from dialbridge.engine.calls.runner import (
    Command,
    Hangup,
    JoinConversation,
    LeaveConversation,
    NccoRunner,
    Play,
    PostWebhook,
    RunnerState,
    StopPlayback,
    StreamSource,
    TalkSource,
)
from dialbridge.engine.calls.webhooks import WebhookClient, WebhookStats

__all__ = [
    "Action",
    "CallInfo",
    "Command",
    "Conversation",
    "Hangup",
    "Input",
    "JoinConversation",
    "LeaveConversation",
    "NccoError",
    "NccoRunner",
    "Notify",
    "Play",
    "PostWebhook",
    "RunnerState",
    "StopPlayback",
    "Stream",
    "StreamSource",
    "Talk",
    "TalkSource",
    "TransferDestination",
    "WebhookClient",
    "WebhookResult",
    "WebhookStats",
    "answer_query",
    "event_payload",
    "input_payload",
    "parse_ncco",
    "parse_transfer",
    "timestamp",
]
