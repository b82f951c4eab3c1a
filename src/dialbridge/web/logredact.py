"""Filters on uvicorn's loggers: secrets out of the log, and routine WebSocket churn out of the INFO level.

Secrets: uvicorn logs each WebSocket's path with its query string (`"WebSocket /rt/...?..." [accepted]`) even with
the access log off. dialbridge's own pages never put a token in a URL; this filter makes sure that a client which
does (an old page, a hand-written script) does not get its token written to the log.

Churn: every signalling socket that opens and closes wrote three INFO lines (uvicorn's `[accepted]`, and the
websockets library's `connection open` and `connection closed`, both through `uvicorn.error`): a room of ten
reloading pages buried everything else. They go to DEBUG; refused handshakes (`"WebSocket …" 403`) stay at INFO,
and the signalling endpoint logs its own refusals (a bad token, a full room) at INFO.
"""

from __future__ import annotations

import logging
import re
from typing import Final

_SECRET_PARAMETER: Final = re.compile(r"((?:^|[?&;])(?:token|access_token|jwt)=)[^&\s\"']*", re.IGNORECASE)
REDACTED: Final = "[redacted]"
LOGGERS: Final = ("uvicorn.error", "uvicorn.access", "uvicorn")
CHURN_LOGGER: Final = "uvicorn.error"
# The messages (format strings, before their arguments) of a socket's routine open and close.
ROUTINE_CHURN: Final = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})


def redact(text: str) -> str:
    return _SECRET_PARAMETER.sub(lambda match: match.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message arguments (and message) so that no `token=` query value survives."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) and "=" in arg else arg for arg in record.args)
        return True


class QuietChurn(logging.Filter):
    """Logs a WebSocket's routine open and close at DEBUG rather than INFO (dropped unless DEBUG is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in ROUTINE_CHURN:
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def install() -> None:
    """On uvicorn's loggers, once per process (every app factory call may ask)."""
    for name in LOGGERS:
        _add_once(logging.getLogger(name), RedactSecrets)
    _add_once(logging.getLogger(CHURN_LOGGER), QuietChurn)


def _add_once(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(existing, kind) for existing in logger.filters):
        logger.addFilter(kind())
