"""Event types, the Event record and Server-Sent Events framing (stream ids: queue/redis_text.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JsonObject = dict[str, Any]


class EventType(StrEnum):
    """Every event the service publishes; the value is the SSE `event:` name and the
    `type` field in the events stream."""

    INGESTION_QUEUED = "ingestion.queued"
    INGESTION_STARTED = "ingestion.started"
    INGESTION_PROGRESS = "ingestion.progress"
    INGESTION_COMPLETED = "ingestion.completed"
    INGESTION_FAILED = "ingestion.failed"
    INGESTION_CANCELLED = "ingestion.cancelled"
    DOCUMENTS_DELETED = "documents.deleted"  # a delete job's task: what it removed
    CHUNKS_DUPLICATE = "chunks.duplicate"  # chunks whose text the graph already held, and who holds it
    WORKER_STARTED = "worker.started"
    WORKER_STOPPED = "worker.stopped"
    WORKER_TASK_FAILED = "worker.task_failed"
    WORKER_POOL_STARTED = "worker_pool.started"
    WORKER_POOL_STOPPED = "worker_pool.stopped"
    WORKER_POOL_PAUSED = "worker_pool.paused"
    WORKER_POOL_RESUMED = "worker_pool.resumed"


EVENT_TYPES = frozenset(item.value for item in EventType)


@dataclass(frozen=True)
class Event:
    """One entry of the events stream: its stream id (the SSE id a client resumes
    after), its type and its JSON object."""

    id: str
    type: str
    data: JsonObject

    def to_sse(self) -> str:
        """One SSE frame: id, event and a single-line JSON data field."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {encode(self.data)}\n\n"


def encode(data: JsonObject) -> str:
    return json.dumps(data, separators=(",", ":"))


def decode(entry_id: str, fields: dict[str, str]) -> Event | None:
    """An entry of the events stream as an Event; None for anything else."""
    try:
        data = json.loads(fields["data"])
        kind = fields["type"]
    except (KeyError, ValueError):
        return None
    return Event(entry_id, kind, data) if isinstance(data, dict) else None


def parse_event_types(parts: Iterable[str]) -> frozenset[str] | None:
    """The event types a client asked for (None: all); ValueError naming the unknown ones."""
    wanted = frozenset(part.strip() for part in parts if part.strip())
    unknown = sorted(wanted - EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)}")
    return wanted or None


SSE_RETRY_MS = 2000


def sse_preamble(stream: str) -> str:
    return f"retry: {SSE_RETRY_MS}\n: connected to {stream}\n\n"


SSE_KEEPALIVE = ": keep-alive\n\n"
