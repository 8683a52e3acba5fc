"""Chunk tasks: how a chunk travels through the stream (its entry's fields) and
the task a worker makes of an entry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class MalformedEntry(ValueError):
    """A stream entry that is not a chunk task (never retried: dead-lettered at once)."""


@dataclass(frozen=True)
class ChunkTask:
    """One chunk as a worker handles it: the stream entry it came in (id and stream), its
    job, index, text and metadata. Its doc_id depends on job and index only, so every
    delivery of a chunk is the same LightRAG document."""

    entry_id: str
    job_id: str
    index: int
    text: str
    source_uri: str = ""
    source_type: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: str = ""  # the stream the entry came from (high or normal priority)

    @property
    def doc_id(self) -> str:
        """LightRAG document id: stable across redeliveries of the same chunk."""
        return f"chunk-{self.job_id}-{self.index}"

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str], stream: str = "") -> ChunkTask:
        try:
            metadata = json.loads(fields.get("metadata") or "{}")
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not a JSON object")
            return cls(
                entry_id=entry_id,
                job_id=fields["job_id"],
                index=int(fields["index"]),
                text=fields["text"],
                source_uri=fields.get("source_uri", ""),
                source_type=fields.get("source_type", "text"),
                metadata=metadata,
                stream=stream,
            )
        except (KeyError, ValueError) as exc:
            raise MalformedEntry(f"stream entry {entry_id} is not a chunk task: {exc!r}") from None

    def to_entry(self) -> dict[str, str]:
        """The stream entry fields of this chunk (entry_id aside)."""
        return chunk_entry(self.job_id, self.index, self.text, self.source_uri, self.source_type, self.metadata)


def chunk_entry(
    job_id: str, index: int, text: str, source_uri: str, source_type: str, metadata: Mapping[str, Any]
) -> dict[str, str]:
    """The stream entry fields of one chunk."""
    return {
        "job_id": job_id,
        "index": str(index),
        "text": text,
        "source_uri": source_uri,
        "source_type": source_type,
        "metadata": json.dumps(metadata, separators=(",", ":")),
    }
