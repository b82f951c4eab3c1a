"""Which HTTP protocol the server runs: dialbridge's (server/http.py) when uvicorn's internals are as tested, else
uvicorn's own, with a warning.

server/http.py subclasses uvicorn's httptools protocol and relies on names that are not uvicorn's API: its
methods, the attributes it keeps per connection and per request, `STATUS_LINE`. pyproject.toml pins the uvicorn
releases it was tested with; should another be installed anyway (a pin overridden, a distribution's package),
a renamed internal would otherwise surface as AttributeErrors on live requests. Instead the names are checked
once at start-up and, if any is gone, the server runs uvicorn's own protocol: everything works, without the
webhook fast path and without the request bounds that only dialbridge's protocol enforces.
"""

from __future__ import annotations

import logging
from typing import Any, Final

log = logging.getLogger("dialbridge")

TESTED_UVICORN: Final = ">=0.55,<0.56"  # keep in step with pyproject.toml

# What server/http.py uses of uvicorn's protocol, by where uvicorn defines it.
_PROTOCOL_METHODS: Final = (
    "connection_made",
    "connection_lost",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "handle_websocket_upgrade",
    "shutdown",
    "_should_upgrade",
    "_unsupported_upgrade_warning",
    "_unset_keepalive_if_required",
)
_PROTOCOL_ATTRIBUTES: Final = (  # set in HttpToolsProtocol.__init__
    "app",
    "loop",
    "parser",
    "pipeline",
    "cycle",
    "flow",
    "server_state",
    "connections",
    "tasks",
    "headers",
    "expect_100_continue",
    "limit_concurrency",
    "root_path",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "transport",
    "client",
)
_CYCLE_ATTRIBUTES: Final = (  # set in RequestResponseCycle.__init__, read or set by server/http.py
    "body",
    "more_body",
    "keep_alive",
    "disconnected",
    "message_event",
    "response_started",
    "response_complete",
)


def missing_internals(module: Any) -> list[str]:
    """The names server/http.py needs that `module` (uvicorn's httptools protocol module) lacks."""
    protocol = getattr(module, "HttpToolsProtocol", None)
    cycle = getattr(module, "RequestResponseCycle", None)
    if protocol is None or cycle is None:
        return [name for name in ("HttpToolsProtocol", "RequestResponseCycle") if getattr(module, name, None) is None]
    missing = [] if isinstance(getattr(module, "STATUS_LINE", None), dict) else ["STATUS_LINE"]
    missing += [
        f"HttpToolsProtocol.{name}" for name in _PROTOCOL_METHODS if not callable(getattr(protocol, name, None))
    ]
    missing += [f"HttpToolsProtocol().{name}" for name in _PROTOCOL_ATTRIBUTES if name not in _assigned(protocol)]
    missing += [f"RequestResponseCycle().{name}" for name in _CYCLE_ATTRIBUTES if name not in _assigned(cycle)]
    if "url" not in _assigned(protocol, "on_message_begin"):
        missing.append("HttpToolsProtocol().url")
    flow = getattr(module, "FlowControl", None)
    if flow is None or "read_paused" not in _assigned(flow):
        missing.append("FlowControl().read_paused")
    return missing


def _assigned(cls: type, method: str = "__init__") -> set[str]:
    """The attribute names a method's code mentions (where uvicorn sets per-connection and per-request state)."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    return set(code.co_names) if code is not None else set()


def http_protocol() -> type[Any] | str:
    """The protocol class (or uvicorn's name for one) to hand to uvicorn."""
    import uvicorn

    try:
        from uvicorn.protocols.http import httptools_impl

        missing = missing_internals(httptools_impl)
    except ImportError as exc:
        missing = [f"uvicorn.protocols.http.httptools_impl ({exc})"]
    if not missing:
        try:
            from dialbridge.server.http import DialbridgeHttpProtocol
        except (ImportError, AttributeError) as exc:
            missing = [str(exc)]
        else:
            return DialbridgeHttpProtocol
    log.warning(
        "uvicorn %s is not a release dialbridge's HTTP protocol was tested with (%s; changed: %s): serving with "
        "uvicorn's own protocol instead, without the webhook fast path and without dialbridge's limits on request "
        "heads, slow requests and connections. To restore them: pip install 'uvicorn[standard]%s'",
        uvicorn.__version__,
        TESTED_UVICORN,
        ", ".join(missing),
        TESTED_UVICORN,
    )
    return "httptools"
