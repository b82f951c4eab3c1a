"""Configuration from `DIALBRIDGE_*` environment variables or a `.env` file.

Every setting has a default that works for `make run` on one machine (embedded backend, SQLite under ./var);
`Settings.problems()` is what `dialbridge doctor` and the server's start-up report, each naming its fix.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dialbridge.sip.registrar import ACCOUNT_FORMAT, DIGEST_ALGORITHMS, SipAccount, parse_accounts


class Backend(StrEnum):
    EMBEDDED = "embedded"
    VONAGE = "vonage"


E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
DIAL_PREFIX = re.compile(r"^\+[0-9]{1,15}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIALBRIDGE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    public_base_url: str | None = Field(
        default=None,
        description="Base URL the outside world reaches this server at; webhook URLs are built from it.",
    )
    # Pages on other origins whose scripts may open the signalling WebSocket (comma-separated, e.g.
    # https://app.example.com); the server's own origin (of PUBLIC_BASE_URL) always may.
    allowed_origins: str = ""
    database_url: str = "sqlite:///./var/dialbridge.db"
    backend: Backend = Backend.EMBEDDED
    dial_in_number: str | None = Field(default=None, description="Phone number callers dial, E.164.")
    # Phone dial-out from a room costs the Vonage account per minute, and anyone holding a room's link holds a
    # participant token: the country codes (or longer prefixes) rooms may call, comma-separated. Empty: any.
    dial_out_prefixes: str = Field(default="", description="E.164 prefixes rooms may dial, e.g. +1,+44")
    # `{"sip_uri"}` dial-outs call that address directly: the SIP hosts (domains or IPs, comma-separated) rooms may
    # call that way. Empty: any host.
    dial_out_sip_hosts: str = Field(default="", description="SIP hosts rooms may call by URI, e.g. pbx.example.com")
    # For the same reason, how many dial-outs (conference or phone) one room may place within an hour.
    dial_outs_per_room_per_hour: Annotated[int, Field(ge=1)] = 30

    # PINs and callers
    pin_length: Annotated[int, Field(ge=6, le=20)] = 6
    pin_max_fill: Annotated[float, Field(gt=0, le=0.05)] = 0.01
    pin_attempts_per_call: Annotated[int, Field(ge=1, le=10)] = 3
    caller_max_failures: Annotated[int, Field(ge=1)] = 10
    caller_failure_window_s: Annotated[int, Field(ge=1)] = 15 * 60
    pin_input_timeout_s: Annotated[int, Field(ge=1, le=10)] = 5

    # Webhook signatures (Vonage "signed webhooks"): HS256 JWT with this secret.
    signature_secret: SecretStr | None = None

    # Participant tokens issued by dialbridge; generated and kept in the database when unset.
    token_secret: SecretStr | None = None
    token_ttl_s: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 4 * 3600

    # Where worker processes share their request counts, so a scrape of any one reports them all. `dialbridge
    # serve --workers N` sets it; set it yourself for several instances on one machine under another supervisor.
    metrics_dir: str | None = None
    # `serve --workers N`: a worker whose event loop has not answered its supervisor for this long is replaced.
    worker_timeout_s: Annotated[int, Field(ge=2)] = 30
    # A request must arrive whole (head and body) within this many seconds of its first byte, else 408: a client
    # trickling bytes holds a connection and a descriptor. Bodies here are at most 64 KB.
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Client connections one process holds at most (HTTP and WebSocket); unset: as many as its descriptor limit
    # allows, keeping a quarter back. When full, the connection that has kept it waiting longest is let go.
    max_connections: Annotated[int, Field(ge=1)] | None = None

    # The embedded voice engine (its own process beside the web server): SIP on UDP and TCP, RTP from a port range.
    sip_host: str = "127.0.0.1"
    sip_port: Annotated[int, Field(ge=1, le=65535)] = 5060
    # The address put in Contact and SDP when peers reach this machine at another one (NAT); default sip_host.
    sip_public_host: str | None = None
    sip_dial_in_user: str = Field(default="dialin", pattern=r"^[A-Za-z0-9_.!~*'()+-]{1,64}$")
    # CIDRs that may place calls, comma-separated (e.g. 10.0.0.0/8,203.0.113.7/32); empty: anyone.
    sip_allow_from: str = ""
    # INVITEs one source address may send per minute before it is refused (a SIP scanner must not exhaust the engine).
    sip_invites_per_source_per_minute: Annotated[int, Field(ge=1)] = 120
    # SIP messages of any kind one source address may send per second; more are dropped before they are parsed.
    sip_messages_per_source_per_second: Annotated[int, Field(ge=1)] = 100
    # SIP over TCP: open connections from one IP address and in all (more are closed at once), and how long one may
    # stay silent (no call or transaction on it; CRLF keep-alives count) or sit on a half-received message.
    sip_tcp_connections_per_source: Annotated[int, Field(ge=1)] = 32
    sip_tcp_connections_total: Annotated[int, Field(ge=1)] = 1024
    sip_tcp_idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    sip_tcp_incomplete_message_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Softphones that register to the engine: `user:password` or `user:password:room-id` (calls join that room
    # without a PIN), comma-separated; or a file of them, one a line (for passwords kept out of the environment).
    sip_accounts: SecretStr | None = None
    sip_accounts_file: str | None = None
    # The digest algorithms their challenges offer, the preferred first (RFC 8760); MD5 alone for old phones.
    sip_digest_algorithms: str = "SHA-256,MD5"
    rtp_ports: str = Field(default="30000-39999", pattern=r"^[0-9]{1,5}-[0-9]{1,5}$")
    # The DNS server the voice engine resolves the hosts peers name with (SRV, A/AAAA), as address[:port] or
    # [IPv6]:port; empty: the system's resolver.
    dns_server: str = ""
    max_calls: Annotated[int, Field(ge=1)] = 500
    # Calls answered but not yet ACKed by their caller, in all and per caller network (/24, /64).
    max_unconfirmed_calls: Annotated[int, Field(ge=1)] = 100
    max_unconfirmed_calls_per_network: Annotated[int, Field(ge=1)] = 10
    # An answered call whose peer has sent no RTP or RTCP for this long (and has not put it on hold) is hung up.
    rtp_timeout_s: Annotated[float, Field(ge=0)] = 60.0
    # A short tone tells a conference's members that someone joined or left.
    join_tones: bool = True
    # The engine's call-control API (Vonage's Voice REST shape, HTTPS) and browser-phone endpoint; the web app
    # reaches it here, signing with the application key the engine keeps (made once) in voice_dir.
    voice_api_host: str = "127.0.0.1"
    voice_api_port: Annotated[int, Field(ge=1, le=65535)] = 8091
    voice_dir: str = "./var/voice"
    # The NCCO application the engine drives; default: this server's own webhooks.
    voice_answer_url: str | None = None
    voice_event_url: str | None = None

    # The WebRTC-SIP gateway (its own process on the embedded backend): joins rooms as a participant and calls the
    # voice engine (or a phone) over SIP from its own SIP port and RTP range; its control API is Vonage Video's
    # SIP dial (HTTPS, the voice engine's application key and certificate).
    gateway_api_host: str = "127.0.0.1"
    gateway_api_port: Annotated[int, Field(ge=1, le=65535)] = 8092
    gateway_sip_port: Annotated[int, Field(ge=1, le=65535)] = 5062
    gateway_rtp_ports: str = Field(default="40000-40999", pattern=r"^[0-9]{1,5}-[0-9]{1,5}$")
    # The SIP trunk the embedded backend calls phones through (the gateway places the call): its URI, e.g.
    # sip:trunk.example.com or sip:trunk.example.com:5080;transport=udp, and its digest credentials when it asks.
    sip_trunk_uri: str | None = None
    sip_trunk_username: str | None = None
    sip_trunk_password: SecretStr | None = None
    # Bridges and calls the gateway holds at once (each is an aiortc peer per browser: ~3 % of a core each).
    gateway_max_calls: Annotated[int, Field(ge=1)] = 50
    # How long a dial-out rings before it ends as "no answer" (the gateway cancels it).
    dial_out_ring_s: Annotated[float, Field(gt=0, le=600)] = 45.0

    # Vonage: application id + private key (PEM text or a path to it) ...
    vonage_application_id: str | None = None
    vonage_private_key: SecretStr | None = None
    # ... or the tutorial's legacy TokBox API key + secret (opentok SDK).
    vonage_api_key: str | None = None
    vonage_api_secret: SecretStr | None = None
    # SIP credentials Vonage Video presents when it dials the conference number (tutorial: key + secret).
    vonage_sip_username: str | None = None
    vonage_sip_password: SecretStr | None = None
    vonage_sip_domain: str = "sip.nexmo.com"
    # Overridable hosts, for a regional endpoint (or a local stub in tests).
    vonage_api_host: str = "api.nexmo.com"
    vonage_video_host: str = "video.api.vonage.com"
    vonage_opentok_host: str = "api.opentok.com"  # the legacy API key + secret's REST host
    vonage_browser_sdk_url: str = "https://unpkg.com/@vonage/client-sdk-video@2/dist/js/opentok.js"

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        # Only from a URL: what is not one is reported as it was set (problems()), not as "https:" for "https://".
        return value.rstrip("/") if value and _is_web_url(value) else value

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{_reachable(self.host)}:{self.port}"

    @property
    def sip_contact_host(self) -> str:
        """The address peers are told to send SIP and RTP to."""
        if self.sip_public_host:
            return self.sip_public_host
        return _reachable(self.sip_host)

    @property
    def voice_api_url(self) -> str:
        return f"https://{_reachable(self.voice_api_host)}:{self.voice_api_port}"

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        return _port_range(self.rtp_ports)

    @property
    def gateway_rtp_port_range(self) -> tuple[int, int]:
        return _port_range(self.gateway_rtp_ports)

    @property
    def gateway_api_url(self) -> str:
        return f"https://{_reachable(self.gateway_api_host)}:{self.gateway_api_port}"

    @property
    def signalling_url(self) -> str:
        """Where the gateway reaches this server's room signalling (always this machine: rooms live in-process)."""
        return f"ws://{self._local_authority}/rt/signalling"

    @property
    def _local_authority(self) -> str:
        """host:port where processes beside this server (the gateway) reach it."""
        host = _reachable(self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def sip_call_events_url(self) -> str:
        """Where the gateway posts its calls' session-monitoring callbacks: this server, on this machine."""
        return f"http://{self._local_authority}/webhooks/video/sip-calls"

    @property
    def conference_sip_uri(self) -> str:
        """What the gateway dials to bring a room into its phone conference: the voice engine's dial-in."""
        return f"sip:{self.sip_dial_in_user}@{self.sip_contact_host}:{self.sip_port}"

    @property
    def websocket_origins(self) -> frozenset[str]:
        """The origins (scheme://host[:port], as browsers send them) whose pages may open the signalling socket."""
        listed = [origin for origin in self.allowed_origins.split(",") if origin.strip()]
        own = [self.public_base_url] if self.public_base_url else []
        return frozenset(origin for origin in map(web_origin, [*own, *listed]) if origin)

    def sip_account_list(self) -> tuple[SipAccount, ...]:
        """The accounts of DIALBRIDGE_SIP_ACCOUNTS and DIALBRIDGE_SIP_ACCOUNTS_FILE. Raises ValueError (OSError for an
        unreadable file) naming the bad entry, never a password."""
        entries = self.sip_accounts.get_secret_value().split(",") if self.sip_accounts else []
        listed = parse_accounts(entries, where="DIALBRIDGE_SIP_ACCOUNTS entry")
        filed: tuple[SipAccount, ...] = ()
        if self.sip_accounts_file:
            lines = Path(self.sip_accounts_file).expanduser().read_text(encoding="utf-8").splitlines()
            lines = ["" if line.lstrip().startswith("#") else line for line in lines]  # comments; lines keep numbers
            filed = parse_accounts(lines, where=f"DIALBRIDGE_SIP_ACCOUNTS_FILE ({self.sip_accounts_file}) line")
        # parse_accounts refuses a user listed twice within one list: only the two lists can share one.
        twice = sorted({account.username for account in listed} & {account.username for account in filed})
        if twice:
            raise ValueError(f"account {', '.join(twice)} is listed in both DIALBRIDGE_SIP_ACCOUNTS and its file")
        return listed + filed

    @property
    def sip_digest_algorithm_list(self) -> tuple[str, ...]:
        return tuple(name.strip().upper() for name in self.sip_digest_algorithms.split(",") if name.strip())

    @property
    def dns_server_address(self) -> tuple[str, int] | None:
        """`dns_server` parsed: (IP address, port, 53 unless given); None for the system's. ValueError if bad."""
        value = self.dns_server.strip()
        if not value:
            return None
        host, port = value, "53"
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port = rest.removeprefix(":") or port
        elif value.count(":") == 1:
            host, port = value.split(":")
        ipaddress.ip_address(host)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{port!r} is not a port")
        return host, int(port)

    @property
    def sip_allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(cidr.strip(), strict=False) for cidr in self.sip_allow_from.split(",") if cidr.strip()
        ]

    @property
    def answer_url(self) -> str:
        return self.voice_answer_url or f"{self.base_url}/webhooks/answer"

    @property
    def event_url(self) -> str:
        return self.voice_event_url or f"{self.base_url}/webhooks/events"

    @property
    def speaking_url(self) -> str | None:
        """Where the engine reports who speaks (a dialbridge route, not Vonage's): none when the events go to
        another application (DIALBRIDGE_VOICE_EVENT_URL), which would not know it."""
        return None if self.voice_event_url else f"{self.base_url}/webhooks/speaking"

    def private_key_pem(self) -> str | None:
        """The Vonage private key as PEM text, read from the file when the setting is a path."""
        if self.vonage_private_key is None:
            return None
        value = self.vonage_private_key.get_secret_value()
        if "-----BEGIN" in value:
            return value.replace("\\n", "\n")
        return Path(value).expanduser().read_text()

    @property
    def allowed_dial_out_prefixes(self) -> list[str]:
        """The prefixes of DIALBRIDGE_DIAL_OUT_PREFIXES; empty when any number may be dialled."""
        return [prefix.strip() for prefix in self.dial_out_prefixes.split(",") if prefix.strip()]

    @property
    def allowed_dial_out_sip_hosts(self) -> list[str]:
        """The hosts of DIALBRIDGE_DIAL_OUT_SIP_HOSTS, lower-case; empty when any SIP host may be called."""
        return [host.strip().lower() for host in self.dial_out_sip_hosts.split(",") if host.strip()]

    def problems(self) -> list[str]:
        """What is wrong with this configuration, each entry saying how to fix it."""
        found: list[str] = []
        if self.dial_in_number and not E164.match(self.dial_in_number):
            found.append(
                f"DIALBRIDGE_DIAL_IN_NUMBER={self.dial_in_number!r} is not an E.164 number; "
                "write it as + country code and number, e.g. +14155550100"
            )
        bad = [prefix for prefix in self.allowed_dial_out_prefixes if not DIAL_PREFIX.match(prefix)]
        if bad:
            found.append(
                f"DIALBRIDGE_DIAL_OUT_PREFIXES has {', '.join(map(repr, bad))}: list + and digits, comma-separated, "
                "e.g. +1,+44"
            )
        if self.signature_secret is not None and not self.signature_secret.get_secret_value().strip():
            found.append(
                "DIALBRIDGE_SIGNATURE_SECRET is set but empty, which would accept forged webhooks: set it to your "
                "Vonage account's signature secret (Dashboard → API settings), or remove the line to accept "
                "unsigned webhooks"
            )
        if self.public_base_url is not None and not _is_web_url(self.public_base_url):
            found.append(
                f"DIALBRIDGE_PUBLIC_BASE_URL={self.public_base_url!r} is not an http:// or https:// URL with a host: "
                "set it to the URL the outside world reaches this server at, e.g. https://dialbridge.example.com"
            )
        if not self.database_url.startswith(("sqlite:", "postgresql")):
            found.append("DIALBRIDGE_DATABASE_URL must be a sqlite:///path or postgresql+psycopg://… URL")
        if self.backend is Backend.EMBEDDED:
            found.extend(self._voice_problems())
        if self.backend is Backend.VONAGE:
            found.extend(self._vonage_problems())
        return found

    def _voice_problems(self) -> list[str]:
        found: list[str] = []
        for setting, text, (low, high), example in (
            ("RTP_PORTS", self.rtp_ports, self.rtp_port_range, "30000-39999"),
            ("GATEWAY_RTP_PORTS", self.gateway_rtp_ports, self.gateway_rtp_port_range, "40000-40999"),
        ):
            if not 1024 <= low < high <= 65535 or high - low < 3:
                found.append(
                    f"DIALBRIDGE_{setting}={text!r} must be a range of at least four ports within 1024-65535, "
                    f"e.g. {example}"
                )
        if _overlap(self.rtp_port_range, self.gateway_rtp_port_range):
            found.append(
                f"DIALBRIDGE_RTP_PORTS ({self.rtp_ports}) and DIALBRIDGE_GATEWAY_RTP_PORTS ({self.gateway_rtp_ports}) "
                "overlap: the voice engine and the gateway would take each other's ports; give each its own range"
            )
        try:
            self.dns_server_address  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            found.append(f"DIALBRIDGE_DNS_SERVER: {exc}; give an IP address, with a port if not 53: 127.0.0.1:5353")
        try:
            self.sip_allowed_networks  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            found.append(
                f"DIALBRIDGE_SIP_ALLOW_FROM: {exc}; list networks in CIDR form, comma-separated, "
                "e.g. 10.0.0.0/8,203.0.113.7/32"
            )
        algorithms = self.sip_digest_algorithm_list
        if not algorithms or any(algorithm not in DIGEST_ALGORITHMS for algorithm in algorithms):
            found.append(
                f"DIALBRIDGE_SIP_DIGEST_ALGORITHMS={self.sip_digest_algorithms!r}: list some of "
                f"{', '.join(DIGEST_ALGORITHMS)}, the preferred first, comma-separated, e.g. SHA-256,MD5 (or MD5 "
                "alone for phones that fail on any other challenge)"
            )
        try:
            self.sip_account_list()
        except OSError as exc:
            found.append(
                f"cannot read DIALBRIDGE_SIP_ACCOUNTS_FILE ({exc.strerror}: {exc.filename}); point it at a file of "
                f"accounts, one a line as {ACCOUNT_FORMAT}"
            )
        except ValueError as exc:
            found.append(
                f"{exc}; write each account as {ACCOUNT_FORMAT}, e.g. alice:s3cret:team-room (comma-separated in "
                "DIALBRIDGE_SIP_ACCOUNTS, one a line in DIALBRIDGE_SIP_ACCOUNTS_FILE)"
            )
        return found

    def warnings(self) -> list[str]:
        found: list[str] = []
        if self.signature_secret is None:
            found.append(
                "webhooks are accepted unsigned: set DIALBRIDGE_SIGNATURE_SECRET to your Vonage account's "
                "signature secret (Dashboard → API settings) so forged webhooks are refused"
            )
        if not self.dial_in_number:
            found.append(
                "no dial-in number is shown to users: set DIALBRIDGE_DIAL_IN_NUMBER (E.164, e.g. +14155550100)"
            )
        if self.backend is Backend.VONAGE and not self.allowed_dial_out_prefixes:
            found.append(
                "rooms may dial any phone number at your Vonage account's cost: set DIALBRIDGE_DIAL_OUT_PREFIXES "
                "to the country codes they may call (e.g. +1,+44)"
            )
        if self.public_base_url is None and self.backend is Backend.VONAGE:
            found.append(
                "DIALBRIDGE_PUBLIC_BASE_URL is unset, so webhook URLs point at "
                f"{self.base_url}, which Vonage cannot reach; set it to your public https URL"
            )
        return found

    def _vonage_problems(self) -> list[str]:
        found: list[str] = []
        has_app = self.vonage_application_id is not None
        has_legacy = self.vonage_api_key is not None
        if not has_app and not has_legacy:
            found.append(
                "the vonage backend needs credentials: set DIALBRIDGE_VONAGE_APPLICATION_ID and "
                "DIALBRIDGE_VONAGE_PRIVATE_KEY (path to the application's private.key), or the legacy "
                "DIALBRIDGE_VONAGE_API_KEY and DIALBRIDGE_VONAGE_API_SECRET"
            )
        if has_app:
            if self.vonage_private_key is None:
                found.append(
                    "DIALBRIDGE_VONAGE_APPLICATION_ID is set but DIALBRIDGE_VONAGE_PRIVATE_KEY is not: "
                    "set it to the path of the private.key downloaded when the application was created"
                )
            else:
                try:
                    pem = self.private_key_pem()
                except OSError as exc:
                    found.append(
                        f"cannot read DIALBRIDGE_VONAGE_PRIVATE_KEY ({exc.strerror}: {exc.filename}); "
                        "point it at the application's private.key file or paste the PEM text"
                    )
                else:
                    if pem is not None and "PRIVATE KEY" not in pem:
                        found.append(
                            "DIALBRIDGE_VONAGE_PRIVATE_KEY does not hold a PEM private key; use the "
                            "private.key file Vonage gave you when the application was created"
                        )
        elif has_legacy and self.vonage_api_secret is None:
            found.append("DIALBRIDGE_VONAGE_API_KEY is set but DIALBRIDGE_VONAGE_API_SECRET is not; set both")
        if self.sip_credentials() is None:
            found.append(
                "dialling the conference from a room needs SIP credentials: set "
                "DIALBRIDGE_VONAGE_SIP_USERNAME and DIALBRIDGE_VONAGE_SIP_PASSWORD (the tutorial used the "
                "account API key and secret), or DIALBRIDGE_VONAGE_API_KEY/_API_SECRET"
            )
        return found

    def sip_credentials(self) -> tuple[str, str] | None:
        user = self.vonage_sip_username or self.vonage_api_key
        secret = self.vonage_sip_password or self.vonage_api_secret
        if user and secret:
            return user, secret.get_secret_value()
        return None


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _is_web_url(url: str) -> bool:
    """An http(s) URL with a host (and, if it names one, a valid port): what webhook URLs can be built from."""
    parsed = urlsplit(url)
    try:
        parsed.port  # noqa: B018 - parsed for its errors
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def web_origin(url: str) -> str | None:
    """`url`'s origin as a browser's Origin header spells it (lower case, no default port); None if it has none."""
    parsed = urlsplit(url.strip())
    if not parsed.scheme or not parsed.hostname:
        return None
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        return None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else "")


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _reachable(host: str) -> str:
    """Where this machine's own processes reach a listener bound to `host`: loopback for a wildcard address."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host
