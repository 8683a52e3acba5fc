"""The public shapes of a job (JobCounts, JobView) and how they are read from a
Redis hash (strings) or a PostgreSQL row alike; the tracker and the history both
answer in them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from typing_extensions import TypedDict

from ..queue.tasks import job_of_document


class JobCounts(TypedDict):
    """What every shape of a job carries: identity, state, counters. A job's tasks are
    counted as chunks whatever its type (an ingest job's chunks, a delete job's
    document references); `documents_removed` counts the documents a delete job took
    out of the graph (0 for an ingest job); `chunks_duplicate` counts the chunks
    whose text the graph already held (processed, each listed with the document
    that holds the text by GET /jobs/{id}/duplicates)."""

    job_id: str
    job_type: str
    status: str
    chunks_total: int
    chunks_processed: int
    chunks_failed: int
    documents_removed: int
    chunks_duplicate: int


class JobView(JobCounts):
    """The public shape of a job (GET /jobs/{id})."""

    priority: str
    generation: int
    duration_seconds: float | None

    percent_complete: float
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    error_message: str | None
    metadata: dict[str, Any]


def percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


def _iso(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _count(value: object) -> int:
    return int(str(value)) if value not in (None, "") else 0


def job_view(fields: Mapping[str, object]) -> JobView:
    """The public shape of a job, from its Redis hash (strings) or its PostgreSQL row."""
    total, processed, failed = (
        _count(fields.get(name)) for name in ("chunks_total", "chunks_processed", "chunks_failed")
    )
    metadata = fields.get("job_metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return {
        "job_id": str(fields["job_id"]),
        "job_type": str(fields["job_type"]),
        "status": str(fields["status"]),
        "chunks_total": total,
        "chunks_processed": processed,
        "chunks_failed": failed,
        "documents_removed": _count(fields.get("documents_removed")),
        "chunks_duplicate": _count(fields.get("chunks_duplicate")),
        "percent_complete": percent(processed + failed, total),
        "created_at": _iso(fields.get("created_at")),
        "started_at": _iso(fields.get("started_at")),
        "completed_at": _iso(fields.get("completed_at")),
        "error_message": str(fields.get("error_message") or "") or None,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "priority": str(fields.get("priority") or "normal"),
        "generation": _count(fields.get("generation")),
        "duration_seconds": duration(fields.get("started_at") or fields.get("created_at"), fields.get("completed_at")),
    }


def duration(start: object, end: object) -> float | None:
    """Seconds from start to end (ISO 8601 strings or datetimes); None until it ended."""
    times = [value if isinstance(value, datetime) else _parse(value) for value in (start, end)]
    if times[0] is None or times[1] is None:
        return None
    return round((times[1] - times[0]).total_seconds(), 3)


def _parse(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


class DuplicateChunk(TypedDict):
    """A chunk of a job whose text the graph already held: its index, the LightRAG
    document that holds the text, and the job that document came from (None for a
    document this service did not write)."""

    index: int
    document: str
    holder_job_id: str | None


def duplicate_chunks(holders: Mapping[int, str]) -> list[DuplicateChunk]:
    """Index -> holding document, as the public list (by index)."""
    found: list[DuplicateChunk] = []
    for index, document in sorted(holders.items()):
        found.append({"index": index, "document": document, "holder_job_id": job_of_document(document)})
    return found
