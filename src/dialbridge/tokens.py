"""Participant tokens issued by dialbridge: HS256 JWTs bound to one room's video session, with an expiry.

On the embedded backend the same token admits a browser to the room's signalling; on every backend it is what the
room's HTTP actions (dial-out, hang-up) require as `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

ISSUER = "dialbridge"
AUDIENCE = "dialbridge-room"


class Role(StrEnum):
    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"
    MODERATOR = "moderator"


class TokenError(ValueError):
    """A token that is malformed, forged, expired or for another session."""


@dataclass(frozen=True, slots=True)
class ParticipantClaims:
    session_id: str
    room_id: str
    role: Role
    data: str
    connection_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class ParticipantTokens:
    secret: str
    ttl_s: int = 4 * 3600

    def issue(self, *, session_id: str, room_id: str, now: float, role: Role = Role.PUBLISHER, data: str = "") -> str:
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sid": session_id,
            "room": room_id,
            "role": role.value,
            "data": data,
            # The connection id is fixed when the token is issued so the server can name (and force-disconnect)
            # a participant without trusting anything else the browser says.
            "cid": secrets.token_urlsafe(12),
            "iat": int(now),
            "exp": int(now) + self.ttl_s,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str, *, now: float, session_id: str | None = None) -> ParticipantClaims:
        claims = _decoded(
            token,
            self.secret,
            audience=AUDIENCE,
            require=["exp", "sid", "room", "cid"],
            invalid="invalid participant token: {reason}; reload the room page for a new one",
        )
        if int(claims["exp"]) <= now:
            raise TokenError("participant token has expired: reload the room page for a new one")
        if session_id is not None and claims["sid"] != session_id:
            raise TokenError("participant token is for another room")
        try:
            role = Role(claims.get("role", Role.PUBLISHER))
        except ValueError:
            raise TokenError("participant token has an unknown role") from None
        return ParticipantClaims(
            session_id=str(claims["sid"]),
            room_id=str(claims["room"]),
            role=role,
            data=str(claims.get("data", "")),
            connection_id=str(claims["cid"]),
            expires_at=int(claims["exp"]),
        )


PHONE_AUDIENCE = "dialbridge-phone"


@dataclass(frozen=True, slots=True)
class PhoneCallTokens:
    """What `/phone` gives its page, and what placing a browser-phone call takes (`Authorization: Bearer`): each call
    costs a WebRTC peer in the gateway, so a script must at least load the page first, and the permission lapses
    (`ttl_s`) — a page kept open longer is told to reload. A distinct audience: no room token opens it, nor it a room.
    """

    secret: str
    ttl_s: int = 3600

    def issue(self, now: float) -> str:
        claims = {"iss": ISSUER, "aud": PHONE_AUDIENCE, "iat": int(now), "exp": int(now) + self.ttl_s}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str, *, now: float) -> None:
        claims = _decoded(
            token,
            self.secret,
            audience=PHONE_AUDIENCE,
            require=["exp"],
            invalid="invalid phone token: {reason}; reload the phone page",
        )
        if int(claims["exp"]) <= now:
            raise TokenError("this phone page has been open too long to place calls: reload it")


def _decoded(token: str, secret: str, *, audience: str, require: list[str], invalid: str) -> dict[str, Any]:
    """The claims of an HS256 token of ours for `audience`; TokenError saying `invalid` (its `{reason}` in the
    caller's words) otherwise. Time is judged by the caller against its own `now`, never PyJWT's wall clock."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=audience,
            issuer=ISSUER,
            options={"require": require, "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(invalid.format(reason=_what_is_wrong(exc))) from None
    return claims


def _what_is_wrong(exc: jwt.PyJWTError) -> str:
    """PyJWT's reason in the caller's words: its own ("Invalid header string: 'utf-8' codec can't decode byte
    0xb7…") describes its parser, not what the caller sent. Short: it also ends a WebSocket (123-byte reasons)."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return "its signature does not match (altered, or another server's)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"it has no {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAudienceError | jwt.InvalidIssuerError):
        return "it is not a dialbridge participant token"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "it is not signed with HS256"
    return "it is not a well-formed JWT (header.claims.signature)"


def is_sip_participant(data: str) -> bool:
    """Whether a connection's token data marks a SIP participant (a call the gateway or Vonage put into the room, as
    the tutorial marks it: `{"sip": true, ...}`), not a browser."""
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("sip") is True


def participant_id(token: str) -> str:
    """The connection id of a token this server has just issued (read without verifying: it is our own)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims["cid"])


def new_secret() -> str:
    return secrets.token_urlsafe(48)
