"""`Services`: the objects one running dialbridge is made of, built once from `Settings`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from dialbridge.callcontrol import CallControl, EngineVoiceApi
from dialbridge.calls import CallDesk
from dialbridge.conference.callflow import CallerQuota, CallFlow
from dialbridge.conference.pins import PinPolicy
from dialbridge.config import Backend, Settings
from dialbridge.dialout import DialOuts
from dialbridge.engine.rooms.hub import SignallingHub
from dialbridge.local_api import LocalApiClient
from dialbridge.platforms.base import VideoPlatform
from dialbridge.platforms.embedded import GATEWAY_DIAL_S, EmbeddedVideo
from dialbridge.rate import SourceRate
from dialbridge.rooms import RoomDirectory
from dialbridge.roster import Roster
from dialbridge.store.database import create_db_engine, migrate
from dialbridge.store.dial_outs import DialOutStore
from dialbridge.store.store import Store
from dialbridge.tokens import ParticipantTokens, PhoneCallTokens, new_secret, participant_id
from dialbridge.web.metrics import Metrics
from dialbridge.webhook_signing import WebhookSignatures

log = logging.getLogger(__name__)

INPUT_PATH = "/webhooks/input"
KEYPAD_PATH = "/webhooks/keypad"


#: Browser-phone calls one address may place a minute (per web worker): a person redials a few times; a script
#: that wants the gateway's peers gets no further. The gateway's own caps bound them all together.
PHONE_CALLS_PER_SOURCE_PER_MINUTE = 6


@dataclass
class Services:
    settings: Settings
    clock: Callable[[], float]
    store: Store
    platform: VideoPlatform
    hub: SignallingHub
    rooms: RoomDirectory
    calls: CallDesk
    dial_outs: DialOuts
    tokens: ParticipantTokens
    phone_tokens: PhoneCallTokens
    phone_call_rate: SourceRate[str]
    signatures: WebhookSignatures | None
    metrics: Metrics
    roster: Roster
    voice_engine: LocalApiClient | None = None  # embedded backend: the voice engine's API


def build_services(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    platform: VideoPlatform | None = None,
) -> Services:
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    store = Store(engine)
    hub = SignallingHub()
    embedded = settings.backend is Backend.EMBEDDED
    # The voice engine's API: the browser phone, health, metrics and call control all go through this one client.
    voice_engine = LocalApiClient(settings.voice_api_url, Path(settings.voice_dir)) if embedded else None
    if platform is None:
        platform = make_platform(settings, hub)
    voice = EngineVoiceApi(voice_engine) if voice_engine is not None else make_vonage_call_control(settings)
    secret = (
        settings.token_secret.get_secret_value()
        if settings.token_secret
        else store.server_key("participant_token_secret", new_secret, clock())
    )
    signature_secret = settings.signature_secret
    signatures = (  # an empty secret: ValueError (Settings.problems refuses it first)
        WebhookSignatures(signature_secret.get_secret_value()) if signature_secret is not None else None
    )
    flow = CallFlow(
        input_url=settings.base_url + INPUT_PATH,
        pin_max_digits=settings.pin_length,
        input_timeout_s=settings.pin_input_timeout_s,
        attempts_per_call=settings.pin_attempts_per_call,
        # Keypad commands need a Voice API to act through (the legacy API key + secret reach none).
        keypad_url=settings.base_url + KEYPAD_PATH if voice is not None else None,
    )
    quota = CallerQuota(max_failures=settings.caller_max_failures, window_s=settings.caller_failure_window_s)
    pins = PinPolicy(min_length=settings.pin_length, max_fill=settings.pin_max_fill)
    dial_out_store = DialOutStore(engine)
    tokens = ParticipantTokens(secret, settings.token_ttl_s)
    if isinstance(platform, EmbeddedVideo):
        # The gateway joins a room as the SIP participant with a token of this server, as any participant does.
        platform.issue_token = lambda session_id, room_id, data: tokens.issue(
            session_id=session_id, room_id=room_id, now=clock(), data=data
        )
    calls = CallDesk(store, flow, quota, clock, dial_out_store)
    roster = Roster(store, platform, dial_out_store, voice, hub if isinstance(platform, EmbeddedVideo) else None, clock)
    calls.listener = roster
    return Services(
        settings=settings,
        clock=clock,
        store=store,
        platform=platform,
        hub=hub,
        rooms=RoomDirectory(store, platform, pins, clock),
        calls=calls,
        dial_outs=DialOuts(dial_out_store, platform, settings, clock),
        tokens=tokens,
        phone_tokens=PhoneCallTokens(secret),
        phone_call_rate=SourceRate(PHONE_CALLS_PER_SOURCE_PER_MINUTE, 60.0),
        signatures=signatures,
        metrics=Metrics(store, Path(settings.metrics_dir) if settings.metrics_dir else None),
        roster=roster,
        voice_engine=voice_engine,
    )


def make_platform(settings: Settings, hub: SignallingHub) -> VideoPlatform:
    if settings.backend is Backend.VONAGE:
        return make_vonage_platform(settings)
    gateway = LocalApiClient(settings.gateway_api_url, Path(settings.voice_dir), read_s=GATEWAY_DIAL_S)
    return EmbeddedVideo(hub, gateway)


def make_vonage_call_control(settings: Settings) -> CallControl | None:
    """What mutes, hangs up and talks into phone calls on Vonage: its Voice API (which needs an application id and
    key; with the legacy API key + secret there is none)."""
    pem = settings.private_key_pem() if settings.vonage_application_id is not None else None
    if settings.vonage_application_id is None or pem is None:
        return None
    from dialbridge.platforms.vonage import VonageApplication, VonageVoice

    return VonageVoice(
        VonageApplication(
            application_id=settings.vonage_application_id,
            private_key_pem=pem,
            api_host=settings.vonage_api_host,
            video_host=settings.vonage_video_host,
            browser_sdk_url=settings.vonage_browser_sdk_url,
            token_ttl_s=settings.token_ttl_s,
        )
    )


def make_vonage_platform(settings: Settings) -> VideoPlatform:
    """The new SDK when an application id is configured, else the tutorial's legacy API key + secret. (The SDKs
    are imported only here: the embedded backend never loads them.)"""
    if settings.vonage_application_id is not None:
        pem = settings.private_key_pem()
        if pem is None:
            raise ValueError("DIALBRIDGE_VONAGE_PRIVATE_KEY is not set (see `dialbridge doctor`)")
        from dialbridge.platforms.vonage import VonageApplication, VonageVideo

        application = VonageApplication(
            application_id=settings.vonage_application_id,
            private_key_pem=pem,
            api_host=settings.vonage_api_host,
            video_host=settings.vonage_video_host,
            browser_sdk_url=settings.vonage_browser_sdk_url,
            token_ttl_s=settings.token_ttl_s,
        )
        return VonageVideo(application, participant_id)
    if settings.vonage_api_key is not None and settings.vonage_api_secret is not None:
        from dialbridge.platforms.opentok_legacy import LegacyOpenTokAccount, LegacyOpenTokVideo

        account = LegacyOpenTokAccount(
            api_key=settings.vonage_api_key,
            api_secret=settings.vonage_api_secret.get_secret_value(),
            api_url=f"https://{settings.vonage_opentok_host}",
            browser_sdk_url=settings.vonage_browser_sdk_url,
            token_ttl_s=settings.token_ttl_s,
        )
        return LegacyOpenTokVideo(account, participant_id)
    raise ValueError(
        "the vonage backend needs DIALBRIDGE_VONAGE_APPLICATION_ID + DIALBRIDGE_VONAGE_PRIVATE_KEY, or "
        "DIALBRIDGE_VONAGE_API_KEY + DIALBRIDGE_VONAGE_API_SECRET (see `dialbridge doctor`)"
    )


async def services(request: Request) -> Services:
    # async: a plain def dependency would be run in a worker thread, a measurable cost on every request
    found: Services = request.app.state.services
    return found
