"""What a client asks the service to ingest: the job request and its chunks, as
validated at the door (each field bounded to what the stores accept: bounds.py).
The API declares them in its contract; the intake turns them into stream entries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, WithJsonSchema

from .. import bounds

# Bounded free-form JSON (bounds.py): the checks, and the schema that says them.
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(lambda value: bounds.check_metadata(value, bounds.METADATA_MAX_BYTES)),
    WithJsonSchema(bounds.metadata_schema(bounds.METADATA_MAX_BYTES)),
]


class ChunkIn(BaseModel):
    """One chunk of a job: its text, where it came from, free-form metadata."""

    text: Annotated[
        StrictStr,
        AfterValidator(bounds.check_text),
        Field(
            description="The chunk's text: at most max_chunk_bytes bytes as UTF-8 (maxLength is that bound in "
            "characters; 422 above); not only whitespace and HTML entities; no NUL or lone surrogate.",
            json_schema_extra={"pattern": bounds.TEXT_PATTERN},
        ),
    ]
    source_uri: Annotated[
        StrictStr,
        Field(max_length=bounds.SOURCE_URI_MAX_CHARS, json_schema_extra={"pattern": bounds.NO_NUL_PATTERN}),
        AfterValidator(bounds.check_encodable),
    ] = ""
    metadata: Metadata = Field(default_factory=dict)


class IngestRequest(BaseModel):
    """A job: its chunks, their source type, metadata and priority."""

    model_config = ConfigDict(extra="ignore")

    chunks: Annotated[
        list[ChunkIn],
        Field(min_length=1, description="At least one chunk, at most max_chunks_per_job (422 above)."),
    ]
    source_type: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=bounds.SOURCE_TYPE_MAX_CHARS,
            json_schema_extra={"pattern": bounds.SOURCE_TYPE_PATTERN},
        ),
        AfterValidator(bounds.check_source_type),
    ] = "text"
    metadata: Metadata = Field(default_factory=dict)
    priority: Literal["high", "normal"] = "normal"
