"""The FastAPI application factory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dialbridge import __version__
from dialbridge.config import Settings
from dialbridge.platforms.base import VideoPlatform
from dialbridge.web import api, dialout, pages, signalling, webhooks
from dialbridge.web.errors import install_error_handlers
from dialbridge.web.metrics import RequestMetricsMiddleware
from dialbridge.web.responses import JsonResponse
from dialbridge.web.services import build_services

log = logging.getLogger("dialbridge")
STATIC = Path(__file__).with_name("static")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    platform: VideoPlatform | None = None,
) -> FastAPI:
    settings = settings or Settings()
    services = build_services(settings, clock=clock, platform=platform)
    for warning in settings.warnings():
        log.warning("%s", warning)

    app = FastAPI(
        title="dialbridge",
        version=__version__,
        default_response_class=JsonResponse,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(dialout.router)
    app.include_router(webhooks.router)
    app.include_router(signalling.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)
    return app


def app_from_environment() -> FastAPI:
    """Entry point for `uvicorn --factory dialbridge.web.app:app_from_environment` (several workers)."""
    return create_app(Settings())
