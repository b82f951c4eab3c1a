"""What the engine sends, read back as a peer would read it."""

from __future__ import annotations

from dialbridge.sip.message import Headers, SipMessage, SipParseError, SipResponse, Via, parse_message

# The answers to a malformed request (RFC 3261 8.2.6.2 has them copy its From, To, Call-ID and CSeq as they came).
_MALFORMED_REQUEST_ANSWERS = (400, 416, 505, 513)


def parse_sent(data: bytes) -> SipMessage:
    """Parse a message the engine sent. Everything it sends parses, except an answer to a malformed request, which
    carries that request's broken headers back (RFC 4475 3.1.2 asks for the answer all the same): of that one, the
    status line and the top Via, which takes it back, must be sound (a Via below it is the request's own, copied
    as it came, RFC 3261 8.2.6.2, however broken), and the headers are returned as they are."""
    try:
        return parse_message(data)
    except SipParseError:
        lines = data.split(b"\r\n\r\n", 1)[0].decode("utf-8").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "SIP/2.0" and int(status) in _MALFORMED_REQUEST_ANSWERS, data
        headers = Headers([(name, value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])])
        vias = headers.get_all("Via")
        assert vias and Via.parse(vias[0]), data
        return SipResponse(status=int(status), reason=reason, headers=headers)
