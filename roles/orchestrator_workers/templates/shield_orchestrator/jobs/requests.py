"""What a client asks the service to do: a job of one of its types, as validated at
the door (each field bounded to what the stores accept: bounds.py). The API
declares them in its contract; the intake turns them into stream entries.

- `ingest` (the default when `job_type` is absent): chunks of text into the graph;
- `delete`: documents out of the graph, by LightRAG document id or by source_uri;
- `replace`: the new text of a source_uri: its old documents out, then its chunks in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictStr,
    Tag,
    WithJsonSchema,
)

from .. import bounds

# Bounded free-form JSON (bounds.py): the checks, and the schema that says them.
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(lambda value: bounds.check_metadata(value, bounds.METADATA_MAX_BYTES)),
    WithJsonSchema(bounds.metadata_schema(bounds.METADATA_MAX_BYTES)),
]


SourceUri = Annotated[
    StrictStr,
    Field(max_length=bounds.SOURCE_URI_MAX_CHARS, json_schema_extra={"pattern": bounds.NO_NUL_PATTERN}),
    AfterValidator(bounds.check_encodable),
]
Priority = Literal["high", "normal"]
SourceType = Annotated[
    StrictStr,
    Field(
        min_length=1, max_length=bounds.SOURCE_TYPE_MAX_CHARS, json_schema_extra={"pattern": bounds.SOURCE_TYPE_PATTERN}
    ),
    AfterValidator(bounds.check_source_type),
]


ChunkText = Annotated[
    StrictStr,
    AfterValidator(bounds.check_text),
    Field(
        description="The chunk's text: at most max_chunk_bytes bytes as UTF-8 (maxLength is that bound in "
        "characters; 422 above); not only whitespace and HTML entities; no NUL or lone surrogate.",
        json_schema_extra={"pattern": bounds.TEXT_PATTERN},
    ),
]


class ChunkIn(BaseModel):
    """One chunk of a job: its text, where it came from, free-form metadata."""

    text: ChunkText
    source_uri: SourceUri = ""
    metadata: Metadata = Field(default_factory=dict)


class IngestRequest(BaseModel):
    """An ingest job: its chunks, their source type, metadata and priority."""

    model_config = ConfigDict(extra="ignore")

    job_type: Literal["ingest"] = "ingest"

    chunks: Annotated[
        list[ChunkIn],
        Field(min_length=1, description="At least one chunk, at most max_chunks_per_job (422 above)."),
    ]
    source_type: SourceType = "text"
    metadata: Metadata = Field(default_factory=dict)
    priority: Priority = "normal"


class DocumentById(BaseModel):
    """A document by its LightRAG id (`chunk-<job id>-<index>`, as verify-job lists them)."""

    model_config = ConfigDict(extra="forbid")
    doc_id: Annotated[StrictStr, Field(min_length=1, max_length=bounds.DOC_ID_MAX_CHARS, pattern=bounds.DOC_ID_PATTERN)]


class DocumentsBySource(BaseModel):
    """Every document whose chunk came with this source_uri."""

    model_config = ConfigDict(extra="forbid")
    source_uri: Annotated[SourceUri, Field(min_length=1)]


DOCUMENT_SHAPE = "document:"  # a union member's tag: in an error's location, not a field


def shape_by_key(prefix: str, *keys: str) -> Callable[[Any], str | None]:
    """A union's discriminator for members told apart by their keys: the tag
    `prefix + key` of the first of `keys` a body has (None: none of them)."""

    def shape(value: Any) -> str | None:
        if isinstance(value, dict):
            for key in keys:
                if key in value:
                    return prefix + key
        return None

    return shape


document_shape = shape_by_key(DOCUMENT_SHAPE, "doc_id", "source_uri")


# Exactly one of doc_id or source_uri (each shape forbids the other's field): oneOf in the spec.
DocumentRef = Annotated[
    Annotated[DocumentById, Tag(DOCUMENT_SHAPE + "doc_id")]
    | Annotated[DocumentsBySource, Tag(DOCUMENT_SHAPE + "source_uri")],
    Discriminator(
        document_shape,
        custom_error_type="document_shape",
        custom_error_message="give exactly one of doc_id or source_uri",
    ),
]


class DeleteRequest(BaseModel):
    """A delete job: the documents to remove from the graph (each target one task)."""

    model_config = ConfigDict(extra="forbid")

    job_type: Literal["delete"]
    documents: Annotated[
        list[DocumentRef],
        Field(min_length=1, description="At least one document, at most max_chunks_per_job (422 above)."),
    ]
    metadata: Metadata = Field(default_factory=dict)
    priority: Priority = "normal"


class ReplaceChunk(BaseModel):
    """One chunk of a replace job's new text: its text and free-form metadata (its
    source is the job's source_uri)."""

    model_config = ConfigDict(extra="forbid")

    text: ChunkText
    metadata: Metadata = Field(default_factory=dict)


class ReplaceRequest(BaseModel):
    """A replace job: the new text of one source_uri. Its first task removes the
    documents the graph holds for that source_uri; its chunks enter after it."""

    model_config = ConfigDict(extra="forbid")

    job_type: Literal["replace"]
    source_uri: Annotated[SourceUri, Field(min_length=1, description="The source whose documents are replaced.")]
    chunks: Annotated[
        list[ReplaceChunk],
        Field(
            min_length=1,
            description="The new text, at least one chunk, at most max_chunks_per_job (422 above); each has the "
            "job's source_uri.",
        ),
    ]
    source_type: SourceType = "text"
    metadata: Metadata = Field(default_factory=dict)
    priority: Priority = "normal"


JOB_TYPES = ("ingest", "delete", "replace")
JOB_SHAPE = "job:"  # a union member's tag: in an error's location, not a field


def job_shape(value: Any) -> str | None:
    """The job type a body names (`ingest` when it names none); None for a type this
    service does not run. A body that is not an object is read as an ingest job, whose
    validation says what is wrong with it."""
    if not isinstance(value, dict):
        return JOB_SHAPE + "ingest"
    job_type = value.get("job_type", "ingest")
    return JOB_SHAPE + job_type if job_type in JOB_TYPES else None


UNKNOWN_JOB_TYPE = "unknown_job_type"

# A job of one of the service's types: oneOf in the spec, told apart by job_type.
JobRequest = Annotated[
    Annotated[IngestRequest, Tag(JOB_SHAPE + "ingest")]
    | Annotated[DeleteRequest, Tag(JOB_SHAPE + "delete")]
    | Annotated[ReplaceRequest, Tag(JOB_SHAPE + "replace")],
    Discriminator(
        job_shape,
        custom_error_type=UNKNOWN_JOB_TYPE,
        custom_error_message="not a job type this service runs; one of " + ", ".join(JOB_TYPES),
    ),
]


def unknown_job_type_message(body: object) -> str:
    """The 422's message for a body whose job_type is none of JOB_TYPES, naming it."""
    named = body.get("job_type") if isinstance(body, dict) else None
    return f"{named!r} is not a job type this service runs; one of {', '.join(JOB_TYPES)}"
