"""The HTTP API: one router per concern, each reading its dependencies from the app.

The OpenAPI document is the contract: every status a route sends is declared
with its body (ErrorBody for every refusal), the limits are the deployment's.
/docs, /redoc and /openapi.json need the token unless api_docs_public is set.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from .. import __version__, bounds
from ..settings import Settings
from . import auth, errors, limits
from .context import AppContext
from .routes import dead_letters as routes_dead_letters
from .routes import events as routes_events
from .routes import ingest as routes_ingest
from .routes import jobs as routes_jobs
from .routes import ops as routes_ops
from .routes import ui as routes_ui
from .schemas import request_body_limit

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
TITLE = "shield-orchestrator"
PUBLIC_PATHS = frozenset({"/health"})
UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")
ERROR_BODY_REF = "#/components/schemas/ErrorBody"


def create_app(context: AppContext, lifespan: Lifespan | None = None) -> FastAPI:
    settings = context.settings
    app = FastAPI(
        title=TITLE,
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(limits.reject_repeated_query)],
    )
    context.attach(app)
    errors.install(app)
    app.add_middleware(limits.BodyLimit, limit=request_body_limit(settings))
    secured = [Depends(auth.require_token)]
    unauthorized = errors.error_responses(401) if settings.api_token else {}
    app.include_router(routes_ops.public)
    for router in (
        routes_ops.router,
        routes_ingest.router,
        routes_jobs.router,
        routes_events.router,
        routes_dead_letters.router,
    ):
        app.include_router(router, dependencies=secured, responses=unauthorized)
    app.include_router(routes_ui.router)  # a static page; it asks for the token itself
    add_docs(app, settings, [] if settings.api_docs_public else secured)
    app.openapi = lambda: contract(app, settings)  # type: ignore[method-assign]
    return app


def add_docs(app: FastAPI, settings: Settings, dependencies: list[Any]) -> None:
    """/openapi.json, /docs (Swagger UI), /redoc: out of the spec, behind the token unless public."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} {__version__}")

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} {__version__}")


def json_errors(responses: dict[str, Any]) -> None:
    """An error body is JSON whatever the route's success media type (metrics, SSE)."""
    for answer in responses.values():
        for content in answer.get("content", {}).values():
            if content.get("schema") == {"$ref": ERROR_BODY_REF}:
                answer["content"] = {"application/json": content}
                break


def contract(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, made exact: the deployment's limits, bounded metadata,
    the bearer scheme on every route that needs it, no unused FastAPI schemas."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = spec["components"]["schemas"]
    for name in UNUSED_SCHEMAS:
        schemas.pop(name, None)
    schemas.update(bounds.metadata_schemas())
    ingest = schemas["IngestRequest"]["properties"]
    ingest["chunks"]["maxItems"] = settings.max_chunks_per_job
    schemas["DeleteRequest"]["properties"]["documents"]["maxItems"] = settings.max_chunks_per_job
    schemas["ReplaceRequest"]["properties"]["chunks"]["maxItems"] = settings.max_chunks_per_job
    schemas["ChunkIn"]["properties"]["text"]["maxLength"] = settings.max_chunk_bytes
    schemas["ReplaceChunk"]["properties"]["text"]["maxLength"] = settings.max_chunk_bytes
    for operations in spec["paths"].values():
        for operation in operations.values():
            json_errors(operation["responses"])
    if settings.api_token:
        spec["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        for path, operations in spec["paths"].items():
            for operation in operations.values():
                if path not in PUBLIC_PATHS:
                    operation["security"] = [{"bearerAuth": []}]
    app.openapi_schema = spec
    return spec
