"""Tasks: how a job's unit of work travels through the stream (its entry's fields)
and the task a worker makes of an entry. An ingest job's task is a chunk; a delete
job's, one document reference (`op` "delete": a doc_id, or a source_uri); a replace
job's, first the removal of its source_uri's old documents (`op` "retire", index 0),
then its chunks (`after_retire`: they enter LightRAG once the removal is done)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INGEST = "ingest"
DELETE = "delete"
RETIRE = "retire"
OPS = frozenset({INGEST, DELETE, RETIRE})
REMOVALS = frozenset({DELETE, RETIRE})  # the ops that take documents out of the graph


CHUNK_DOCUMENT = re.compile(r"^chunk-(?P<job>.+)-(?P<index>[0-9]+)$")


def chunk_doc_id(job_id: str, index: int) -> str:
    """The LightRAG document of a job's chunk: the same for every delivery of it."""
    return f"chunk-{job_id}-{index}"


def job_of_document(doc_id: str) -> str | None:
    """The job whose chunk a LightRAG document is (chunk_doc_id's inverse); None for a
    document this service did not write."""
    match = CHUNK_DOCUMENT.match(doc_id)
    return match["job"] if match else None


class MalformedEntry(ValueError):
    """A stream entry that is not a task (never retried: dead-lettered at once)."""


@dataclass(frozen=True)
class ChunkTask:
    """One task as a worker handles it: the stream entry it came in (id and stream), its
    job and index; for a chunk (op ingest) its text and metadata; for a delete, the
    document it names (`doc_ref`) or its source_uri. Its doc_id depends on job and
    index only, so every delivery of a chunk is the same LightRAG document (and every
    delivery of a delete the same key of its outcome)."""

    entry_id: str
    job_id: str
    index: int
    text: str
    source_uri: str = ""
    source_type: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: str = ""  # the stream the entry came from (high or normal priority)
    op: str = INGEST
    doc_ref: str = ""  # a delete's document id ("" for a delete by source_uri)
    after_retire: bool = False  # a replace job's chunk: it waits for the job's retire (index 0)

    @property
    def doc_id(self) -> str:
        """LightRAG document id: stable across redeliveries of the same chunk."""
        return chunk_doc_id(self.job_id, self.index)

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str], stream: str = "") -> ChunkTask:
        try:
            op = fields.get("op", INGEST)
            if op not in OPS:
                raise ValueError(f"unknown op {op!r}")
            if op in REMOVALS:
                if not (fields.get("doc_ref") or fields.get("source_uri")):
                    raise ValueError(f"a {op} names neither doc_ref nor source_uri")
                return cls(
                    entry_id=entry_id,
                    job_id=fields["job_id"],
                    index=int(fields["index"]),
                    text="",
                    source_uri=fields.get("source_uri", ""),
                    stream=stream,
                    op=op,
                    doc_ref=fields.get("doc_ref", ""),
                )
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
                after_retire=fields.get("after") == RETIRE,
            )
        except (KeyError, ValueError) as exc:
            raise MalformedEntry(f"stream entry {entry_id} is not a chunk task: {exc!r}") from None

    def to_entry(self) -> dict[str, str]:
        """The stream entry fields of this task (entry_id aside)."""
        if self.op == RETIRE:
            return retire_entry(self.job_id, self.source_uri)
        if self.op == DELETE:
            return delete_entry(self.job_id, self.index, self.doc_ref, self.source_uri)
        fields = chunk_entry(self.job_id, self.index, self.text, self.source_uri, self.source_type, self.metadata)
        if self.after_retire:
            fields["after"] = RETIRE
        return fields

    @property
    def target(self) -> str:
        """What a delete names, for messages and events."""
        return f"doc_id {self.doc_ref}" if self.doc_ref else f"source_uri {self.source_uri}"


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


def delete_entry(job_id: str, index: int, doc_ref: str, source_uri: str) -> dict[str, str]:
    """The stream entry fields of one document reference of a delete job."""
    fields = {"job_id": job_id, "index": str(index), "op": DELETE}
    if doc_ref:
        fields["doc_ref"] = doc_ref
    else:
        fields["source_uri"] = source_uri
    return fields


def retire_entry(job_id: str, source_uri: str) -> dict[str, str]:
    """The stream entry fields of a replace job's first task: its source's old documents out."""
    return {"job_id": job_id, "index": "0", "op": RETIRE, "source_uri": source_uri}


def replace_entries(
    job_id: str, source_uri: str, chunks: list[tuple[str, dict[str, Any]]], source_type: str
) -> list[dict[str, str]]:
    """A replace job's entries: the retire (index 0), then each chunk (text, metadata)
    with the job's source_uri, waiting for it."""
    entries = [retire_entry(job_id, source_uri)]
    for index, (text, metadata) in enumerate(chunks, start=1):
        fields = chunk_entry(job_id, index, text, source_uri, source_type, metadata)
        fields["after"] = RETIRE
        entries.append(fields)
    return entries
