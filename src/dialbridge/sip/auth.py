"""SIP digest authentication (RFC 3261 22, RFC 2617, RFC 7616, RFC 8760), both sides, sans-I/O.

Client: `parse_challenges` reads WWW-Authenticate / Proxy-Authenticate values, `select_challenges` keeps the
strongest one we can answer per realm (RFC 8760: SHA-512-256 > SHA-256 > MD5), and `DigestClient.authorization`
builds the Authorization / Proxy-Authorization value (fresh cnonce, nc counting per nonce, qop=auth preferred over
auth-int). Server: `build_challenge` and `verify_authorization` (constant-time compare), for tests and the registrar.

Not supported: userhash (RFC 7616 3.4.4) and charset; a challenge asking for them is still answered plainly.
"""

from __future__ import annotations

import hashlib
import hmac
import random as random_module
from collections.abc import Iterable
from dataclasses import dataclass, field

from dialbridge.sip.message import _quote, _unquote, split_quoted

# Strongest first: the order a client picks in when one realm offers several (RFC 8760 2.4).
ALGORITHMS = ("SHA-512-256", "SHA-512-256-SESS", "SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")
_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    username: str
    password: str = field(repr=False)  # never in logs or reprs


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One `Digest` challenge. `algorithm` is upper case ("MD5" when absent, RFC 7616 3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # empty: RFC 2069 compatibility, no cnonce/nc
    opaque: str | None = None
    stale: bool = False

    @property
    def supported(self) -> bool:
        return self.algorithm in ALGORITHMS and _hash_available(self.algorithm)


def _hash_available(algorithm: str) -> bool:
    try:
        hashlib.new(_HASHES[_base(algorithm)])
    except ValueError:  # sha512_256 needs OpenSSL 1.1.1+
        return False
    return True


def _base(algorithm: str) -> str:
    return algorithm.removesuffix("-SESS")


def _h(algorithm: str, text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.new(_HASHES[_base(algorithm)], data).hexdigest()


def parse_params(text: str) -> tuple[str, dict[str, str]]:
    """`Digest realm="a, b", nonce=x, ...` -> ("digest", {"realm": "a, b", "nonce": "x", ...}).

    Names are lower-cased; quoted-string values unescaped. Raises ValueError on unterminated quotes.
    """
    text = text.strip()
    scheme, _, rest = text.partition(" ")
    params: dict[str, str] = {}
    for item in split_quoted(rest, ","):  # a SipParseError (a ValueError) on an unterminated quote
        if not item.strip():
            continue
        name, eq, value = item.partition("=")
        value = value.strip()
        if not eq:
            raise ValueError(f"bad auth parameter in {text!r}")
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise ValueError(f"bad quoted string in {text!r}")
            value = _unquote(value[1:-1])
        params[name.strip().lower()] = value
    return scheme.lower(), params


def parse_challenge(value: str) -> DigestChallenge | None:
    """One WWW-Authenticate / Proxy-Authenticate value, or None if it is not a usable Digest challenge."""
    try:
        scheme, params = parse_params(value)
    except ValueError:
        return None
    if scheme != "digest" or "realm" not in params or "nonce" not in params:
        return None
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def parse_challenges(values: Iterable[str]) -> list[DigestChallenge]:
    return [c for c in (parse_challenge(v) for v in values) if c is not None]


def select_challenges(challenges: Iterable[DigestChallenge]) -> list[DigestChallenge]:
    """The strongest supported challenge per realm, in the order the realms first appear (RFC 8760 2.4)."""
    best: dict[str, DigestChallenge] = {}
    for challenge in challenges:
        if not challenge.supported:
            continue
        current = best.get(challenge.realm)
        if current is None or ALGORITHMS.index(challenge.algorithm) < ALGORITHMS.index(current.algorithm):
            best[challenge.realm] = challenge
    return list(best.values())


def digest_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The `response` value (RFC 7616 3.4.1-3.4.3; RFC 2617 3.2.2 when qop is None)."""
    algorithm = algorithm.upper()
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _h(algorithm, body)
    ha2 = _h(algorithm, a2)
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class DigestClient:
    """Answers challenges for one set of credentials; counts nc per nonce (RFC 7616 3.4: never reuse a count)."""

    def __init__(self, credentials: DigestCredentials, random: random_module.Random | None = None) -> None:
        self.credentials = credentials
        self._random = random if random is not None else random_module.Random()
        self._counts: dict[str, int] = {}

    def authorization(self, challenge: DigestChallenge, method: str, uri: str, body: bytes = b"") -> str:
        # qop=auth when offered: auth-int would have to hash a body that proxies may legitimately rewrite.
        qop = "auth" if "auth" in challenge.qop else ("auth-int" if "auth-int" in challenge.qop else None)
        count = self._counts.get(challenge.nonce, 0) + 1
        self._counts[challenge.nonce] = count
        nc = f"{count:08x}"
        cnonce = f"{self._random.getrandbits(96):024x}"
        response = digest_response(
            algorithm=challenge.algorithm,
            username=self.credentials.username,
            password=self.credentials.password,
            realm=challenge.realm,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
        )
        parts = [
            f"username={_quote(self.credentials.username)}",
            f"realm={_quote(challenge.realm)}",
            f"nonce={_quote(challenge.nonce)}",
            f"uri={_quote(uri)}",
            f"response={_quote(response)}",
            f"algorithm={challenge.algorithm}",
        ]
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")
        if qop is not None:
            parts += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
        elif challenge.algorithm.endswith("-SESS"):
            parts.append(f"cnonce={_quote(cnonce)}")  # -sess hashes it into HA1 even without qop
        return "Digest " + ", ".join(parts)


def build_challenge(
    realm: str,
    nonce: str,
    *,
    algorithm: str = "SHA-256",
    qop: str | None = "auth",
    opaque: str | None = None,
    stale: bool = False,
) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value (server side)."""
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"algorithm={algorithm}"]
    if qop:
        parts.append(f"qop={_quote(qop)}")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def verify_authorization(
    value: str,
    *,
    method: str,
    credentials: DigestCredentials,
    realm: str | None = None,
    nonce: str | None = None,
    body: bytes = b"",
) -> bool:
    """Server side: does an Authorization / Proxy-Authorization value prove knowledge of `credentials`?

    `realm` / `nonce`, when given, must be the ones we issued (the caller tracks nonce freshness and nc replay).
    The response is compared in constant time.
    """
    try:
        scheme, params = parse_params(value)
    except ValueError:
        return False
    if scheme != "digest":
        return False
    required = ("username", "realm", "nonce", "uri", "response")
    if any(name not in params for name in required):
        return False
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS or not _hash_available(algorithm):
        return False
    if realm is not None and params["realm"] != realm:
        return False
    if nonce is not None and params["nonce"] != nonce:
        return False
    qop = params.get("qop")
    if qop is not None and (qop not in ("auth", "auth-int") or "nc" not in params or "cnonce" not in params):
        return False
    expected = digest_response(
        algorithm=algorithm,
        username=credentials.username,
        password=credentials.password,
        realm=params["realm"],
        nonce=params["nonce"],
        method=method,
        uri=params["uri"],
        qop=qop,
        nc=params.get("nc", ""),
        cnonce=params.get("cnonce", ""),
        body=body,
    )
    # The username is inside HA1, so a response computed for another user cannot match.
    return hmac.compare_digest(params["response"].lower().encode(), expected.encode())
