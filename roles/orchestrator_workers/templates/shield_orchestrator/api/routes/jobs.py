"""GET /jobs and GET /jobs/{job_id}: Redis while a job is live, PostgreSQL for history."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BaseModel
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ... import bounds
from ...events.types import EventType
from ...jobs.states import JobState
from ...jobs.tracker import CancelOutcome
from ...jobs.views import DuplicateChunk, JobView, duplicate_chunks
from ...lightrag.verify import JobVerification, chunk_indexes
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError, CancelResult

log = logging.getLogger("shield_orchestrator.api")

router = APIRouter(tags=["jobs"])
RETRY = {"Retry-After": "5"}
NOT_IN_REDIS = -2
UUID_PATTERN = bounds.UUID_PATTERN
_UUID = re.compile(UUID_PATTERN)


def canonical_job_id(job_id: str) -> str:
    """A job id is a UUID written 8-4-4-4-12 (as the API hands them out); ValueError otherwise."""
    if not _UUID.match(job_id):
        raise ValueError("must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return str(uuid.UUID(job_id))


# A route's `job_id` path parameter: declared `format: uuid`, refused with 422 naming it.
JobId = Annotated[
    str,
    Path(description="The job's id (a UUID)", json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN}),
    AfterValidator(canonical_job_id),
]


class JobList(BaseModel):
    """The newest jobs, from PostgreSQL; while it is unreachable, from Redis alone
    (`source` redis, `degraded`, a `warning`: finished jobs expire from Redis)."""

    jobs: list[JobView]
    count: int
    source: Literal["postgresql", "redis"]
    degraded: bool
    warning: str | None = None


@router.get("/jobs", response_model=JobList, responses=error_responses(422, 503))
async def list_jobs(
    context: Context,
    status: Annotated[JobState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Any:
    try:
        jobs = await context.history.list_recent(status, limit)
        return {"jobs": jobs, "count": len(jobs), "source": "postgresql", "degraded": False}
    except (SQLAlchemyError, OSError) as exc:
        log.warning("GET /jobs: PostgreSQL unreachable (%s); answering from Redis", exc)
    try:
        jobs = await context.tracker.list_recent(status, limit)
    except RedisError as exc:
        raise ApiError(503, f"postgresql and redis: both unavailable ({exc})", RETRY) from None
    return {
        "jobs": jobs,
        "count": len(jobs),
        "source": "redis",
        "degraded": True,
        "warning": "PostgreSQL is unreachable: recent jobs from Redis only (finished jobs expire after "
        f"{context.settings.job_status_ttl}s)",
    }


@router.post("/jobs/{job_id}/cancel", responses=error_responses(404, 409, 422, 503))
async def cancel_job(job_id: JobId, context: Context) -> CancelResult:
    """Cancel a job that has not finished: its chunks not yet handed to LightRAG are
    acked without being processed (those in the stream, and those a worker holds);
    chunks already in LightRAG, or on their way into it, stay and are counted here:
    the job ends with that many processed.
    Idempotent; 404 for an unknown job, 409 for one that finished otherwise."""
    try:
        outcome = await context.tracker.cancel(job_id)
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable, the job was not cancelled ({exc})", RETRY) from None
    if outcome.outcome == NOT_IN_REDIS:
        job = await context.history.get(job_id)
        if job is None:
            raise ApiError(404, f"job_id: job {job_id} not found")
        outcome = CancelOutcome(
            0 if job["status"] == JobState.CANCELLED else -1, job["status"], job["chunks_processed"]
        )
    if outcome.outcome < 0:
        raise ApiError(409, f"job_id: job {job_id} has already finished ({outcome.status}); it cannot be cancelled")
    if outcome.outcome == 1:
        data = {"job_id": job_id, "chunks_in_lightrag": outcome.chunks_in_lightrag}
        context.publisher.publish(EventType.INGESTION_CANCELLED, data)
        context.on_job_change()
        log.info(
            "job %s cancelled; %d chunks in, or on their way into, LightRAG stay", job_id, outcome.chunks_in_lightrag
        )
    return CancelResult(
        job_id=job_id,
        status=JobState.CANCELLED.value,
        chunks_in_lightrag=outcome.chunks_in_lightrag,
        already_cancelled=outcome.outcome == 0,
    )


@router.get("/jobs/{job_id}/verify", responses=error_responses(404, 409, 422, 503))
async def verify_job(job_id: JobId, context: Context) -> JobVerification:
    """Did the job really land in the graph: every chunk's document PROCESSED, its
    chunk vectors in the vector store, the entities extracted from it (an ingest or
    replace job; a delete job has no chunk: 409)."""
    job = await get_job(job_id, context)
    indexes = chunk_indexes(job["job_type"], job["chunks_total"])
    if indexes is None:
        raise ApiError(
            409,
            f"job_type: job {job_id} is a delete job, it has no chunk to read back; GET /graph/verify checks the graph",
        )
    if context.verifier is None:
        raise ApiError(503, "verify: this host's processor cannot read the graph back", RETRY)
    return await context.verifier.verify(job["job_id"], indexes)


class JobDuplicates(BaseModel):
    """The chunks of a job whose text the graph already held (content duplicates:
    processed, never failures), by index, each with the document that holds the text
    and that document's job; `chunks_duplicate` counts them all, `duplicates` is the
    page asked for."""

    job_id: str
    chunks_duplicate: int
    duplicates: list[DuplicateChunk]


@router.get("/jobs/{job_id}/duplicates", response_model=JobDuplicates, responses=error_responses(404, 422, 503))
async def job_duplicates(
    job_id: JobId,
    context: Context,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """Redis holds a live job's duplicates; PostgreSQL a finished job's (written with its final row)."""
    job = await get_job(job_id, context)
    try:
        holders = await context.tracker.duplicates(job["job_id"])
    except RedisError as exc:
        log.warning("GET /jobs/%s/duplicates: Redis unreachable (%s); answering from PostgreSQL", job_id, exc)
        holders = None
    if holders is None or len(holders) < job["chunks_duplicate"]:
        try:
            holders = {**(await context.history.duplicates(job["job_id"])), **(holders or {})}
        except (SQLAlchemyError, OSError) as exc:
            raise ApiError(
                503, f"job {job_id}: its duplicates are not in Redis and PostgreSQL is unreachable ({exc})", RETRY
            ) from None
    listed = duplicate_chunks(holders)
    return {
        "job_id": job["job_id"],
        "chunks_duplicate": max(job["chunks_duplicate"], len(listed)),
        "duplicates": listed[offset : offset + limit],
    }


@router.get("/jobs/{job_id}", responses=error_responses(404, 422, 503))
async def get_job(job_id: JobId, context: Context) -> JobView:
    """Redis holds a live job; PostgreSQL every job it has synced. Either one down:
    the other answers; both down: 503 (never a 500)."""
    redis_error: RedisError | None = None
    try:
        job = await context.tracker.get(job_id)
    except RedisError as exc:
        job, redis_error = None, exc
    if job is None:
        try:
            job = await context.history.get(job_id)
        except (SQLAlchemyError, OSError) as exc:
            where = "Redis is unreachable" if redis_error else "it is not in Redis"
            raise ApiError(503, f"job {job_id}: {where} and PostgreSQL is unreachable ({exc})", RETRY) from None
    if job is None and redis_error is not None:
        raise ApiError(503, f"job {job_id}: not in PostgreSQL yet and Redis is unreachable ({redis_error})", RETRY)
    if job is None:
        raise ApiError(404, f"job_id: job {job_id} not found")
    return job
