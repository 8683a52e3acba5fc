"""GET /events/stream: Server-Sent Events from every process and host."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from .context import Context
from .event_bus import SubscriptionRefused
from .events import parse_event_types, stream_id_key
from .schemas import ApiError

router = APIRouter(tags=["events"])


@router.get("/events/stream")
async def events_stream(
    context: Context,
    event_types: Annotated[str | None, Query()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
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
        raise ApiError(503, f"events: {exc}", {"Retry-After": "10"}) from None
    return StreamingResponse(
        context.hub.stream(sub, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
