"""Events: stream id ordering, SSE framing, decoding, type filters, write coalescing."""

from __future__ import annotations

import asyncio

import pytest
from shield_orchestrator.events.bus import coalesce
from shield_orchestrator.events.types import EVENT_TYPES, Event, EventType, decode, parse_event_types
from shield_orchestrator.queue.redis_text import stream_id_key


def test_stream_ids_order_numerically_not_as_text() -> None:
    ids = ["1700000000000-10", "1700000000000-9", "999-0", "1700000000001-0", "1700000000000"]
    assert sorted(ids, key=stream_id_key) == [
        "999-0",
        "1700000000000",
        "1700000000000-9",
        "1700000000000-10",
        "1700000000001-0",
    ]


@pytest.mark.parametrize("garbage", ["", "garbage", "12-ab", "-5", "1-2-3", " 12", "\uff11\uff12-0"])
def test_stream_id_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(ValueError):
        stream_id_key(garbage)


def test_sse_frame() -> None:
    event = Event("5-1", "ingestion.progress", {"job_id": "j", "text": "two\nlines", "n": 1})
    assert event.to_sse() == 'id: 5-1\nevent: ingestion.progress\ndata: {"job_id":"j","text":"two\\nlines","n":1}\n\n'


def test_decode() -> None:
    assert decode("1-0", {"type": "worker.started", "data": '{"a":1}'}) == Event("1-0", "worker.started", {"a": 1})
    assert decode("1-0", {"type": "x"}) is None
    assert decode("1-0", {"type": "x", "data": "{"}) is None
    assert decode("1-0", {"type": "x", "data": "[1]"}) is None


def test_event_type_filters() -> None:
    assert parse_event_types([""]) is None
    assert parse_event_types([" ingestion.queued ", "worker.started"]) == {"ingestion.queued", "worker.started"}
    with pytest.raises(ValueError, match=r"nope\.bad"):
        parse_event_types(["ingestion.queued", "nope.bad"])
    assert {item.value for item in EventType} == EVENT_TYPES


def test_coalesce_joins_what_waits_skips_replayed_and_ends_at_none() -> None:
    async def scenario() -> tuple[tuple[str, bool], tuple[str, bool]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        for entry_id in ("2-0", "3-0"):
            queue.put_nowait(Event(entry_id, "worker.started", {}))
        first = coalesce(Event("1-0", "worker.started", {}), queue, floor=(1, 5))
        queue.put_nowait(None)
        queue.put_nowait(Event("9-0", "worker.started", {}))
        second = coalesce(Event("4-0", "worker.started", {}), queue, floor=(0, 0))
        return first, second

    (frames, ended), (frames2, ended2) = asyncio.run(scenario())
    assert not ended and frames.count("event: ") == 2 and "id: 1-0" not in frames
    assert ended2 and frames2.startswith("id: 4-0") and "9-0" not in frames2
