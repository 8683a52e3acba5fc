"""Dead letters: GET /dead-letters, POST /dead-letters/replay, DELETE /dead-letters/{id}."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request
from redis.exceptions import RedisError

from .context import Context
from .events import stream_id_key
from .schemas import ApiError, ReplayRequest, ReplayResult

router = APIRouter(tags=["dead letters"])
RETRY = {"Retry-After": "5"}


def requester(request: Request, context: Context) -> str:
    """Who asked, for the journal: the token's fingerprint, never the token."""
    supplied = request.headers.get("authorization", "").partition(" ")[2]
    if not context.settings.api_token or not supplied:
        return "api (no token)"
    return "api token " + hashlib.sha256(supplied.encode()).hexdigest()[:12]


@router.get("/dead-letters")
async def list_dead_letters(
    context: Context,
    job_id: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, object]:
    try:
        letters = await context.dead_letters.find(job_id, limit)
    except RedisError as exc:
        raise ApiError(503, f"redis: unavailable ({exc})", RETRY) from None
    return {"dead_letters": [letter.as_dict() for letter in letters], "count": len(letters)}


@router.post("/dead-letters/replay")
async def replay_dead_letters(body: ReplayRequest, request: Request, context: Context) -> ReplayResult:
    chosen = body.chosen()
    letters_api = context.dead_letters
    if chosen == "ids":
        for entry_id in body.ids or []:
            _entry_id(entry_id)
        letters = await letters_api.get(body.ids or [])
        missing = sorted(set(body.ids or []) - {letter.id for letter in letters})
        if missing:
            raise ApiError(404, f"ids: no dead letter {', '.join(missing[:10])}")
    else:
        letters = await letters_api.find(str(body.job_id) if body.job_id else None, limit=100_000)
        if not letters:
            raise ApiError(404, "job_id: no dead letter of that job" if body.job_id else "all: no dead letter")
    report = await letters_api.replay(letters, requester(request, context))
    return ReplayResult(replayed=report.replayed, jobs=report.jobs or [], skipped_jobs=report.skipped or [])


@router.delete("/dead-letters/{entry_id}")
async def discard_dead_letter(entry_id: str, context: Context) -> dict[str, object]:
    _entry_id(entry_id)
    if not await context.dead_letters.discard(entry_id):
        raise ApiError(404, f"entry_id: no dead letter {entry_id}")
    return {"discarded": entry_id}


def _entry_id(entry_id: str) -> None:
    try:
        stream_id_key(entry_id)
    except ValueError:
        raise ApiError(422, f"entry_id: {entry_id[:64]!r} is not a stream entry id") from None
