"""`CallControl`: what the app does to a live phone call through a Voice REST API — mute, hang up, talk into it.

One protocol, two implementations with the same requests (`PUT /v1/calls/{uuid}` `{"action": ...}`,
`PUT /v1/calls/{uuid}/talk`): Vonage's Voice API through the official SDK (`platforms/vonage.py` `VonageVoice`), and
the embedded voice engine's Vonage-shaped call-control API (`EngineCallControl`, signed with the engine's
application key, as `web/voice.py` does for the browser phone).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from dialbridge.config import Settings
from dialbridge.credentials import VoiceCredentials
from dialbridge.platforms.base import CallGone, PlatformError


class CallControl(Protocol):
    name: str

    async def mute(self, call_uuid: str, muted: bool) -> None: ...

    async def hang_up(self, call_uuid: str) -> None: ...

    async def talk(self, call_uuid: str, text: str) -> None: ...


class EngineCallControl:
    """The embedded voice engine's call-control API over HTTPS on loopback."""

    name = "embedded voice engine"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._credentials: VoiceCredentials | None = None
        self._http: httpx.AsyncClient | None = None

    async def mute(self, call_uuid: str, muted: bool) -> None:
        action = "mute" if muted else "unmute"
        await self._put(f"/v1/calls/{call_uuid}", {"action": action}, f"{action} of the call")

    async def hang_up(self, call_uuid: str) -> None:
        await self._put(f"/v1/calls/{call_uuid}", {"action": "hangup"}, "hang-up of the call")

    async def talk(self, call_uuid: str, text: str) -> None:
        await self._put(f"/v1/calls/{call_uuid}/talk", {"text": text}, "talk into the call")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _put(self, path: str, body: dict[str, Any], what: str) -> None:
        if self._http is None or self._credentials is None:
            self._credentials = VoiceCredentials.load_or_create(Path(self._settings.voice_dir))
            self._http = httpx.AsyncClient(
                base_url=self._settings.voice_api_url,
                verify=str(self._credentials.ca_bundle_path),
                timeout=httpx.Timeout(5.0, connect=1.0),
            )
        headers = {"authorization": f"Bearer {self._credentials.app_token(time.time())}"}
        try:
            response = await self._http.put(path, json=body, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise PlatformError(
                f"the {what} at the voice engine",
                f"not reachable ({type(exc).__name__}); is `dialbridge voice` running (`dialbridge serve` starts it)?",
            ) from exc
        if response.status_code == 404:
            raise CallGone(f"the {what}", "the voice engine has no such live call")
        if response.status_code >= 300:
            raise PlatformError(
                f"the {what} at the voice engine", f"HTTP {response.status_code}: {response.text[:200]}"
            )
