"""SIP messages (RFC 3261 section 7, 20, 25): parse bytes into requests/responses and serialise them back.

Headers keep their order and every value. Headers whose grammar is a comma-separated list (Via, Contact, Route, ...)
are split into one entry per value when parsed; the rest (auth headers, Date, unknown extension headers) are kept
whole. Compact forms are normalised to full names; unknown names keep the peer's spelling (X- headers reach the
engine as sent). Parsing never uses backtracking regexes, so hostile input costs linear time.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 branch prefix: the branch alone identifies the transaction
DEFAULT_MAX_SIZE = 16384

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "RAck",
        "Server",
        "Service-Route",
        "Session-Expires",
        "Min-SE",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}
_COMPACT: dict[str, str] = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
}
# Headers whose ABNF is `#element`: several values may share one line, comma-separated.
_LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "Path",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")  # RFC 3986 3.1
_SIP_SCHEMES = frozenset(("sip", "sips"))
# What every response is built from (RFC 3261 8.1.1, 8.2.6.2): a request without one of them cannot be answered.
_CORE_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
# Headers of which a request has exactly one (RFC 3261 20): two of them make it ambiguous (RFC 4475 3.3.8).
_SINGLE_HEADERS = ("To", "From", "Call-ID", "CSeq", "Max-Forwards")
_HOST_RE = re.compile(r"[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\]")


class SipParseError(ValueError):
    """Input that is not a usable SIP message.

    `status` is the response a UAS owes (400 malformed, 513 too large, 505 wrong version, 416 bad URI scheme).
    `request` is set when enough of a request was understood to address that response (Via, From, To, Call-ID and
    CSeq all parsed); otherwise the message can only be dropped.
    """

    def __init__(self, message: str, status: int = 400, request: SipRequest | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request = request


def _is_digits(text: str | bytes) -> bool:
    """ASCII digits only: str.isdigit() also accepts characters such as '²' that int() rejects."""
    if isinstance(text, bytes):
        return bool(text) and all(0x30 <= b <= 0x39 for b in text)
    return bool(text) and all("0" <= c <= "9" for c in text)


def canonical_name(name: str) -> str:
    """Full, conventionally spelt header name; compact forms expanded; unknown names kept as given."""
    lower = name.lower()
    if len(lower) == 1 and lower in _COMPACT:
        return _COMPACT[lower]
    return _CANONICAL.get(lower, name)


# ---------------------------------------------------------------------------------------------------------------------
# Low-level helpers


def split_quoted(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes and angle brackets (commas inside "a, b" or <sip:x;a,b> stay)."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == separator and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _parse_params(text: str) -> dict[str, str | None]:
    """`;a=b;c` (leading ';' already removed or not) into an ordered dict; names lowercased, values kept."""
    params: dict[str, str | None] = {}
    for raw in split_quoted(text, ";"):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name or not all(c in _TOKEN_CHARS for c in name):
            raise SipParseError(f"bad parameter {item!r}")
        params[name.lower()] = value.strip() if eq else None
    return params


def _format_params(params: Mapping[str, str | None]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


def _parse_host_port(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"bad host:port {text!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise SipParseError(f"bad port in {text!r}")
    if not _HOST_RE.fullmatch(host):
        raise SipParseError(f"bad host {host!r}")
    if not port_text:
        return host, None
    if not _is_digits(port_text) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port {port_text!r}")
    return host, int(port_text)


def _format_host_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def _unquote(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------------------------------
# URIs and address headers


@dataclass(frozen=True, slots=True)
class SipUri:
    """sip:, sips: or tel: URI (RFC 3261 19.1, RFC 3966). For tel:, `user` is the number and `host` is empty.

    Parsed with `any_scheme=True` (the URI of a To, From or Contact, RFC 3261 20.10: any absolute URI), a URI of
    another scheme keeps what follows the colon as `opaque`, unread; its `user` is None and its `host` empty."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    password: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str, *, any_scheme: bool = False) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not rest or not _SCHEME_RE.fullmatch(scheme):
            raise SipParseError(f"bad URI {text!r}")  # not a URI at all (`<sip:...>` has no scheme): 400, not 416
        scheme = scheme.lower()
        if any(c in rest for c in ' \t<>"\r\n'):
            raise SipParseError(f"bad URI {text!r}")
        if scheme not in _SIP_SCHEMES and scheme != "tel":
            if any_scheme:
                return cls(scheme=scheme, user=None, host="", opaque=rest)
            raise SipParseError(f"unsupported URI scheme {scheme!r}", status=416)
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number:
                raise SipParseError(f"bad tel URI {text!r}")
            return cls(scheme="tel", user=number, host="", params=_parse_params(param_text))
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            # The last '@' ends the userinfo: no '@' may stand unescaped after it, while the user part may hold
            # '?', ';' and '&' (RFC 3261 25.1 user-unreserved), which must not be read as headers or parameters.
            userinfo, _, rest = rest.rpartition("@")
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
            if not user:
                raise SipParseError(f"empty user in {text!r}")
        rest, _, header_text = rest.partition("?")
        headers: dict[str, str] = {}
        if header_text:
            for item in header_text.split("&"):
                name, eq, value = item.partition("=")
                if not name or not eq:
                    raise SipParseError(f"bad URI header {item!r}")
                headers[name] = value
        host_port, _, param_text = rest.partition(";")
        host, port = _parse_host_port(host_port)
        return cls(
            scheme=scheme,
            user=user,
            host=host,
            port=port,
            params=_parse_params(param_text),
            headers=headers,
            password=password,
        )

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        text = f"{self.scheme}:{userinfo}{_format_host_port(self.host, self.port)}{_format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return text

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def unescaped_user(self) -> str:
        """The user part as the application compares it: % HEX HEX read as the octet (RFC 4475 3.1.1.3)."""
        return urllib.parse.unquote(self.user or "")

    def without_params(self) -> SipUri:
        if self.opaque is not None:
            return self
        return SipUri(scheme=self.scheme, user=self.user, host=self.host, port=self.port, password=self.password)


def trunk_uri(trunk: str, number: str) -> str:
    """The trunk's URI with the number as its user part: `sip:host;transport=tcp` → `sip:+1415…@host;transport=tcp`
    (a user already in the setting is replaced: the number is who is called)."""
    scheme, _, rest = trunk.partition(":")
    host = rest.split("@", 1)[-1]
    return f"{scheme}:{number}@{host}"


@dataclass(frozen=True, slots=True)
class NameAddr:
    """name-addr / addr-spec with header parameters (From, To, Contact, Route, Record-Route)."""

    uri: SipUri
    display_name: str | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise SipParseError("empty address")
        display: str | None = None
        if "<" in text:
            lt = _find_unquoted(text, "<")
            gt = text.find(">", lt)
            if lt < 0 or gt < 0:
                raise SipParseError(f"bad name-addr {text!r}")
            raw_display = text[:lt].strip()
            if raw_display.startswith('"'):
                if len(raw_display) < 2 or not raw_display.endswith('"'):
                    raise SipParseError(f"bad display name {raw_display!r}")
                display = _unquote(raw_display[1:-1])
            elif raw_display:
                if '"' in raw_display:
                    raise SipParseError(f"bad display name {raw_display!r}")
                display = raw_display
            uri = SipUri.parse(text[lt + 1 : gt], any_scheme=True)
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise SipParseError(f"junk after name-addr {text!r}")
            return cls(uri=uri, display_name=display, params=_parse_params(rest[1:]))
        # addr-spec: parameters after the URI belong to the header, not the URI (RFC 3261 20.10).
        uri_text, _, param_text = text.partition(";")
        if "?" in uri_text:
            raise SipParseError("addr-spec with URI headers must use <>")
        return cls(uri=SipUri.parse(uri_text, any_scheme=True), params=_parse_params(param_text))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(uri=self.uri, display_name=self.display_name, params={**self.params, "tag": tag})

    def without_tag(self) -> NameAddr:
        params = {k: v for k, v in self.params.items() if k != "tag"}
        return NameAddr(uri=self.uri, display_name=self.display_name, params=params)

    def __str__(self) -> str:
        display = f"{_quote(self.display_name)} " if self.display_name is not None else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _find_unquoted(text: str, char: str) -> int:
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == char:
            return i
        i += 1
    return -1


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport[=n]`."""

    transport: str  # upper case: UDP, TCP, TLS, ...
    host: str
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)
    version: str = "2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        # sent-protocol is "SIP / version / transport", LWS allowed around each slash (RFC 3261 25.1). Any version
        # parses: only the Request-Line's version decides (505), and the answer must still find its way back.
        pieces = text.strip().split("/", 2)
        if len(pieces) != 3 or pieces[0].strip().upper() != "SIP":
            raise SipParseError(f"bad Via {text!r}")
        version = pieces[1].strip()
        transport_and_rest = pieces[2].split(None, 1)
        if not version or not all(c in _TOKEN_CHARS for c in version) or len(transport_and_rest) != 2:
            raise SipParseError(f"bad Via {text!r}")
        transport, rest = transport_and_rest[0].upper(), transport_and_rest[1]
        if not all(c in _TOKEN_CHARS for c in transport):
            raise SipParseError(f"bad Via transport {text!r}")
        sent_by, _, param_text = rest.strip().partition(";")
        host, port = _parse_host_port(sent_by)
        params = _parse_params(param_text)
        rport = params.get("rport")
        if rport is not None and not (_is_digits(rport) and 0 < int(rport) < 65536):
            raise SipParseError(f"bad rport {rport!r}")
        return cls(transport=transport, host=host, port=port, params=params, version=version)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        return _format_host_port(self.host, self.port)

    def with_params(self, **changes: str | None) -> Via:
        params = {**self.params, **changes}
        return Via(transport=self.transport, host=self.host, port=self.port, params=params, version=self.version)

    def __str__(self) -> str:
        return f"SIP/{self.version}/{self.transport} {self.sent_by}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not _is_digits(parts[0]) or len(parts[0]) > 10 or not _METHOD_RE.fullmatch(parts[1]):
            raise SipParseError(f"bad CSeq {text!r}")
        number = int(parts[0])
        if number >= 2**31:
            raise SipParseError(f"CSeq out of range {text!r}")
        return cls(number=number, method=parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# ---------------------------------------------------------------------------------------------------------------------
# Headers and messages


class Headers:
    """Ordered, case-insensitive multimap of header name to value. Names are canonicalised on the way in."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or []:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of `name` with `value` (at the position of the first one, or at the end)."""
        name = canonical_name(name)
        lower = name.lower()
        for i, (existing, _) in enumerate(self._items):
            if existing.lower() == lower:
                self._items[i] = (name, value)
                self._items[i + 1 :] = [item for item in self._items[i + 1 :] if item[0].lower() != lower]
                return
        self._items.append((name, value))

    def replace_first(self, name: str, value: str) -> None:
        """Replace only the first value of `name` (e.g. the top Via when stamping received/rport)."""
        lower = canonical_name(name).lower()
        for i, (existing, _) in enumerate(self._items):
            if existing.lower() == lower:
                self._items[i] = (existing, value)
                return
        self._items.append((canonical_name(name), value))

    def remove(self, name: str) -> None:
        lower = canonical_name(name).lower()
        self._items = [item for item in self._items if item[0].lower() != lower]

    def get(self, name: str) -> str | None:
        lower = canonical_name(name).lower()
        for existing, value in self._items:
            if existing.lower() == lower:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        lower = canonical_name(name).lower()
        return [value for existing, value in self._items if existing.lower() == lower]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        clone = Headers()
        clone._items = list(self._items)
        return clone

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _MessageBase:
    """What requests and responses share: headers, body and typed accessors for the core headers."""

    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if not value:
            raise SipParseError("missing Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipParseError("missing CSeq")
        return CSeq.parse(value)

    @property
    def from_addr(self) -> NameAddr:
        value = self.headers.get("From")
        if value is None:
            raise SipParseError("missing From")
        return NameAddr.parse(value)

    @property
    def to_addr(self) -> NameAddr:
        value = self.headers.get("To")
        if value is None:
            raise SipParseError("missing To")
        return NameAddr.parse(value)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise SipParseError("missing Via")
        return Via.parse(value)

    @property
    def contacts(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact") if v.strip() != "*"]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value else None

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{name}: {value}" for name, value in self.headers if name != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(eq=False, slots=True)
class SipRequest(_MessageBase):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass(eq=False, slots=True)
class SipResponse(_MessageBase):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return self._serialise(f"{SIP_VERSION} {self.status} {self.reason}")


SipMessage = SipRequest | SipResponse


def _find_head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """Where the head ends and the body starts: at the first blank line, CRLF CRLF or (tolerated) bare LF LF.

    One rule for datagrams and streams, so a message UDP accepts is framed the same way over TCP."""
    end = data.find(b"\r\n\r\n")
    lf_end = data.find(b"\n\n")
    if end < 0 and lf_end < 0:
        return None
    if end >= 0 and (lf_end < 0 or end <= lf_end):
        return end, end + 4
    return lf_end, lf_end + 2


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Head (start line + headers) and what follows the blank line. Bare LF line ends are tolerated."""
    bounds = _find_head_end(data)
    if bounds is None:
        raise SipParseError("no end of headers")
    head_end, body_start = bounds
    return data[:head_end], data[body_start:]


def _header_lines(head: str) -> list[str]:
    lines: list[list[str]] = []
    for raw in head.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError("continuation line before any header")
            lines[-1].append(raw.strip())  # header folding (RFC 3261 7.3.1): joined with one space below
        else:
            lines.append([raw])
    return [" ".join(parts) for parts in lines]


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, stream: bool = False) -> SipMessage:
    """Parse one whole SIP message.

    Datagram rules (stream=False): a missing Content-Length means the body is the rest of the datagram; extra bytes
    beyond Content-Length are discarded; fewer bytes than Content-Length is an error (RFC 3261 18.3). With
    stream=True (a message already framed by `SipStreamFramer`) the body must be exactly Content-Length long.
    """
    if len(data) > max_size:
        error = SipParseError(f"message of {len(data)} bytes exceeds {max_size}", status=513)
        error.request = _addressable_request(data)
        raise error
    # RFC 3261 7.5: CRLFs before the start line are ignored (keep-alives glued to a message).
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    head_bytes, rest = _split_head(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("headers are not UTF-8") from exc
    lines = _header_lines(head)
    start_line = lines[0]
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not all(c in _TOKEN_CHARS for c in name):
            raise SipParseError(f"bad header line {line[:80]!r}")
        value = value.strip()
        canonical = canonical_name(name)
        if canonical.lower() in _LIST_HEADERS and value:
            for item in split_quoted(value, ","):
                if item.strip():
                    headers.add(canonical, item.strip())
        else:
            headers.add(canonical, value)

    if start_line.startswith(SIP_VERSION + " ") or start_line.upper().startswith("SIP/"):
        response = _parse_status_line(start_line, headers)
        _check_core_headers(response)  # a response that fails is dropped: nothing is owed to it
        response.body = _take_body(headers, rest, stream)
        if response.status < 300 and response.cseq.method in _TARGET_REFRESHING:
            _check_dialog_target(response, response.cseq.method)
        return response
    request = _parse_request_line(start_line, headers)
    try:
        _check_request_line(start_line)
        _check_core_headers(request)
        request.body = _take_body(headers, rest, stream)
        _check_request(request)
    except SipParseError as exc:
        raise SipParseError(str(exc), status=exc.status, request=_if_addressable(request)) from None
    return request


def _parse_status_line(line: str, headers: Headers) -> SipResponse:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] != SIP_VERSION:
        raise SipParseError(f"bad status line {line[:80]!r}")
    code = parts[1]
    if len(code) != 3 or not _is_digits(code) or not 100 <= int(code) <= 699:
        raise SipParseError(f"bad status code {code!r}")
    return SipResponse(status=int(code), reason=parts[2] if len(parts) > 2 else "", headers=headers)


def _parse_request_line(line: str, headers: Headers) -> SipRequest:
    """The request as far as its Request-Line can be read: method, then the URI up to the last space.

    Only a line without a method token cannot be a request at all; anything else wrong with it (a missing or extra
    SP, LWS in the URI) is for `_check_request_line`, so that the request can still be answered 400."""
    method, _, rest = line.partition(" ")
    if not _METHOD_RE.fullmatch(method):
        raise SipParseError(f"bad request line {line[:80]!r}")
    uri, _, _ = rest.rpartition(" ")
    return SipRequest(method=method, uri=uri, headers=headers)


def _check_request_line(line: str) -> None:
    """Method SP Request-URI SP SIP-Version, each SP a single one (RFC 3261 25.1; RFC 4475 3.1.2.8-10)."""
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise SipParseError(f"bad request line {line[:80]!r}")
    if parts[2].upper() != SIP_VERSION:
        raise SipParseError(f"unsupported version {parts[2]!r}", status=505)


def _if_addressable(request: SipRequest) -> SipRequest | None:
    """`request` if it can be answered: the headers a response copies are there (RFC 3261 8.2.6.2) and its top Via,
    which says where the response goes (18.2.2), parses. The others are copied as they came, however malformed."""
    if any(request.headers.get(name) is None for name in _CORE_HEADERS):
        return None
    try:
        request.top_via  # noqa: B018 - parsing is the check
    except SipParseError:
        return None
    return request


def _check_core_headers(message: SipMessage) -> None:
    """The headers every response is built from (RFC 3261 8.1.1), each present once and well-formed."""
    for name in _CORE_HEADERS:
        if message.headers.get(name) is None:
            raise SipParseError(f"missing {name}")
    for name in _SINGLE_HEADERS:
        if len(message.headers.get_all(name)) > 1:
            raise SipParseError(f"more than one {name}")
    message.top_via  # noqa: B018 - parsing is the check
    message.from_addr  # noqa: B018
    message.to_addr  # noqa: B018
    if not message.call_id.strip():
        raise SipParseError("empty Call-ID")
    cseq = message.cseq
    if isinstance(message, SipRequest) and cseq.method != message.method:
        raise SipParseError("CSeq method does not match request method")


def _check_request(request: SipRequest) -> None:
    uri = request.request_uri  # a bad Request-URI: 400, or 416 for a foreign scheme
    if uri.headers:
        raise SipParseError("URI headers in the Request-URI")  # not allowed there (RFC 3261 19.1.1)
    for via in request.vias:
        _ = via.branch
    max_forwards = request.headers.get("Max-Forwards")
    # Leading zeros are legal (RFC 4475 3.1.1.1); a value over 255 is not an error worth refusing for (3.1.2.4).
    if max_forwards is not None and (not _is_digits(max_forwards) or len(max_forwards.lstrip("0")) > 3):
        raise SipParseError("bad Max-Forwards")
    _ = request.contacts  # a Contact that does not parse is a 400 whatever the method (RFC 4475 3.1.2.13)
    _check_dialog_target(request, request.method, contact=request.method in _TARGET_REFRESHING)


#: Requests (and their 1xx/2xx) whose Contact sets or refreshes a dialog's remote target: INVITE, and UPDATE (RFC
#: 3311 5.1); a SUBSCRIBE or REFER would too, which the engine does not serve.
_TARGET_REFRESHING = frozenset({"INVITE", "UPDATE"})


def _check_dialog_target(message: SipMessage, method: str, *, contact: bool = True) -> None:
    """What requests are sent to must be SIP URIs: the dialog's target (RFC 3261 8.1.1.8, 12.2.1.2; checked when
    `contact`: a target refresh) and its route set. A `tel:` or other Contact in a target refresh would make every
    later request of the dialog unsendable."""
    if contact and any(c.uri.scheme not in _SIP_SCHEMES for c in message.contacts):
        raise SipParseError(f"the Contact of an {method} is not a SIP URI")
    for name in ("Route", "Record-Route"):
        for value in message.headers.get_all(name):
            if NameAddr.parse(value).uri.scheme not in _SIP_SCHEMES:
                raise SipParseError(f"{name} is not a SIP URI")


def _take_body(headers: Headers, rest: bytes, stream: bool) -> bytes:
    values = headers.get_all("Content-Length")
    if not values:
        if stream and rest:
            raise SipParseError("missing Content-Length on a stream")
        return rest
    if len(set(values)) != 1 or not _is_digits(values[0]) or len(values[0]) > 9:
        raise SipParseError("bad Content-Length")
    length = int(values[0])
    if len(rest) < length:
        raise SipParseError("body shorter than Content-Length")
    if stream and len(rest) > length:
        raise SipParseError("body longer than Content-Length")
    return rest[:length]


def _addressable_request(data: bytes) -> SipRequest | None:
    """For an oversized message: the request it starts with, if its head alone can address a 513."""
    try:
        head, _ = _split_head(data.lstrip(b"\r\n"))
        message = parse_message(head + b"\r\n\r\n", max_size=len(head) + 4)
    except SipParseError as exc:
        return exc.request
    return message if isinstance(message, SipRequest) else None


class SipStreamFramer:
    """Cuts a TCP byte stream into whole SIP messages using Content-Length (RFC 3261 18.3); a head ends where
    `parse_message` ends it (bare LF line ends tolerated).

    CRLF keep-alives between messages (RFC 5626 "double CRLF" pings) are skipped. A message whose head or total size
    exceeds `max_size`, or whose Content-Length is unusable, raises SipParseError: the stream cannot be resynchronised
    and the connection should be closed (after answering, if the error carries a request).
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self.keepalives = 0  # CRLFCRLF pings seen; the transport may answer each with a single CRLF
        self._between = b""  # line ends since the last message that may begin a ping another read completes

    @property
    def incomplete(self) -> bool:
        """Part of a message is buffered, waiting for the rest (keep-alive CRLFs are never kept)."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while True:
            stripped = 0
            while stripped < len(self._buffer) and self._buffer[stripped] in (0x0D, 0x0A):
                stripped += 1
            if stripped:
                # A ping may come in two reads ("\r\n", then "\r\n"): the line ends are counted as one run.
                run = self._between + bytes(self._buffer[:stripped])
                self.keepalives += run.count(b"\r\n\r\n")
                self._between = run[run.rfind(b"\r\n\r\n") + 4 :] if b"\r\n\r\n" in run else run[-3:]
                del self._buffer[:stripped]
            if self._buffer:
                self._between = b""  # a message begins: what came before it was no ping's start
            bounds = _find_head_end(self._buffer)
            if bounds is None:
                if len(self._buffer) > self.max_size:
                    # As over UDP: answer 513 if the header lines received so far can address it (Via, From, To,
                    # Call-ID and CSeq come first in practice), then the stream is given up.
                    error = SipParseError("headers exceed the size limit", status=513)
                    last_line = self._buffer.rfind(b"\r\n")
                    if last_line > 0:
                        error.request = _addressable_request(bytes(self._buffer[:last_line]) + b"\r\n\r\n")
                    raise error
                return messages
            head_end, body_start = bounds
            length = _stream_content_length(bytes(self._buffer[:head_end]))
            total = body_start + length
            if total > self.max_size:
                error = SipParseError(f"message of {total} bytes exceeds {self.max_size}", status=513)
                error.request = _addressable_request(bytes(self._buffer[:body_start]))
                raise error
            if len(self._buffer) < total:
                return messages
            messages.append(bytes(self._buffer[:total]))
            del self._buffer[:total]


def _stream_content_length(head: bytes) -> int:
    found: int | None = None
    for raw in head.split(b"\n")[1:]:  # CRLF or bare LF line ends, as `_header_lines` reads them
        name, colon, value = raw.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not _is_digits(text) or len(text) > 9:
                raise SipParseError("bad Content-Length")
            if found is not None and found != int(text):
                raise SipParseError("conflicting Content-Length")
            found = int(text)
    return found or 0


# ---------------------------------------------------------------------------------------------------------------------
# Building responses


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> SipResponse:
    """A response to `request` per RFC 3261 8.2.6.2: Via (all, in order), From, To, Call-ID and CSeq copied.

    `to_tag` is added to To when the request had none (never on 100 Trying, 8.2.6.1 / 17.2.1). Timestamp is echoed
    on 100 Trying. Extra `headers` follow the copied ones, in order.
    """
    response = SipResponse(status=status, reason=reason or REASON_PHRASES.get(status, "Unknown"))
    for via in request.headers.get_all("Via"):
        response.headers.add("Via", via)
    response.headers.add("From", request.headers.get("From") or "")
    to_value = request.headers.get("To") or ""
    if to_tag is not None and status != 100:
        try:
            to = NameAddr.parse(to_value)
        except SipParseError:
            to = None
        if to is not None and to.tag is None:
            to_value = str(to.with_tag(to_tag))
    response.headers.add("To", to_value)
    response.headers.add("Call-ID", request.headers.get("Call-ID") or "")
    response.headers.add("CSeq", request.headers.get("CSeq") or "")
    if status == 100 and (timestamp := request.headers.get("Timestamp")) is not None:
        response.headers.add("Timestamp", timestamp)
    extra = headers.items() if isinstance(headers, Mapping) else headers or []
    for name, value in extra:
        response.headers.add(name, value)
    response.body = body
    return response
