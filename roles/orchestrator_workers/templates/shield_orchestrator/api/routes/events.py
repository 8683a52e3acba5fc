"""GET /events/stream: Server-Sent Events from every process and host."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from ...events.bus import RefusalReason, SubscriptionRefused
from ...events.types import EVENT_TYPES, parse_event_types
from ...queue.redis_text import STREAM_ID_PATTERN, stream_id_key
from ..context import Context
from ..errors import error_responses
from ..schemas import ApiError

router = APIRouter(tags=["events"])
_ANY_TYPE = "|".join(sorted(EVENT_TYPES)).replace(".", r"\.")
EVENT_TYPES_PATTERN = rf"^\s*(?:(?:{_ANY_TYPE})\s*)?(?:,\s*(?:(?:{_ANY_TYPE})\s*)?)*$"
STREAM_DESCRIPTION = (
    "A Server-Sent Events stream: `retry:` and a `: connected` comment first, then one event per "
    "`id:` (the Redis stream id, for `Last-Event-ID`), `event:` (its type) and `data:` (a JSON "
    "object) block, and `: keep-alive` comments when idle. Event types: "
    + ", ".join(f"`{name}`" for name in sorted(EVENT_TYPES))
    + "."
)


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {"description": STREAM_DESCRIPTION, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **error_responses(422, 429, 503),
    },
)
async def events_stream(
    context: Context,
    event_types: Annotated[
        str | None,
        Query(
            description="Comma-separated event types to receive (all when absent)",
            json_schema_extra={"pattern": EVENT_TYPES_PATTERN},
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            description="Resume after this event id: the missed events (among the last sse_replay_events) first",
            json_schema_extra={"pattern": STREAM_ID_PATTERN},
        ),
    ] = None,
) -> StreamingResponse:
    try:
        types = parse_event_types((event_types or "").split(","))
    except ValueError as exc:
        raise ApiError(422, f"event_types: {exc}") from None
    if last_event_id:
        try:
            stream_id_key(last_event_id)
        except ValueError:
            raise ApiError(422, f"Last-Event-ID: {last_event_id[:64]!r} is not an event id") from None
    try:
        sub = context.hub.subscribe(types)
    except SubscriptionRefused as exc:
        status = 429 if exc.reason is RefusalReason.FULL else 503
        raise ApiError(status, f"events: {exc}", {"Retry-After": "10"}) from None
    return StreamingResponse(
        context.hub.stream(sub, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
