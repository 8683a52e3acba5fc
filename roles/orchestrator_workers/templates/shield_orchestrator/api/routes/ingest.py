"""POST /lightrag/ingest-async: accept a job (202) or say exactly why not."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter
from redis.exceptions import RedisError

from ...jobs.intake import QueueFull
from ...jobs.states import JobState
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError, IngestAccepted, IngestRequest, validate_ingest

log = logging.getLogger("shield_orchestrator.api")

router = APIRouter(tags=["ingest"])
MAX_RETRY_AFTER_SECONDS = 300


def retry_after(exc: QueueFull, rate: float) -> int:
    """Seconds until the backlog has room for the job at the current processing rate."""
    excess = exc.depth + exc.incoming - exc.limit
    return min(max(math.ceil(excess / max(rate, 1.0)), 1), MAX_RETRY_AFTER_SECONDS)


@router.post("/lightrag/ingest-async", status_code=202, responses=error_responses(413, 422, 429, 503))
async def ingest(body: IngestRequest, context: Context) -> IngestAccepted:
    validate_ingest(body, context.settings)
    try:
        accepted = await context.intake.submit(body)
    except QueueFull as exc:
        raise ApiError(
            429,
            f"queue: backlog of {exc.depth} chunks; accepting {exc.incoming} more would exceed "
            f"max_queue_depth ({exc.limit})",
            {"Retry-After": str(retry_after(exc, context.rate.rate()))},
        ) from None
    except RedisError as exc:
        log.error("ingest rejected: Redis unavailable: %s", exc)
        raise ApiError(
            503, "redis: queue unavailable, nothing was enqueued; retry later", {"Retry-After": "5"}
        ) from None
    log.info("job accepted job=%s chunks=%d source_type=%s", accepted.job_id, accepted.chunks_total, body.source_type)
    return IngestAccepted(
        job_id=accepted.job_id,
        status=JobState.QUEUED.value,
        chunks_total=accepted.chunks_total,
        status_url=f"/jobs/{accepted.job_id}",
    )
