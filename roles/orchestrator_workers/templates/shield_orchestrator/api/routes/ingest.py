"""POST /lightrag/ingest-async: accept a job of any type (202), find the job an
Idempotency-Key already made (200), or say exactly why not."""

from __future__ import annotations

import logging
import math
from typing import Annotated

from fastapi import APIRouter, Body, Header, Response
from redis.exceptions import RedisError

from ...jobs.intake import IdempotencyConflict, QueueFull, ReplaceRunning
from ...jobs.states import JobState
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError, IngestAccepted, JobRequest, validate_job

log = logging.getLogger("shield_orchestrator.api")

router = APIRouter(tags=["ingest"])
MAX_RETRY_AFTER_SECONDS = 300
IDEMPOTENCY_HEADER = Header(
    alias="Idempotency-Key",
    pattern=r"^[!-~]{1,255}$",  # visible ASCII: FastAPI refuses any other value, 422 naming the header
    max_length=255,
    description=(
        "Makes the POST safe to repeat: a repeat with the same key and the same body answers 200 with the "
        "job the first request made (nothing enqueued again) while the job's status is kept "
        "(orchestrator_workers_job_status_ttl); the same key with another body is a 409. 1-255 visible "
        "ASCII characters."
    ),
)


def retry_after(exc: QueueFull, rate: float) -> int:
    """Seconds until the backlog has room for the job at the current processing rate."""
    excess = exc.depth + exc.incoming - exc.limit
    return min(max(math.ceil(excess / max(rate, 1.0)), 1), MAX_RETRY_AFTER_SECONDS)


@router.post(
    "/lightrag/ingest-async",
    status_code=202,
    responses={
        200: {"model": IngestAccepted, "description": "The job this Idempotency-Key made before; nothing enqueued"},
        **error_responses(409, 413, 422, 429, 503),
    },
)
async def ingest(
    body: Annotated[
        JobRequest,
        Body(
            description="A job: `ingest` chunks of text (job_type may be left out), `delete` documents by "
            "doc_id or source_uri, or `replace` a source_uri's documents by new chunks (409 while another "
            "replace of it is queued or running). Another job_type is a 422 naming it."
        ),
    ],
    context: Context,
    response: Response,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_HEADER] = None,
) -> IngestAccepted:
    validate_job(body, context.settings)
    try:
        accepted = await context.intake.submit(body, idempotency_key)
    except IdempotencyConflict as exc:
        # A valid body that conflicts with the key's first use: the server's state, not
        # the input, is what refuses it (409), as for a cancel of a finished job.
        raise ApiError(
            409, f"Idempotency-Key: already used with another body, for job {exc.job_id}; use a new key"
        ) from None
    except ReplaceRunning as exc:
        raise ApiError(
            409,
            f"source_uri: a replace of it is queued or running (job {exc.job_id}); wait for that job to end, "
            "or cancel it",
        ) from None
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
    if accepted.repeated:
        # The key may be anything the client chose: only a prefix of its hash is logged.
        log.info(
            "job found again by its Idempotency-Key job=%s key_sha256=%s",
            accepted.job_id,
            accepted.key_sha256,
        )
        response.status_code = 200
        view = await context.tracker.get(accepted.job_id)
        status = view["status"] if view is not None else JobState.QUEUED.value
    else:
        log.info("job accepted job=%s type=%s tasks=%d", accepted.job_id, accepted.job_type, accepted.chunks_total)
        status = JobState.QUEUED.value
    return IngestAccepted(
        job_id=accepted.job_id,
        status=status,
        chunks_total=accepted.chunks_total,
        status_url=f"/jobs/{accepted.job_id}",
    )
