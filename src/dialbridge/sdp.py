"""SDP offer/answer for one G.711 audio stream (RFC 4566/8866 syntax, RFC 3264 negotiation), sans-I/O.

We take PCMU or PCMA (whichever the offer lists first), telephone-event/8000 (RFC 4733) and CN (RFC 3389) when
offered, and reject every other m= line with port 0, in the offer's order, as RFC 3264 §6 requires.
Hold, three ways: a=sendonly from them (we answer recvonly), a=inactive, and RFC 2543's c=0.0.0.0.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

MAX_SDP_BYTES: Final = 8 * 1024
MAX_LINES: Final = 256
MAX_MEDIA_SECTIONS: Final = 16
DEFAULT_PTIME_MS: Final = 20
SUPPORTED_PTIMES_MS: Final = (10, 20, 30, 40, 50, 60)  # whole 10 ms steps; the RTP session sends any of these
TELEPHONE_EVENTS: Final = "0-16"  # DTMF 0-9 * # A-D and flash
RTP_PROFILES: Final = frozenset({"RTP/AVP", "RTP/AVPF"})  # plain RTP; SAVP needs SRTP, which we do not have
DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_REVERSED: Final = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_STATIC_PAYLOAD_TYPES: Final = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 13: ("CN", 8000)}
OFFERED_DTMF_PAYLOAD_TYPE: Final = 101  # what make_offer numbers telephone-event (the usual choice)
_OFFERED_PAYLOAD_TYPES: Final = ((0, "PCMU"), (8, "PCMA"), (OFFERED_DTMF_PAYLOAD_TYPE, "telephone-event"), (13, "CN"))
AUDIO_CODECS: Final = ("PCMU", "PCMA")


class SdpError(ValueError):
    """The SDP is malformed: the SIP layer answers 400."""


class NoUsableMedia(SdpError):
    """Well-formed, but no audio stream we can take: the SIP layer answers 488."""


@dataclass(frozen=True, slots=True)
class AudioParameters:
    codec: str  # "PCMU" | "PCMA"
    payload_type: int  # as the remote numbers it
    dtmf_payload_type: int | None  # telephone-event/8000, when both sides have it
    cn_payload_type: int | None  # comfort noise (RFC 3389), accepted
    ptime_ms: int  # packet time the remote asked for
    remote_rtp: tuple[str, int] | None  # None while on hold (c=0.0.0.0, port 0 or inactive)
    remote_rtcp: tuple[str, int] | None  # a=rtcp (RFC 3605) or RTP port + 1
    direction: str  # our direction after negotiation: sendrecv | sendonly | recvonly | inactive

    @property
    def silence_byte(self) -> int:
        return 0xFF if self.codec == "PCMU" else 0xD5


@dataclass(slots=True)
class _Media:
    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass(slots=True)
class _Description:
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[_Media] = field(default_factory=list)


def _lines(sdp: bytes) -> list[tuple[str, str]]:
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError(f"SDP of {len(sdp)} bytes, more than {MAX_SDP_BYTES}")
    try:
        text = sdp.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SdpError("SDP is not UTF-8") from error
    raw_lines = text.split("\n")
    if len(raw_lines) > MAX_LINES + 1:
        raise SdpError(f"SDP of more than {MAX_LINES} lines")
    lines = []
    for raw in raw_lines:
        line = raw.removesuffix("\r").rstrip(" \t")  # some stacks leave trailing blanks; harmless
        if not line:
            continue  # blank lines (a trailing CRLF CRLF) are common and harmless
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"not an SDP line: {line[:40]!r}")
        if any(ord(c) < 0x20 and c != "\t" for c in line):
            raise SdpError("control character in SDP")
        lines.append((line[0], line[2:]))
    if not lines or lines[0] != ("v", "0"):
        raise SdpError("SDP must start with v=0")
    return lines


def _parse(sdp: bytes) -> _Description:
    description = _Description()
    media: _Media | None = None
    seen_origin = False
    for kind, value in _lines(sdp):
        if kind == "m":
            if len(description.media) >= MAX_MEDIA_SECTIONS:
                raise SdpError("too many m= lines")
            media = _parse_media_line(value)
            description.media.append(media)
        elif kind == "c":
            address = _parse_connection(value)
            if media is None:
                description.connection = address
            else:
                media.connection = address
        elif kind == "a":
            name, _, rest = value.partition(":")
            attribute = (name.strip().lower(), rest.strip() if rest or ":" in value else None)
            (description.attributes if media is None else media.attributes).append(attribute)
        elif kind == "o":
            if len(value.split()) != 6:
                raise SdpError("o= needs six fields")
            seen_origin = True
    if not seen_origin:
        raise SdpError("SDP without o=")
    return description


def _is_number(text: str) -> bool:
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def _parse_media_line(value: str) -> _Media:
    fields = value.split()
    if len(fields) < 4:
        raise SdpError(f"m= line needs media, port, proto and formats: {value[:60]!r}")
    media, port_text, proto, *formats = fields
    port_text = port_text.split("/", 1)[0]  # a port count (m=audio 49170/2 ...) is for layered coding; ignore it
    if not _is_number(port_text) or int(port_text) > 65535:
        raise SdpError(f"bad m= port {port_text!r}")
    if proto.upper() in RTP_PROFILES:
        for fmt in formats:
            if not _is_number(fmt) or int(fmt) > 127:
                raise SdpError(f"bad RTP payload type {fmt!r}")
    return _Media(media.lower(), int(port_text), proto, formats)


def _parse_connection(value: str) -> str:
    fields = value.split()
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value[:60]!r}")
    address = fields[2].split("/", 1)[0]  # multicast TTL / count suffixes
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        # RFC 8866 allows a domain name, but nothing sends one for media, and the engine sends to IP literals.
        raise SdpError(f"c= address {address[:60]!r} is not an IP address") from None
    if (parsed.version == 4) != (fields[1] == "IP4"):
        raise SdpError("c= address family does not match the address")
    return str(parsed)


def _attribute(media: _Media, description: _Description, name: str) -> str | None:
    """The media-level attribute, else the session-level one (value or "" for a flag), else None."""
    for attributes in (media.attributes, description.attributes):
        for key, value in attributes:
            if key == name:
                return "" if value is None else value
    return None


def _direction(media: _Media, description: _Description) -> str:
    for attributes in (media.attributes, description.attributes):
        for key, value in attributes:
            if value is None and key in DIRECTIONS:
                return key
    return "sendrecv"


def _rtpmaps(media: _Media) -> dict[int, tuple[str, int, int]]:
    """Payload type -> (encoding name, clock rate, channels) from a=rtpmap, then the static table."""
    mapping: dict[int, tuple[str, int, int]] = {}
    for key, value in media.attributes:
        if key != "rtpmap" or not value:
            continue
        pt_text, _, encoding = value.partition(" ")
        parts = encoding.strip().split("/")
        if not _is_number(pt_text) or len(parts) < 2 or not _is_number(parts[1]):
            raise SdpError(f"bad a=rtpmap:{value[:60]!r}")
        channels = int(parts[2]) if len(parts) > 2 and _is_number(parts[2]) else 1
        mapping.setdefault(int(pt_text), (parts[0].strip(), int(parts[1]), channels))
    for payload_type, (name, rate) in _STATIC_PAYLOAD_TYPES.items():
        mapping.setdefault(payload_type, (name, rate, 1))
    return mapping


def _ptime(media: _Media, description: _Description) -> int:
    value = _attribute(media, description, "ptime")
    try:
        ptime = round(float(value)) if value else DEFAULT_PTIME_MS
    except (ValueError, OverflowError):
        return DEFAULT_PTIME_MS  # a=ptime is a hint (RFC 4566 §6): an odd one is ignored, not a reason to fail
    return ptime if ptime in SUPPORTED_PTIMES_MS else DEFAULT_PTIME_MS


@dataclass(frozen=True, slots=True)
class _Choice:
    media_index: int
    parameters: AudioParameters
    formats: tuple[int, ...]  # what our answer's m= line lists: codec, then telephone-event and CN when offered
    rtpmap: tuple[tuple[int, str], ...]


def _choose(description: _Description, *, answering: bool) -> _Choice:
    """The first audio stream with a codec we take; its parameters from our side (direction reversed)."""
    disabled: _Choice | None = None
    for index, media in enumerate(description.media):
        if media.media != "audio" or media.proto.upper() not in RTP_PROFILES:
            continue
        rtpmaps = _rtpmaps(media)
        codec_pt = None
        codec = ""
        dtmf_pt = None
        cn_pt = None
        for fmt in media.formats:
            payload_type = int(fmt)
            name, rate, channels = rtpmaps.get(payload_type, ("", 0, 0))
            name = name.upper()
            if rate != 8000 or channels != 1:
                continue
            if codec_pt is None and name in AUDIO_CODECS:
                codec_pt, codec = payload_type, name
            elif dtmf_pt is None and name == "TELEPHONE-EVENT":
                dtmf_pt = payload_type
            elif cn_pt is None and name == "CN":
                cn_pt = payload_type
        if codec_pt is None:
            continue
        connection = media.connection or description.connection
        if connection is None and media.port != 0:
            raise SdpError("audio stream without a c= line")
        their_direction = _direction(media, description)
        held_address = connection in ("0.0.0.0", "::")
        if held_address:
            # RFC 2543 hold: "do not send to me"; they may still send (music on hold).
            their_direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(their_direction, their_direction)
        if media.port == 0:
            their_direction = "inactive"
        direction = _REVERSED[their_direction]
        remote_rtp = None
        remote_rtcp = None
        if connection is not None and not held_address and media.port != 0 and direction != "inactive":
            remote_rtp = (connection, media.port)
            remote_rtcp = (connection, media.port + 1)
            rtcp = _attribute(media, description, "rtcp")
            if rtcp:
                remote_rtcp = _parse_rtcp_attribute(rtcp, connection)
        formats = tuple(pt for pt in (codec_pt, dtmf_pt, cn_pt) if pt is not None)
        names = {codec_pt: codec, dtmf_pt: "telephone-event", cn_pt: "CN"}
        choice = _Choice(
            media_index=index,
            parameters=AudioParameters(
                codec=codec,
                payload_type=codec_pt,
                dtmf_payload_type=dtmf_pt,
                cn_payload_type=cn_pt,
                ptime_ms=_ptime(media, description),
                remote_rtp=remote_rtp,
                remote_rtcp=remote_rtcp,
                direction=direction,
            ),
            formats=formats,
            rtpmap=tuple((pt, names[pt]) for pt in formats),
        )
        if media.port != 0:
            return choice
        if disabled is None:
            disabled = choice  # a disabled stream: usable only if nothing else is
        if not answering:
            break
    if disabled is not None:
        return disabled
    raise NoUsableMedia("no audio stream with PCMU or PCMA at 8000 Hz")


def _parse_rtcp_attribute(value: str, connection: str) -> tuple[str, int]:
    fields = value.split()
    if not _is_number(fields[0]) or not 0 < int(fields[0]) <= 65535:
        raise SdpError(f"bad a=rtcp:{value[:60]!r}")
    if len(fields) == 4:
        return (_parse_connection(" ".join(fields[1:])), int(fields[0]))
    return (connection, int(fields[0]))


def _address_type(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def _session_header(local_host: str, session_id: int, session_version: int) -> list[str]:
    address_type = _address_type(local_host)
    return [
        "v=0",
        f"o=dialbridge {session_id} {session_version} IN {address_type} {local_host}",
        "s=dialbridge",
        f"c=IN {address_type} {local_host}",
        "t=0 0",
    ]


def _audio_lines(
    port: int, proto: str, rtpmap: tuple[tuple[int, str], ...], ptime_ms: int, direction: str
) -> list[str]:
    lines = [f"m=audio {port} {proto} {' '.join(str(pt) for pt, _ in rtpmap)}"]
    for payload_type, name in rtpmap:
        lines.append(f"a=rtpmap:{payload_type} {name}/8000")
        if name == "telephone-event":
            lines.append(f"a=fmtp:{payload_type} {TELEPHONE_EVENTS}")
    lines.append(f"a=ptime:{ptime_ms}")
    lines.append(f"a={direction}")
    return lines


def _check_local(local_host: str, local_port: int) -> None:
    if not 0 < local_port <= 65535 or not local_host or any(c.isspace() for c in local_host):
        raise ValueError(f"bad local media address {local_host!r}:{local_port}")


def answer_offer(
    offer: bytes, *, local_host: str, local_port: int, session_id: int, session_version: int, initial: bool = False
) -> tuple[AudioParameters, bytes]:
    """Our answer to an offer (INVITE or re-INVITE): the negotiated parameters and the answer SDP.

    `initial`: the offer that starts the session. There a stream on port 0 is offered but must not be used (RFC 3264
    §5.1), so an offer whose only audio is on port 0 has none: NoUsableMedia. In a re-offer port 0 takes the stream
    down (§8.2), which is answered with port 0."""
    _check_local(local_host, local_port)
    description = _parse(offer)
    if not description.media:
        raise SdpError("SDP offer without m= lines")
    choice = _choose(description, answering=True)
    if initial and description.media[choice.media_index].port == 0:
        raise NoUsableMedia("the only audio stream offered is disabled (port 0)")
    parameters = choice.parameters
    lines = _session_header(local_host, session_id, session_version)
    for index, media in enumerate(description.media):
        if index == choice.media_index:
            port = local_port if media.port != 0 else 0
            lines += _audio_lines(port, media.proto, choice.rtpmap, parameters.ptime_ms, parameters.direction)
        else:
            # RFC 3264 §6: every offered stream gets an m= line in the answer, in order; port 0 rejects it.
            first_format = media.formats[0] if media.formats else "0"
            lines.append(f"m={media.media} 0 {media.proto} {first_format}")
    return parameters, ("\r\n".join(lines) + "\r\n").encode()


def make_offer(*, local_host: str, local_port: int, session_id: int, session_version: int) -> bytes:
    """Our offer (in the 200 OK to an INVITE without SDP, or an outbound INVITE): PCMU, PCMA, events, CN."""
    _check_local(local_host, local_port)
    lines = _session_header(local_host, session_id, session_version)
    lines += _audio_lines(local_port, "RTP/AVP", _OFFERED_PAYLOAD_TYPES, DEFAULT_PTIME_MS, "sendrecv")
    return ("\r\n".join(lines) + "\r\n").encode()


def accept_answer(answer: bytes) -> AudioParameters:
    """The parameters from the answer to our offer (make_offer)."""
    description = _parse(answer)
    if not description.media:
        raise SdpError("SDP answer without m= lines")
    audio = description.media[0]
    if audio.media != "audio" or audio.port == 0:
        raise NoUsableMedia("the answer rejected our audio stream")
    # RFC 3264 §6.1: the answer SHOULD keep our numbers, but what it says is how the far end numbers them.
    return _choose(description, answering=False).parameters
