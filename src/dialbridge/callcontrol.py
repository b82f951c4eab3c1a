"""`CallControl`: what the app does to a live phone call through a Voice REST API — mute, hang up, talk into it.

One protocol, two implementations with the same requests (`PUT /v1/calls/{uuid}` `{"action": ...}`,
`PUT /v1/calls/{uuid}/talk`): Vonage's Voice API through the official SDK (`platforms/vonage.py` `VonageVoice`), and
the embedded voice engine's Vonage-shaped call-control API (`EngineVoiceApi`, signed with the engine's
application key, through the same `LocalApiClient` the browser phone's routes use).
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from dialbridge.local_api import LocalApiClient
from dialbridge.platforms.base import CallGone, PlatformError


class CallControl(Protocol):
    name: str

    async def mute(self, call_uuid: str, muted: bool) -> None: ...

    async def hang_up(self, call_uuid: str) -> None: ...

    async def talk(self, call_uuid: str, text: str) -> None: ...


class EngineVoiceApi:
    """The embedded voice engine's call-control API over HTTPS on loopback."""

    name = "embedded voice engine"

    def __init__(self, engine: LocalApiClient) -> None:
        self._engine = engine

    async def mute(self, call_uuid: str, muted: bool) -> None:
        action = "mute" if muted else "unmute"
        await self._put(f"/v1/calls/{call_uuid}", {"action": action}, f"{action} of the call")

    async def hang_up(self, call_uuid: str) -> None:
        await self._put(f"/v1/calls/{call_uuid}", {"action": "hangup"}, "hang-up of the call")

    async def talk(self, call_uuid: str, text: str) -> None:
        await self._put(f"/v1/calls/{call_uuid}/talk", {"text": text}, "talk into the call")

    async def _put(self, path: str, body: dict[str, Any], what: str) -> None:
        try:
            response = await self._engine.request("PUT", path, body)
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
