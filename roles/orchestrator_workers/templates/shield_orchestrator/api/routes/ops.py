"""Health, metrics and the console's views: /health (no token), /health/detailed, /metrics, /queue, /workers, /llm."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from ...lightrag.graph_check import GraphUnreadable, GraphVerification, GraphVerifier
from ...queue.stream import QueueStats
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError, LLMSlotsView, QueueView, WorkerList, WorkerView

log = logging.getLogger("shield_orchestrator.api")
public = APIRouter(tags=["health"])
router = APIRouter(tags=["health"])
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"
RETRY = {"Retry-After": "5"}


class Health(BaseModel):
    """The process is up: its version, the hash of the code it runs, its release, its uptime. No
    dependency is asked (GET /health/detailed asks them)."""

    status: Annotated[
        Literal["healthy", "draining"],
        Field(description="draining (with 503): the process is stopping; it answers until its pool has drained"),
    ]
    timestamp: str
    version: str
    tree_sha256: Annotated[str, Field(description="SHA-256 of the package's file tree this process runs")]
    release: Annotated[
        str | None,
        Field(description="the release directory the code runs from (releases/<name>); null outside one"),
    ] = None
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
    """The Prometheus text exposition (format 0.0.4), under the media type the spec declares."""

    # Starlette adds "; charset=utf-8": the header is metrics.CONTENT_TYPE.
    media_type = METRICS_MEDIA_TYPE


@public.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Draining: the process is stopping; send new work elsewhere"}},
)
async def get_health(context: Context) -> JSONResponse:
    body = Health.model_validate(context.health.basic()).model_dump()
    return JSONResponse(body, status_code=503 if context.health.draining else 200)


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
        200: {
            "description": "Prometheus text exposition format 0.0.4; always the process's own series. "
            "When Redis does not answer, `shield_redis_up` is 0 and the queue gauges read from it are absent"
        },
    },
)
async def get_metrics(context: Context) -> Response:
    stats: QueueStats | None
    try:
        stats = await context.stream.stats()
    except RedisError as exc:
        # Not a 503: Prometheus would lose every series of the process, not only Redis's.
        log.debug("/metrics: the queue gauges left out, Redis does not answer (%s)", exc)
        stats = None
    await context.llm.refresh_metrics()
    return MetricsResponse(context.metrics.render(stats, context.hub.client_count))


@router.get("/queue", responses=error_responses(503))
async def get_queue(context: Context) -> QueueView:
    """The queue at a glance (the console's header)."""
    try:
        stats = await context.stream.stats()
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})", RETRY) from None
    return QueueView(
        queue_depth=stats.queue_depth,
        high_priority_depth=stats.high_priority_depth,
        pending=stats.pending,
        waiting=stats.waiting,
        dead_letters=stats.dead_letters,
        processing_rate=context.rate.rate(),
    )


@router.get("/workers", responses=error_responses(503))
async def get_workers(context: Context) -> WorkerList:
    """Every consumer of the group, on every host, with its heartbeat."""
    try:
        consumers = await context.stream.consumers()
        beats = await context.heartbeats.read([info.name for info in consumers])
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})", RETRY) from None
    now = time.time()
    workers = []
    for info in consumers:
        beat = beats.get(info.name, {})
        at = beat.get("at")
        done = beat.get("tasks_done")
        workers.append(
            WorkerView(
                consumer=info.name,
                host=str(beat["host"]) if beat.get("host") is not None else None,
                state=str(beat.get("state", "silent")),
                tasks_done=int(str(done)) if done is not None else None,
                heartbeat_age_seconds=round(now - float(str(at)), 1) if at is not None else None,
                alive=info.name in beats,
                pending=info.pending,
            )
        )
    return WorkerList(workers=workers, count=len(workers))


@router.get("/llm")
async def get_llm(context: Context) -> LLMSlotsView:
    """The chat calls' slots at a glance (the console): this host's and its 429 back-off, the
    cluster's cap and its leases by host. Answers while Redis is down (`cluster_error` says so)."""
    return LLMSlotsView.model_validate(vars(await context.llm.report()))


@router.get("/graph/verify", tags=["graph"], responses=error_responses(422, 503))
async def verify_graph(
    context: Context,
    dump: Annotated[bool, Query(description="add the canonical dump of the graph (`dump`)")] = False,
) -> GraphVerification:
    """Cross-check the workspace's whole graph: documents, chunks, entities, relations
    and vectors; every inconsistency named (lightrag/graph_check.py). Ingestion waits
    while it runs (it holds the workspace lock)."""
    verifier: object = context.verifier  # the processor: a JobVerifier, and a GraphVerifier when it is LightRAG's
    if not isinstance(verifier, GraphVerifier):
        raise ApiError(503, "verify: this host's processor cannot read the graph back", RETRY)
    try:
        return await verifier.verify_graph(dump)
    except GraphUnreadable as exc:
        raise ApiError(503, f"graph: LightRAG's storages cannot be read ({exc})", RETRY) from None
