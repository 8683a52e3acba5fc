"""Health and metrics: /health (no token), /health/detailed, /metrics."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from .context import Context
from .http_errors import error_responses
from .schemas import ApiError

public = APIRouter(tags=["health"])
router = APIRouter(tags=["health"])
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"


class Health(BaseModel):
    status: Literal["healthy"]
    timestamp: str
    version: str
    uptime_seconds: float


class HealthReport(BaseModel):
    """The dependency report; `down` lists the required ones that are down (then 503)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["healthy", "degraded", "unhealthy"]
    dependencies: dict[str, dict[str, Any]]
    worker_pool: dict[str, Any]
    postgres_sync: dict[str, Any]
    down: list[str] = []


class MetricsResponse(Response):
    # Starlette adds "; charset=utf-8": the header is metrics.CONTENT_TYPE.
    media_type = METRICS_MEDIA_TYPE


@public.get("/health")
async def get_health(context: Context) -> Health:
    return Health.model_validate(context.health.basic())


@router.get(
    "/health/detailed",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "A required dependency is down: the same report"}},
)
async def get_health_detailed(context: Context) -> JSONResponse:
    status, body = await context.health.detailed()
    return JSONResponse(body, status_code=status)


@router.get(
    "/metrics",
    response_class=MetricsResponse,
    responses={
        200: {"description": "Prometheus text exposition format 0.0.4"},
        **error_responses(503),
    },
)
async def get_metrics(context: Context) -> Response:
    try:
        stats = await context.stream.stats()
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})", {"Retry-After": "5"}) from None
    return MetricsResponse(context.metrics.render(stats, context.hub.client_count))
