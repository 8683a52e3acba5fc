"""Health and metrics: /health (no token), /health/detailed, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from .context import Context
from .metrics import CONTENT_TYPE
from .schemas import ApiError

public = APIRouter(tags=["health"])
router = APIRouter(tags=["health"])


@public.get("/health")
async def get_health(context: Context) -> dict[str, Any]:
    return context.health.basic()


@router.get("/health/detailed")
async def get_health_detailed(context: Context) -> JSONResponse:
    status, body = await context.health.detailed()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def get_metrics(context: Context) -> Response:
    try:
        stats = await context.stream.stats()
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})") from None
    return Response(context.metrics.render(stats, context.hub.client_count), media_type=CONTENT_TYPE)
