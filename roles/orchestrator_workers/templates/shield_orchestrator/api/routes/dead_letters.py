"""Dead letters: GET /dead-letters, POST /dead-letters/replay, DELETE /dead-letters/{id}."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from redis.exceptions import RedisError

from ... import bounds
from ...jobs.dead_letters import DeadLetter
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError, DeadLetterList, Discarded, ReplayIds, ReplayJob, ReplayRequest, ReplayResult

router = APIRouter(tags=["dead letters"])
RETRY = {"Retry-After": "5"}


def requester(request: Request, context: Context) -> str:
    """Who asked, for the journal: the token's fingerprint, never the token."""
    supplied = request.headers.get("authorization", "").partition(" ")[2]
    if not context.settings.api_token or not supplied:
        return "api (no token)"
    return "api token " + hashlib.sha256(supplied.encode()).hexdigest()[:12]


@router.get("/dead-letters", responses=error_responses(422, 503))
async def list_dead_letters(
    context: Context,
    job_id: Annotated[
        str | None,
        Query(pattern=bounds.UUID_PATTERN, json_schema_extra={"format": "uuid"}, description="only this job's"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadLetterList:
    try:
        letters = await context.dead_letters.find(job_id.lower() if job_id else None, limit)
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})", RETRY) from None
    return DeadLetterList.model_validate(
        {"dead_letters": [letter.as_dict() for letter in letters], "count": len(letters)}
    )


@router.post("/dead-letters/replay", responses=error_responses(404, 413, 422, 503))
async def replay_dead_letters(
    body: Annotated[ReplayRequest, Body(description="exactly one of: ids, job_id, or all=true")],
    request: Request,
    context: Context,
) -> ReplayResult:
    try:
        letters = await _letters_to_replay(body, context)
        report = await context.dead_letters.replay(letters, requester(request, context))
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable, nothing was replayed ({exc})", RETRY) from None
    return ReplayResult(replayed=report.replayed, jobs=report.jobs or [], skipped_jobs=report.skipped or [])


async def _letters_to_replay(body: ReplayRequest, context: Context) -> list[DeadLetter]:
    if isinstance(body, ReplayIds):
        letters = await context.dead_letters.get(body.ids)
        missing = sorted(set(body.ids) - {letter.id for letter in letters})
        if missing:
            raise ApiError(404, f"ids: no dead letter {', '.join(missing[:10])}")
        return letters
    job_id = body.job_id.lower() if isinstance(body, ReplayJob) else None
    letters = await context.dead_letters.find(job_id, limit=100_000)
    if not letters:
        raise ApiError(404, "job_id: no dead letter of that job" if job_id else "all: no dead letter")
    return letters


@router.delete("/dead-letters/replay", include_in_schema=False)
async def replay_is_not_an_entry() -> None:
    """`replay` is no entry id: DELETE on it is a wrong method (405), not a bad id."""
    raise ApiError(405, "method: DELETE is not allowed on /dead-letters/replay (POST replays)", {"Allow": "POST"})


@router.delete("/dead-letters/{entry_id}", responses=error_responses(404, 422, 503))
async def discard_dead_letter(
    entry_id: Annotated[str, Path(pattern=bounds.STREAM_ID_PATTERN, description="the dead letter's id (<ms>-<seq>)")],
    context: Context,
) -> Discarded:
    try:
        discarded = await context.dead_letters.discard(entry_id)
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable, nothing was discarded ({exc})", RETRY) from None
    if not discarded:
        raise ApiError(404, f"entry_id: no dead letter {entry_id}")
    return Discarded(discarded=entry_id)
