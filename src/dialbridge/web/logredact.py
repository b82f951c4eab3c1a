"""Secrets out of the log: uvicorn logs each WebSocket's path with its query string (`"WebSocket /rt/...?..."
[accepted]`) even with the access log off. dialbridge's own pages never put a token in a URL; this filter makes
sure that a client which does (an old page, a hand-written script) does not get its token written to the log."""

from __future__ import annotations

import logging
import re
from typing import Final

_SECRET_PARAMETER: Final = re.compile(r"((?:^|[?&;])(?:token|access_token|jwt)=)[^&\s\"']*", re.IGNORECASE)
REDACTED: Final = "[redacted]"
LOGGERS: Final = ("uvicorn.error", "uvicorn.access", "uvicorn")


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


def install() -> None:
    """On uvicorn's loggers, once per process (every app factory call may ask)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactSecrets) for existing in logger.filters):
            logger.addFilter(RedactSecrets())
