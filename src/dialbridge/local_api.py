"""`LocalApiClient` and `LocalApiServer`: HTTPS to and from the APIs of this machine's own processes — the voice
engine's (Vonage's Voice REST shape) and the gateway's (Vonage Video's SIP dial) — signed as the `vonage` SDK signs
requests to Vonage.

Both serve with the local application's key and self-made certificate (`credentials.py`, kept in `VOICE_DIR`), so one
client serves both: the credentials are loaded (or made) on first use, the requests carry a fresh application JWT, and
the certificate is the only one trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from dialbridge.credentials import VoiceCredentials

CONNECT_S = 1.0
PROBE_S = 1.0  # /healthz and /metrics: a monitor waits on them


class LocalApiClient:
    def __init__(self, url: str, credentials_dir: Path, *, read_s: float = 5.0) -> None:
        self.url = url
        self.read_s = read_s
        self._credentials_dir = credentials_dir
        self._credentials: VoiceCredentials | None = None
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> tuple[httpx.AsyncClient, VoiceCredentials]:
        if self._http is None or self._credentials is None:
            self._credentials = VoiceCredentials.load_or_create(self._credentials_dir)
            self._http = httpx.AsyncClient(
                base_url=self.url,
                verify=ssl.create_default_context(cafile=str(self._credentials.ca_bundle_path)),
                timeout=httpx.Timeout(self.read_s, connect=CONNECT_S),
            )
        return self._http, self._credentials

    @property
    def application_id(self) -> str:
        return self._client()[1].application_id

    async def request(self, method: str, path: str, body: Any = None, read_s: float | None = None) -> httpx.Response:
        """One signed request; raises httpx.HTTPError or OSError when the process cannot be reached."""
        http, credentials = self._client()
        headers = {"authorization": f"Bearer {credentials.app_token(time.time())}"}
        timeout = httpx.Timeout(read_s or self.read_s, connect=CONNECT_S)
        return await http.request(method, path, json=body, headers=headers, timeout=timeout)

    async def health(self) -> dict[str, Any]:
        """The process's own /healthz, or why it could not be read (`status` is then not "ok")."""
        try:
            response = await self.request("GET", "/healthz", read_s=PROBE_S)
        except (httpx.HTTPError, OSError) as exc:
            return {"status": "unreachable", "error": type(exc).__name__, "url": self.url}
        try:
            body = response.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {"status": "error", "http_status": response.status_code}

    async def metrics(self, up_metric: str, up_help: str) -> bytes:
        """The process's Prometheus text, after `up_metric`: whether it could be scraped."""
        try:
            response: httpx.Response | None = await self.request("GET", "/metrics", read_s=PROBE_S)
        except (httpx.HTTPError, OSError):
            response = None
        up = response is not None and response.status_code == 200
        head = f"# HELP {up_metric} {up_help}\n# TYPE {up_metric} gauge\n{up_metric} {1 if up else 0}\n".encode()
        return head + (response.content if up and response is not None else b"")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class LocalApiServer:
    """Serves one such API (an ASGI app) over HTTPS with the local application's certificate, as a task on the
    caller's loop. The process owns SIGTERM (it hangs its calls up first): uvicorn's signal handling is left out."""

    def __init__(self, app: ASGIApp, credentials: VoiceCredentials, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(credentials.cert_path),
            ssl_keyfile=str(credentials.key_path),
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        self._uvicorn = _ServerWithoutSignals(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns once it listens; raises what stopped it from starting (its port taken, say)."""
        self._task = asyncio.ensure_future(self._uvicorn.serve())
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._uvicorn.should_exit = True
        self._uvicorn.force_exit = True  # open keep-alive connections must not hold the process's shutdown
        if self._task is not None:
            await asyncio.wait([self._task], timeout=3)


class _ServerWithoutSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
