"""Signed webhooks, as Vonage signs them: `Authorization: Bearer <JWT>`, HS256 with the account's signature
secret, whose `payload_hash` claim is the hex SHA-256 of the request body — for a GET, of the raw query string.

`vonage_jwt.verify_signature` checks the signature only; the payload hash is what ties the token to this request,
so it is compared here too (in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt


class SignatureError(ValueError):
    """The webhook is unsigned, mis-signed or its payload was altered."""


def payload_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class WebhookSignatures:
    def __init__(self, secret: str, leeway_s: int = 300) -> None:
        self._secret = secret
        self._leeway_s = leeway_s

    def verify(self, authorization: str | None, payload: bytes) -> dict[str, object]:
        if not authorization:
            raise SignatureError("webhook is not signed: Authorization: Bearer <JWT> is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise SignatureError("Authorization must be 'Bearer <JWT>'")
        try:
            claims: dict[str, object] = jwt.decode(
                token.strip(),
                self._secret,
                algorithms=["HS256"],
                leeway=self._leeway_s,
                options={"require": ["iat", "payload_hash"], "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise SignatureError(f"webhook signature rejected: {exc}") from None
        claimed = claims.get("payload_hash")
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed.lower(), payload_hash(payload)):
            raise SignatureError("webhook signature rejected: payload_hash does not match the request")
        return claims

    def sign(self, payload: bytes, now: float | None = None, **extra: object) -> str:
        """A token for `payload`, as Vonage would send it; the embedded engine and the tests sign with this."""
        issued = int(time.time() if now is None else now)
        claims = {"iat": issued, "exp": issued + 300, "payload_hash": payload_hash(payload), **extra}
        return jwt.encode(claims, self._secret, algorithm="HS256")
