"""Placeholder signalling hub; replaced by the real one (sans-I/O room state + WebSocket shell)."""

from __future__ import annotations


class SignallingHub:
    async def force_disconnect(self, session_id: str, connection_id: str) -> bool:
        return False
