"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from dialbridge import __version__
from dialbridge.config import Settings
from dialbridge.platforms.base import VideoPlatform
from dialbridge.web import api, dialout, logredact, pages, signalling, voice
from dialbridge.web.bodylimit import BoundedBodies
from dialbridge.web.errors import install_error_handlers
from dialbridge.web.metrics import RequestMetricsMiddleware
from dialbridge.web.responses import JsonResponse
from dialbridge.web.services import Services, build_services
from dialbridge.web.webhooks import WEBHOOKS, WebhookEndpoints

log = logging.getLogger("dialbridge")
STATIC = Path(__file__).with_name("static")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    platform: VideoPlatform | None = None,
) -> DialbridgeApp:
    settings = settings or Settings()
    logredact.install()
    services = build_services(settings, clock=clock, platform=platform)
    for warning in settings.warnings():
        log.warning("%s", warning)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # What start-up loads (FastAPI, pydantic, SQLAlchemy, Alembic: ~150,000 tracked objects) lives as long as
        # the process, yet every full collection walked it again with the event loop stopped (~100 ms each, every
        # few thousand webhooks, measured in-process). Frozen, it is skipped; later allocations are collected.
        gc.freeze()
        publishing = asyncio.create_task(services.metrics.keep_publishing()) if services.metrics.shared_dir else None
        yield
        if publishing is not None:
            publishing.cancel()
            services.metrics.publish()
        await asyncio.wait_for(services.roster.drain(), timeout=5)  # the last participant signals
        # Requests have finished (uvicorn waits for them); commit anything still queued, close the connections.
        services.store.close()
        for client in (services.voice_engine, getattr(services.platform, "gateway", None)):
            if client is not None:
                await client.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="dialbridge",
        version=__version__,
        default_response_class=JsonResponse,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.services = services
    if services.voice_engine is not None and services.roster.voice is not None:
        services.hub.on_left = voice.SipParticipantWatch(services, services.roster.voice).left
    install_error_handlers(app)
    routers = (pages.router, api.router, dialout.router, signalling.router, voice.router)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Bodies are bounded before FastAPI reads them (webhooks have a limit of their own), inside the metrics, which
    # count a refused body as the 413 it got.
    app.add_middleware(BoundedBodies)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=services.metrics,
        routes=[route for router in routers for route in router.routes],
    )
    _document_webhooks(app)
    return DialbridgeApp(app, services)


NO_CONTENT = frozenset({"events", "keypad", "speaking", "sip-calls"})  # the webhooks that answer 204, not an NCCO


def _document_webhooks(app: FastAPI) -> None:
    """The webhooks in the OpenAPI document, from the one table that routes them (`WEBHOOKS`): FastAPI never
    sees a webhook request (the webhook layer and the HTTP protocol's direct path answer first), so the paths
    are added to its schema rather than declared a second time as routes."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            for path, webhook in WEBHOOKS.items():
                alias = path != webhook.template
                schema["paths"][path] = {
                    method.lower(): {
                        "summary": f"Vonage {webhook.name} webhook"
                        + (f" (alias of {webhook.template})" if alias else ""),
                        "description": "Signed like Vonage's when DIALBRIDGE_SIGNATURE_SECRET is set; see the README.",
                        "tags": ["webhooks"],
                        "responses": {"200": {"description": "NCCO"}}
                        if webhook.name not in NO_CONTENT
                        else {"204": {"description": "stored"}},
                    }
                    for method in sorted(webhook.methods)
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class DialbridgeApp:
    """The ASGI application: the webhooks served by their own small layer, everything else by FastAPI.

    The webhook layer sits outside FastAPI's own middleware stack (error and telemetry wrappers that every request
    otherwise crosses), which measurably mattered at thousands of webhooks a second; see web/webhooks.py.
    """

    def __init__(self, api: FastAPI, services: Services) -> None:
        self.api = api
        self.state = api.state
        self.services = services
        self.webhook_endpoints = WebhookEndpoints(api, services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.webhook_endpoints(scope, receive, send)


def app_from_environment() -> DialbridgeApp:
    """Entry point for `uvicorn --factory dialbridge.web.app:app_from_environment` (several workers)."""
    return create_app(Settings())
