"""Request and response bodies of the API, and the checks that depend on the deployment."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .settings import Settings


class ApiError(Exception):
    """An answer other than success: status, a message naming the field, headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ChunkIn(BaseModel):
    text: StrictStr
    source_uri: StrictStr = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chunks: list[ChunkIn]
    source_type: StrictStr = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["high", "normal"] = "normal"


class IngestAccepted(BaseModel):
    job_id: str
    status: str
    chunks_total: int
    status_url: str


class CancelResult(BaseModel):
    job_id: str
    status: str
    chunks_in_lightrag: int = Field(description="chunks processed before the cancel; they stay in the graph")
    already_cancelled: bool


class ReplayRequest(BaseModel):
    """Exactly one of: the letters' ids, a job (all its letters), or all letters."""

    model_config = ConfigDict(extra="forbid")

    ids: list[StrictStr] | None = Field(default=None, min_length=1, max_length=1000)
    job_id: uuid.UUID | None = None
    all: bool = False

    def chosen(self) -> str:
        picked = [name for name, value in (("ids", self.ids), ("job_id", self.job_id), ("all", self.all)) if value]
        if len(picked) != 1:
            raise ApiError(422, "body: give exactly one of ids, job_id or all=true")
        return picked[0]


class ReplayResult(BaseModel):
    replayed: int
    jobs: list[str]
    skipped_jobs: list[str]


def field_path(loc: Sequence[int | str]) -> str:
    """("body", "chunks", 3, "text") -> "chunks[3].text"."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def validate_ingest(body: IngestRequest, settings: Settings) -> None:
    """Limits that depend on the deployment; raise ApiError naming the field."""
    if not body.chunks:
        raise ApiError(422, "chunks: at least one chunk is required")
    if len(body.chunks) > settings.max_chunks_per_job:
        raise ApiError(
            413,
            f"chunks: {len(body.chunks)} chunks exceed max_chunks_per_job ({settings.max_chunks_per_job}); "
            "split the job",
        )
    for index, chunk in enumerate(body.chunks):
        if not chunk.text.strip():
            raise ApiError(422, f"chunks[{index}].text: must be a non-empty string")
        size = len(chunk.text.encode("utf-8"))
        if size > settings.max_chunk_bytes:
            raise ApiError(
                413, f"chunks[{index}].text: {size} bytes exceed max_chunk_bytes ({settings.max_chunk_bytes})"
            )


def request_body_limit(settings: Settings) -> int:
    """The largest ingest body a valid job can need: every chunk at its size limit,
    JSON-escaped at worst twice as long, plus room for its metadata."""
    return settings.max_chunks_per_job * (settings.max_chunk_bytes * 2 + 4096) + 65536
