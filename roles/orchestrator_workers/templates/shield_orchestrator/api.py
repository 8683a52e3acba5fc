"""The HTTP API: one router per concern, each reading its dependencies from the app."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import Depends, FastAPI

from . import http_errors, routes_dead_letters, routes_events, routes_ingest, routes_jobs, routes_ops, routes_ui
from .context import AppContext
from .schemas import request_body_limit

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(context: AppContext, lifespan: Lifespan | None = None) -> FastAPI:
    app = FastAPI(title="shield-orchestrator", version=context.settings.version, lifespan=lifespan)
    context.attach(app)
    http_errors.install(app, request_body_limit(context.settings))
    secured = [Depends(http_errors.require_token)]
    app.include_router(routes_ops.public)
    app.include_router(routes_ops.router, dependencies=secured)
    app.include_router(routes_ingest.router, dependencies=secured)
    app.include_router(routes_jobs.router, dependencies=secured)
    app.include_router(routes_events.router, dependencies=secured)
    app.include_router(routes_dead_letters.router, dependencies=secured)
    app.include_router(routes_ui.router)
    return app
