"""Signed webhooks, as Vonage signs them: `Authorization: Bearer <JWT>`, HS256 with the account's signature
secret, whose `payload_hash` claim is the hex SHA-256 of the request body — for a GET, of the raw query string.

`vonage_jwt.verify_signature` checks the signature only; the payload hash is what ties the token to this request,
so it is compared here too (in constant time).

Verification is written out here rather than left to PyJWT: PyJWT took 55 us per token on this machine (key
preparation and generic claim handling on every call), half the time budget of a whole webhook; this path does
the same checks for HS256 only in about 8 us (one-shot `hmac.digest`, base64 through binascii directly, and the
header segment — the same on every token a signer sends — checked once). PyJWT still signs (tests, the embedded
engine) and the tests check the two agree, including on every malformed token they try.

A token is good for five minutes from its `iat` (and no earlier than five minutes before it, for clock skew), and
good once: `verify` names it (`jti`, or the signature where the signer sends none) and how long it could be
accepted, and the caller records that name (`Store.webhook_token`) so that a replay is refused. Segments
must be strict base64url and the signature canonical (no stray bits in its last character), so that no second
spelling of one signature can pass as another token.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

ALGORITHM = "HS256"
MAX_REMEMBERED_HEADERS = 16
MAX_AGE_S = 300  # how long after its `iat` a token is accepted, and how far ahead of our clock its `iat` may be
MAX_JTI_LENGTH = 120  # with its "jti:" prefix, what the replay record holds (webhook_tokens.token, 128)


class SignatureError(ValueError):
    """The webhook is unsigned, mis-signed or its payload was altered."""


def payload_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64url(segment: str) -> bytes:
    """Decode one unpadded base64url JWT segment; anything outside the base64url alphabet (`+`, `/`, `=`, blanks)
    is refused, as PyJWT refuses it (binascii alone would skip over it)."""
    if _BASE64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise SignatureError("webhook signature rejected: malformed token")
    try:
        return binascii.a2b_base64(
            segment.encode("ascii").translate(_URLSAFE) + b"=" * (-len(segment) % 4), strict_mode=True
        )
    except binascii.Error:
        raise SignatureError("webhook signature rejected: malformed token") from None


def _b64url_encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE).decode("ascii")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    token_id: str  # what names this token in the replay record: its jti, or its signature
    good_until: float  # after this the token is refused as too old, so its record may go


def _json_segment(segment: str) -> dict[str, Any]:
    """A JWT segment holding a JSON object (the header, the claims)."""
    try:
        value = orjson.loads(_b64url(segment))
    except orjson.JSONDecodeError:
        raise SignatureError("webhook signature rejected: malformed token") from None
    if not isinstance(value, dict):
        raise SignatureError("webhook signature rejected: malformed token")
    return value


class WebhookSignatures:
    def __init__(self, secret: str, max_age_s: int = MAX_AGE_S) -> None:
        if not secret:
            raise ValueError("the signature secret is empty: an empty secret would let anyone sign webhooks")
        self._secret = secret
        self._key = secret.encode()
        self._max_age_s = max_age_s
        # Every token a signer sends carries the same header segment: its check is remembered (a few at most).
        self._good_headers: set[str] = set()

    def verify(self, authorization: str | None, payload: bytes, now: float) -> VerifiedToken:
        """The token, if it is an HS256 JWT signed with our secret for exactly this payload, issued within the
        last five minutes (by the app's clock, `now`). That it was not seen before is the caller's to check."""
        if not authorization:
            raise SignatureError("webhook is not signed: Authorization: Bearer <JWT> is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise SignatureError("Authorization must be 'Bearer <JWT>'")
        parts = token.split(".")
        if len(parts) != 3:
            raise SignatureError("webhook signature rejected: malformed token")
        header_b64, claims_b64, signature_b64 = parts
        if header_b64 not in self._good_headers:
            self._check_header(header_b64)
        claims = _json_segment(claims_b64)
        expected = hmac.digest(self._key, f"{header_b64}.{claims_b64}".encode(), "sha256")
        if not hmac.compare_digest(expected, _b64url(signature_b64)) or _b64url_encode(expected) != signature_b64:
            raise SignatureError("webhook signature rejected: signature does not match the signature secret")
        issued = self._check_times(claims, now)
        claimed = claims.get("payload_hash")
        if (
            not isinstance(claimed, str)
            or not claimed.isascii()
            or not hmac.compare_digest(claimed.lower(), payload_hash(payload))
        ):
            raise SignatureError("webhook signature rejected: payload_hash does not match the request")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH):
            raise SignatureError(f"webhook signature rejected: 'jti' must be a string of 1-{MAX_JTI_LENGTH} characters")
        token_id = f"jti:{jti}" if jti is not None else f"sig:{signature_b64}"
        return VerifiedToken(claims, token_id, issued + self._max_age_s)

    def _check_header(self, header_b64: str) -> None:
        header = _json_segment(header_b64)
        if header.get("alg") != ALGORITHM:
            raise SignatureError(f"webhook signature rejected: algorithm must be {ALGORITHM}")
        if len(self._good_headers) < MAX_REMEMBERED_HEADERS:
            self._good_headers.add(header_b64)

    def _check_times(self, claims: dict[str, Any], now: float) -> float:
        """The token's `iat`, once its times say it may be accepted now."""
        issued = claims.get("iat")
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            raise SignatureError("webhook signature rejected: the token has no valid 'iat'")
        if issued > now + self._max_age_s:
            raise SignatureError("webhook signature rejected: the token is issued in the future (check clocks)")
        if issued < now - self._max_age_s:
            raise SignatureError(
                f"webhook signature rejected: the token was issued more than {self._max_age_s} s ago (a replay, "
                "or a clock far behind: check this server's clock)"
            )
        expires = claims.get("exp")
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, int | float):
                raise SignatureError("webhook signature rejected: 'exp' is not a time")
            if expires <= now - self._max_age_s:
                raise SignatureError("webhook signature rejected: the token has expired")
        not_before = claims.get("nbf")
        if not_before is not None and (
            isinstance(not_before, bool)
            or not isinstance(not_before, int | float)
            or not_before > now + self._max_age_s
        ):
            raise SignatureError("webhook signature rejected: the token is not valid yet")
        return float(issued)

    def sign(self, payload: bytes, now: float | None = None, **extra: object) -> str:
        """A token for `payload`, as Vonage would send it; the embedded engine and the tests sign with this."""
        issued = int(time.time() if now is None else now)
        # A jti of its own, as Vonage's: two requests with the same body in one second are two tokens, not a replay.
        claims = {"iat": issued, "exp": issued + 300, "jti": str(uuid.uuid4()), "payload_hash": payload_hash(payload)}
        claims.update(extra)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)
