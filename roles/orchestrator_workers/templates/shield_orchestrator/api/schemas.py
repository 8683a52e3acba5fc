"""Request and response bodies of the API, and the checks that depend on the deployment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .. import bounds
from ..jobs.requests import (
    DOCUMENT_SHAPE,
    JOB_SHAPE,
    ChunkIn,
    DeleteRequest,
    IngestRequest,
    JobRequest,
    Metadata,
    ReplaceRequest,
    shape_by_key,
)
from ..settings import Settings

__all__ = ["ChunkIn", "DeleteRequest", "IngestRequest", "JobRequest", "Metadata", "ReplaceRequest"]


class ApiError(Exception):
    """An answer other than success: status, a message naming the field, headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class IngestAccepted(BaseModel):
    """A job accepted whole (202): every chunk is in the stream; `status_url` follows it."""

    job_id: Annotated[str, Field(json_schema_extra={"format": "uuid"})]
    status: str
    chunks_total: int
    status_url: str


class CancelResult(BaseModel):
    """The job is cancelled (by this call, or `already_cancelled` before): its chunks
    not yet handed to LightRAG are acked unprocessed; those in LightRAG, or on their
    way into it, stay."""

    job_id: str
    status: str
    chunks_in_lightrag: int = Field(
        description="chunks processed, or handed to LightRAG, before the cancel: they stay in the graph, "
        "and the job ends with this many processed (fewer only if one of them fails)"
    )
    already_cancelled: bool


JobIdField = Annotated[
    str, Field(pattern=bounds.UUID_PATTERN, json_schema_extra={"format": "uuid"}, description="a job id (a UUID)")
]
EntryId = Annotated[str, Field(pattern=bounds.STREAM_ID_PATTERN, description="a dead letter's id (<ms>-<seq>)")]


class ReplayIds(BaseModel):
    """Replay these dead letters."""

    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[EntryId], Field(min_length=1, max_length=1000)]


class ReplayJob(BaseModel):
    """Replay every dead letter of this job."""

    model_config = ConfigDict(extra="forbid")
    job_id: JobIdField


class ReplayAll(BaseModel):
    """Replay every dead letter."""

    model_config = ConfigDict(extra="forbid")
    all: Literal[True]


SHAPE = "shape:"  # a union member's tag: in an error's location, not a field


replay_shape = shape_by_key(SHAPE, "ids", "job_id", "all")


# Exactly one of the three shapes (each forbids the others' fields): oneOf in the spec.
ReplayRequest = Annotated[
    Annotated[ReplayIds, Tag(SHAPE + "ids")]
    | Annotated[ReplayJob, Tag(SHAPE + "job_id")]
    | Annotated[ReplayAll, Tag(SHAPE + "all")],
    Discriminator(
        replay_shape,
        custom_error_type="replay_shape",
        custom_error_message="give exactly one of ids, job_id or all=true",
    ),
]


class ReplayResult(BaseModel):
    """How many dead letters went back into their jobs and streams, the jobs that took
    them back, and the jobs skipped (unknown, or cancelled)."""

    replayed: int
    jobs: list[str]
    skipped_jobs: list[str]


class FieldError(BaseModel):
    """One invalid field of a refused request, and what is wrong with it."""

    field: Annotated[str, Field(description='The field, as a path: "chunks[3].text", "metadata", "job_id"')]
    message: str


class ErrorBody(BaseModel):
    """Every refusal and failure the API answers (4xx/5xx) has this body."""

    detail: Annotated[str, Field(description="What is wrong, starting with the field it concerns")]
    errors: Annotated[list[FieldError], Field(description="One entry per invalid field")] = []


def field_path(loc: Sequence[int | str]) -> str:
    """("body", "chunks", 3, "text") -> "chunks[3].text"."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header") or (
            isinstance(part, str) and part.startswith((SHAPE, DOCUMENT_SHAPE, JOB_SHAPE))
        ):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def validate_job(body: IngestRequest | DeleteRequest | ReplaceRequest, settings: Settings) -> None:
    """Limits that depend on the deployment (the document's maxItems and maxLength):
    a field over its limit is invalid, 422 naming it. 413 is the body limit's alone."""
    if isinstance(body, DeleteRequest):
        if len(body.documents) > settings.max_chunks_per_job:
            raise ApiError(
                422,
                f"documents: {len(body.documents)} documents exceed max_chunks_per_job "
                f"({settings.max_chunks_per_job}); split the job",
            )
        return
    validate_ingest(body, settings)


def validate_ingest(body: IngestRequest | ReplaceRequest, settings: Settings) -> None:
    """An ingest or replace job's deployment limits (validate_job)."""
    if len(body.chunks) > settings.max_chunks_per_job:
        raise ApiError(
            422,
            f"chunks: {len(body.chunks)} chunks exceed max_chunks_per_job ({settings.max_chunks_per_job}); "
            "split the job",
        )
    texts: list[str] = [chunk.text for chunk in body.chunks]
    for index, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        if size > settings.max_chunk_bytes:
            raise ApiError(
                422, f"chunks[{index}].text: {size} bytes exceed max_chunk_bytes ({settings.max_chunk_bytes})"
            )


def request_body_limit(settings: Settings) -> int:
    """The largest ingest body a valid job can need: every chunk at its size limit,
    JSON-escaped at worst twice as long, plus room for its metadata."""
    return settings.max_chunks_per_job * (settings.max_chunk_bytes * 2 + 4096) + 65536


class QueueView(BaseModel):
    """GET /queue: the queue at a glance (the console's header)."""

    queue_depth: int
    high_priority_depth: int
    pending: int
    waiting: int
    dead_letters: int
    processing_rate: Annotated[float, Field(description="chunks per second over the last minute, this host")]


class WorkerView(BaseModel):
    """One consumer of the group, as its heartbeat says: `alive` while the heartbeat lives;
    once it has lapsed, state `silent` and host and counters null. `pending`: what it holds unacked."""

    consumer: str
    host: str | None
    state: str
    tasks_done: int | None
    heartbeat_age_seconds: float | None
    alive: bool
    pending: int


class WorkerList(BaseModel):
    """GET /workers: every consumer of the group, on every host, with its heartbeat."""

    workers: list[WorkerView]
    count: int


class LLMSlotsView(BaseModel):
    """GET /llm: the chat calls' slots - this host's and its 429 back-off, the cluster's cap and
    its leases by host (lightrag/llm/slots.py)."""

    host: str
    slots: Annotated[int, Field(description="chat calls this host may make at once (llm_max_async)")]
    slots_in_use: Annotated[
        int, Field(description="this host's slots taken: in the endpoint, or waiting (back-off, cluster slot)")
    ]
    cluster_max_async: Annotated[int, Field(description="the cap across the hosts sharing Redis; 0: none")]
    cluster_slots_in_use: Annotated[
        int | None, Field(description="leases live in Redis, every host's; null without a cap or when Redis is down")
    ]
    cluster_slots_this_host: int | None
    cluster_slots_by_host: dict[str, int]
    cluster_error: Annotated[str | None, Field(description="why the cluster's leases could not be read")]
    rate_limited: Annotated[int, Field(description="429 answers of the LLM endpoint since this process started")]
    backoff_seconds: Annotated[float, Field(description="seconds left of this host's 429 back-off; 0: none")]
    last_rate_limited_at: str | None


class DeadLetterView(BaseModel):
    """A chunk that failed for good: its job and index, the start of its text, the error
    it was dead-lettered with and the attempts it spent."""

    id: str
    job_id: str
    chunk_index: int
    source_uri: str
    text_preview: str
    error: str
    attempts: int
    dead_lettered_at: str


class DeadLetterList(BaseModel):
    """Dead letters, newest first: at most `limit`, of one job if asked."""

    dead_letters: list[DeadLetterView]
    count: int


class Discarded(BaseModel):
    """The id of the dead letter deleted for good (never replayed)."""

    discarded: str
