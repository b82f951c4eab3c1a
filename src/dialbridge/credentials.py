"""The embedded voice engine's Vonage-style application credentials, made once per machine and kept as files.

An application id and an RSA private key, as a Vonage application has: the app signs its call-control requests with
the key exactly as the `vonage` SDK does (an RS256 JWT with `application_id`, `iat`, `jti`, `exp`), and the engine
checks them with the public half. A self-signed TLS certificate for 127.0.0.1/localhost lets the SDK, which only
speaks https, reach the engine; clients trust it through `ca_bundle_path` (REQUESTS_CA_BUNDLE, httpx `verify=`).

Files under the folder (default `./var/voice/`):
- `credentials.json` (0600) — the source of truth: application id, private key, TLS key and certificate;
- `application.key` (0600) — the private key alone, for settings that take a path (the SDK reads `*.key` paths);
- `tls.key` (0600), `tls.crt` (0644) — for the engine's TLS listener; `tls.crt` is also the clients' CA bundle.

Two processes starting together must agree, so `credentials.json` is written whole under a temporary name and
published with `os.link`, which fails if the name exists: one process wins, the others discard what they made and
read the winner's. The other files are derived from it and (re)written with `os.replace` — identical bytes from
every process, so their races are harmless.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_FOLDER = Path("var/voice")
BUNDLE_NAME = "credentials.json"
PRIVATE_KEY_NAME = "application.key"
TLS_CERT_NAME = "tls.crt"
TLS_KEY_NAME = "tls.key"
BUNDLE_VERSION = 1

TOKEN_LIFETIME_S = 15 * 60  # what the SDK puts in `exp` when not told otherwise
MAX_TOKEN_LIFETIME_S = 24 * 60 * 60  # Vonage refuses application JWTs that live longer than a day
LEEWAY_S = 30  # clock skew tolerated between the app's and the engine's clocks
CERT_VALIDITY = dt.timedelta(days=3650)
_TORN_READ_RETRIES = 100  # a bundle being written by a process without hard links (see _publish) is read again


class CredentialsError(RuntimeError):
    """The credential files exist but cannot be used (edited by hand, another format, unreadable)."""


class TokenError(ValueError):
    """A call-control request's JWT is not one this engine's application signed, or not now."""


class TokenExpired(TokenError):
    """The JWT was good, but its time is over."""


@dataclass(frozen=True, slots=True)
class VoiceCredentials:
    """The application the engine accepts requests from, and the TLS identity it serves them with."""

    application_id: str
    private_key_pem: str = field(repr=False)  # PKCS#8 PEM ("BEGIN PRIVATE KEY"), the form the SDK accepts as text
    public_key_pem: str = field(repr=False)
    private_key_path: Path
    cert_path: Path
    key_path: Path  # the TLS listener's key (not the application's)
    _signing_key: rsa.RSAPrivateKey = field(repr=False, compare=False)
    _verifying_key: rsa.RSAPublicKey = field(repr=False, compare=False)

    @property
    def ca_bundle_path(self) -> Path:
        """What a client trusts to reach the engine: the self-signed certificate itself."""
        return self.cert_path

    @classmethod
    def load_or_create(cls, folder: Path = DEFAULT_FOLDER) -> VoiceCredentials:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        bundle_path = folder / BUNDLE_NAME
        bundle = _read_bundle(bundle_path)
        if bundle is None:
            _publish(bundle_path, orjson.dumps(_new_bundle(), option=orjson.OPT_INDENT_2))
            bundle = _read_bundle(bundle_path)
            if bundle is None:
                raise CredentialsError(f"{bundle_path} vanished while it was being created")
        return cls._from_bundle(folder, bundle)

    @classmethod
    def _from_bundle(cls, folder: Path, bundle: dict[str, Any]) -> VoiceCredentials:
        try:
            application_id = str(uuid.UUID(bundle["application_id"]))
            private_pem: str = bundle["private_key"]
            tls_key_pem: str = bundle["tls_key"]
            tls_cert_pem: str = bundle["tls_certificate"]
            signing_key = serialization.load_pem_private_key(private_pem.encode(), password=None)
            x509.load_pem_x509_certificate(tls_cert_pem.encode())
            serialization.load_pem_private_key(tls_key_pem.encode(), password=None)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CredentialsError(f"{folder / BUNDLE_NAME} is not a usable credentials file: {exc}") from exc
        if not isinstance(signing_key, rsa.RSAPrivateKey):
            raise CredentialsError(f"{folder / BUNDLE_NAME}: the application key must be an RSA key")
        verifying_key = signing_key.public_key()
        public_pem = verifying_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        private_key_path = _write_derived(folder / PRIVATE_KEY_NAME, private_pem.encode(), 0o600)
        key_path = _write_derived(folder / TLS_KEY_NAME, tls_key_pem.encode(), 0o600)
        cert_path = _write_derived(folder / TLS_CERT_NAME, tls_cert_pem.encode(), 0o644)
        return cls(
            application_id=application_id,
            private_key_pem=private_pem,
            public_key_pem=public_pem,
            private_key_path=private_key_path,
            cert_path=cert_path,
            key_path=key_path,
            _signing_key=signing_key,
            _verifying_key=verifying_key,
        )

    # ---- tokens --------------------------------------------------------------------------------------------------

    def app_token(self, now: float | None = None) -> str:
        """An application JWT with the claims, header and lifetime the `vonage` SDK signs its requests with."""
        issued_at = int(time.time() if now is None else now)
        claims = {
            "application_id": self.application_id,
            "iat": issued_at,
            "jti": str(uuid.uuid4()),
            "exp": issued_at + TOKEN_LIFETIME_S,
        }
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"alg": "RS256", "typ": "JWT"})

    def verify(self, token: str, now: float) -> dict[str, Any]:
        """The claims of `token` if this application's key signed it for this application and it is valid at `now`.

        Raises `TokenError` otherwise. Times are checked against `now` (the engine's clock), not the wall clock.
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=["RS256"],  # only RS256: never let the token choose (e.g. HS256 keyed with the public key)
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        if claims.get("application_id") != self.application_id:
            raise TokenError("the token is for another application")
        issued_at = _timestamp(claims, "iat")
        if issued_at is None:
            raise TokenError("the token has no 'iat' claim")
        if issued_at > now + LEEWAY_S:
            raise TokenError("the token is issued in the future")
        expires = _timestamp(claims, "exp")
        if expires is None:
            expires = issued_at + TOKEN_LIFETIME_S
        if expires - issued_at > MAX_TOKEN_LIFETIME_S:
            raise TokenError("the token lives longer than 24 hours")
        if expires < now - LEEWAY_S:
            raise TokenExpired("the token has expired")
        not_before = _timestamp(claims, "nbf")
        if not_before is not None and not_before > now + LEEWAY_S:
            raise TokenError("the token is not valid yet")
        return claims


def _timestamp(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # value != value: NaN
        raise TokenError(f"the token's {name!r} claim must be a number")
    return float(value)


# ---- making ------------------------------------------------------------------------------------------------------


def _new_bundle() -> dict[str, Any]:
    application_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The TLS key only protects a loopback listener; an EC key is quicker to make and to handshake with.
    tls_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "version": BUNDLE_VERSION,
        "application_id": str(uuid.uuid4()),
        "private_key": _pkcs8(application_key),
        "tls_key": _pkcs8(tls_key),
        "tls_certificate": _self_signed_certificate(tls_key).public_bytes(serialization.Encoding.PEM).decode(),
    }


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dialbridge voice engine (localhost)")])
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


# ---- files -------------------------------------------------------------------------------------------------------


def _read_bundle(path: Path) -> dict[str, Any] | None:
    for _ in range(_TORN_READ_RETRIES):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialsError(f"cannot read {path}: {exc}") from exc
        try:
            bundle = orjson.loads(data)
        except orjson.JSONDecodeError:
            time.sleep(0.02)  # only a bundle published without a hard link can be seen half written
            continue
        if not isinstance(bundle, dict) or bundle.get("version") != BUNDLE_VERSION:
            raise CredentialsError(f"{path} is not a version {BUNDLE_VERSION} credentials file")
        return bundle
    raise CredentialsError(f"{path} is not valid JSON")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a file that must not exist yet, with `mode` from the start (a key is never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; 0644 for a certificate is meant
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, data: bytes) -> bool:
    """Make `path` hold `data` unless it already exists; True if this call made it. Never overwrites."""
    temporary = _temporary_name(path)
    _write_new(temporary, data, 0o600)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError:
        # A filesystem without hard links: claim the name with O_EXCL and write into it; a reader that sees it
        # half written reads again (_read_bundle).
        try:
            _write_new(path, data, 0o600)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return True


def _write_derived(path: Path, data: bytes, mode: int) -> Path:
    try:
        if path.read_bytes() == data:
            if path.stat().st_mode & 0o777 != mode:
                os.chmod(path, mode)
            return path
    except FileNotFoundError:
        pass
    temporary = _temporary_name(path)
    _write_new(temporary, data, mode)
    try:
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
