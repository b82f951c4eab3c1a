"""The engine's webhook client: calls an application's answer, event and eventUrl webhooks as Vonage does — the
same fields, and signed the same way (HS256 JWT with `payload_hash`) when a signature secret is configured.

A thin asyncio shell over one shared `httpx.AsyncClient`:
- GET sends the fields as a query string built once, signed, and sent byte for byte as signed: the app's
  verifier (dialbridge/web/webhooks.py) hashes the raw query string it receives. POST sends a JSON body,
  signed the same way.
- One retry on a connection failure, a timeout, 429 or 5xx, and — for requests that expect an NCCO — an
  invalid NCCO. Nothing is retried after a 4xx other than 429.
- Never raises on network or HTTP failures: every call returns a `WebhookResult` (`ok`, `status`, `ncco`,
  `error`, `elapsed_s` over all attempts), and reports it to `stats` and to the optional `observer` callback
  (for the engine's /metrics).
- Answer bodies must hold an NCCO; an eventUrl answer may also be empty (2xx, no body: "carry on", ncco None).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson

from dialbridge.engine.calls.ncco import Action, NccoError, parse_ncco
from dialbridge.engine.calls.payloads import WebhookResult
from dialbridge.webhook_signing import WebhookSignatures

MAX_RESPONSE_BYTES = 256 * 1024  # an NCCO is a few kB; a larger answer is refused rather than buffered
MAX_STREAM_BYTES = 32 * 1024 * 1024  # a stream action's audio file: minutes of MP3 or WAV, not a whole album
USER_AGENT = "dialbridge-voice-engine"
_QUERY_SAFE = "!$&'()*+,/:;=?@~%-._"  # what may stay as is in a query; anything else is percent-encoded
RETRIED_STATUSES = frozenset({429}) | frozenset(range(500, 600))

Observer = Callable[[str, WebhookResult], None]  # (purpose: "answer" | "input" | "notify" | "event", result)


@dataclass
class WebhookStats:
    """Running totals per purpose ("answer", "event", or the caller's label), for /metrics."""

    requests: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    latency_sum_s: dict[str, float] = field(default_factory=dict)
    latency_max_s: dict[str, float] = field(default_factory=dict)

    def record(self, purpose: str, result: WebhookResult, attempts: int) -> None:
        self.requests[purpose] = self.requests.get(purpose, 0) + 1
        if not result.ok:
            self.failures[purpose] = self.failures.get(purpose, 0) + 1
        if attempts > 1:
            self.retries[purpose] = self.retries.get(purpose, 0) + attempts - 1
        self.latency_sum_s[purpose] = self.latency_sum_s.get(purpose, 0.0) + result.elapsed_s
        self.latency_max_s[purpose] = max(self.latency_max_s.get(purpose, 0.0), result.elapsed_s)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt's outcome; `retry` says whether another attempt may do better."""

    status: int | None
    ncco: tuple[Action, ...] | None
    error: str | None
    retry: bool

    @property
    def ok(self) -> bool:
        return self.error is None


class WebhookClient:
    def __init__(
        self,
        *,
        signature_secret: str | None = None,
        connect_timeout_s: float = 1.0,
        read_timeout_s: float = 5.0,
        max_connections: int = 32,
        retry_delay_s: float = 0.05,
        observer: Observer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._signatures = WebhookSignatures(signature_secret) if signature_secret else None
        self._retry_delay_s = retry_delay_s
        self._attempt_limit_s = connect_timeout_s + 2 * read_timeout_s
        self._observer = observer
        self.stats = WebhookStats()
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=1.0)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            timeout=timeout, limits=limits, transport=transport, headers={"user-agent": USER_AGENT}
        )

    async def answer(self, url: str, query: Mapping[str, str]) -> WebhookResult:
        """GET the answer webhook with `query`; the result carries the NCCO it answered."""
        base, raw_query = _get_target(url, query_string(query))
        return await self._request("answer", "GET", base, raw_query, expect_ncco=True, empty_ok=False)

    async def post_json(
        self, url: str, payload: Mapping[str, Any], *, expect_ncco: bool, purpose: str = "input"
    ) -> WebhookResult:
        """POST `payload` as JSON (an input's or notify's eventUrl expects an NCCO, or an empty body)."""
        return await self._request(purpose, "POST", url, orjson.dumps(payload), expect_ncco=expect_ncco, empty_ok=True)

    async def send(
        self, url: str, method: str, payload: Mapping[str, Any], *, expect_ncco: bool, purpose: str = "input"
    ) -> WebhookResult:
        """An action's eventUrl with its eventMethod: POST as JSON, or GET with the fields as a query (nested
        objects JSON-encoded, as a query cannot nest)."""
        if method.upper() == "GET":
            fields = {key: _query_value(value) for key, value in payload.items()}
            base, raw_query = _get_target(url, query_string(fields))
            return await self._request(purpose, "GET", base, raw_query, expect_ncco=expect_ncco, empty_ok=True)
        return await self.post_json(url, payload, expect_ncco=expect_ncco, purpose=purpose)

    async def event(self, url: str, payload: Mapping[str, Any]) -> WebhookResult:
        """POST a call event. Whatever the answer holds is ignored: the embedded engine takes no NCCO from events."""
        return await self._request("event", "POST", url, orjson.dumps(payload), expect_ncco=False, empty_ok=True)

    async def fetch_bytes(self, url: str, *, max_bytes: int = MAX_STREAM_BYTES) -> bytes:
        """The body of `url` (a `stream` action's audio file), http(s) only, within the client's timeouts and
        `max_bytes`; ValueError naming what went wrong otherwise."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"stream URL {url!r} must be http or https")
        try:
            async with asyncio.timeout(self._attempt_limit_s), self._http.stream("GET", url) as response:
                if not 200 <= response.status_code < 300:
                    raise ValueError(f"fetching {url} answered HTTP {response.status_code}")
                body = await _read_capped(response, max_bytes)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise ValueError(f"cannot fetch {url}: {exc or type(exc).__name__}") from None
        if body is None:
            raise ValueError(f"{url} is larger than {max_bytes} bytes")
        return body

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, purpose: str, method: str, url: str, content: bytes, *, expect_ncco: bool, empty_ok: bool
    ) -> WebhookResult:
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            attempt = await self._attempt(method, url, content, expect_ncco=expect_ncco, empty_ok=empty_ok)
            if attempt.ok or not attempt.retry or attempts == 2:
                break
            await asyncio.sleep(self._retry_delay_s)
        error = attempt.error if attempts == 1 or attempt.ok else f"{attempt.error} (after a retry)"
        result = WebhookResult(
            attempt.ok, attempt.status, attempt.ncco, error, time.perf_counter() - started, retryable=attempt.retry
        )
        self.stats.record(purpose, result, attempts)
        if self._observer is not None:
            self._observer(purpose, result)
        return result

    async def _attempt(self, method: str, url: str, content: bytes, *, expect_ncco: bool, empty_ok: bool) -> _Attempt:
        headers = {"accept": "application/json"}
        if self._signatures is not None:
            # For a GET the payload hashed is the raw query string, exactly as the app's verifier reads it.
            headers["authorization"] = f"Bearer {self._signatures.sign(content)}"
        try:
            if method == "GET":
                target = httpx.URL(url).copy_with(query=content) if content else httpx.URL(url)
                request = self._http.build_request("GET", target, headers=headers)
            else:
                headers["content-type"] = "application/json"
                request = self._http.build_request(method, url, content=content, headers=headers)
            async with asyncio.timeout(self._attempt_limit_s):  # the read timeout is per chunk; a drip must end too
                response = await self._http.send(request, stream=True)
                try:
                    body = await _read_capped(response)
                finally:
                    await response.aclose()
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Attempt(None, None, f"invalid URL {url!r}: {exc}", retry=False)
        except (httpx.TimeoutException, TimeoutError) as exc:
            return _Attempt(None, None, f"timed out ({type(exc).__name__})", retry=True)
        except httpx.TransportError as exc:
            return _Attempt(None, None, f"connection failed: {exc or type(exc).__name__}", retry=True)
        except (httpx.HTTPError, ValueError) as exc:
            return _Attempt(None, None, f"request failed: {exc}", retry=False)
        status = response.status_code
        if body is None:
            return _Attempt(status, None, f"the answer is larger than {MAX_RESPONSE_BYTES} bytes", retry=False)
        if not 200 <= status < 300:
            return _Attempt(status, None, f"HTTP {status}", retry=status in RETRIED_STATUSES)
        if not expect_ncco:
            return _Attempt(status, None, None, retry=False)
        if not body.strip():
            if empty_ok:
                return _Attempt(status, None, None, retry=False)
            return _Attempt(status, None, "the answer held no NCCO", retry=True)
        try:
            return _Attempt(status, parse_ncco(body), None, retry=False)
        except NccoError as exc:
            return _Attempt(status, None, f"invalid NCCO: {exc}", retry=True)


def query_string(fields: Mapping[str, str]) -> bytes:
    """The query string of `fields`, built once: these bytes are both signed and sent."""
    return urlencode(list(fields.items())).encode("ascii")


def _query_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _get_target(url: str, query: bytes) -> tuple[str, bytes]:
    """`url` without its query, and the whole raw query to send (any query `url` already has, then `query`):
    the signature covers exactly these bytes, as the receiver hashes the query string it gets."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, query  # httpx refuses it in turn, inside the attempt, where failures become results
    existing = quote(parts.query, safe=_QUERY_SAFE).encode("ascii")  # as sent: httpx must not re-encode it
    raw = b"&".join(piece for piece in (existing, query) if piece)
    return parts._replace(query="").geturl(), raw


async def _read_capped(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["MAX_RESPONSE_BYTES", "Observer", "WebhookClient", "WebhookResult", "WebhookStats", "query_string"]
