"""Text from the network made safe to put in a log line.

A SIP caller writes From, To and Call-ID (an HTTP client, its path): logged raw, a CR or LF in such text forges log
lines and an ESC sequence drives the terminal of whoever reads the log. Every value taken from a message goes
through `escaped_for_log` before it is logged.
"""

from __future__ import annotations

from typing import Final

LOGGED_TEXT_LIMIT: Final = 200  # characters of one value; the rest is cut so one header cannot flood the log


def escaped_for_log(value: object, limit: int = LOGGED_TEXT_LIMIT) -> str:
    """`value` as text, cut to `limit` characters, every non-printable character as its Python escape (\\x1b, \\r)."""
    text = str(value)
    cut = text[:limit]
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return escaped if len(text) <= limit else f"{escaped}... ({len(text) - limit} more characters)"
