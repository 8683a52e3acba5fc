"""Health and metrics: /health (no token), /health/detailed, /metrics."""

from __future__ import annotations

import time
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
    await context.health.refresh()  # the shield_dependency_up gauges, at most every few seconds
    return Response(context.metrics.render(stats, context.hub.client_count), media_type=CONTENT_TYPE)


@router.get("/queue")
async def get_queue(context: Context) -> dict[str, object]:
    """The queue at a glance (the console's header)."""
    try:
        stats = await context.stream.stats()
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})") from None
    return {
        "queue_depth": stats.queue_depth,
        "high_priority_depth": stats.high_priority_depth,
        "pending": stats.pending,
        "waiting": stats.waiting,
        "dead_letters": stats.dead_letters,
        "processing_rate": context.rate.rate(),
    }


@router.get("/workers")
async def get_workers(context: Context) -> dict[str, object]:
    """Every consumer of the group, on every host, with its heartbeat."""
    try:
        consumers = await context.stream.consumers()
        beats = await context.heartbeats.read([info.name for info in consumers])
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})") from None
    now = time.time()
    workers = []
    for info in consumers:
        beat = beats.get(info.name, {})
        at = beat.get("at")
        workers.append(
            {
                "consumer": info.name,
                "host": beat.get("host"),
                "state": beat.get("state", "silent"),
                "tasks_done": beat.get("tasks_done"),
                "heartbeat_age_seconds": round(now - float(str(at)), 1) if at is not None else None,
                "alive": info.name in beats,
                "pending": info.pending,
            }
        )
    return {"workers": workers, "count": len(workers)}
