"""Vonage Video through the official SDK (being built)."""

from __future__ import annotations

from dialbridge.config import Settings
from dialbridge.platforms.base import NotSupported, VideoPlatform


def make_vonage_platform(settings: Settings) -> VideoPlatform:
    raise NotSupported("the Vonage backend is not wired up yet")
