"""Webhook signing lives in `dialbridge.webhook_signing`, below both the web app and the voice engine; these names
stay importable from here for the gateway and the benchmarks, which still import them from this module."""

from dialbridge.webhook_signing import SignatureError, VerifiedToken, WebhookSignatures, payload_hash

__all__ = ["SignatureError", "VerifiedToken", "WebhookSignatures", "payload_hash"]
