"""Job types, their pure parts: the request shapes told apart by job_type, the
stream entries each type makes and reads back, which documents a delete or a
replace's retire removes, and the rebuild's reading of a chunk's own cache list."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from shield_orchestrator.jobs.requests import (
    UNKNOWN_JOB_TYPE,
    DeleteRequest,
    IngestRequest,
    JobRequest,
    ReplaceRequest,
    unknown_job_type_message,
)
from shield_orchestrator.lightrag.feeder import document_path
from shield_orchestrator.lightrag.handlers.delete import documents_of_source, listed_extractions, targets_of
from shield_orchestrator.queue.tasks import (
    DELETE,
    RETIRE,
    ChunkTask,
    MalformedEntry,
    delete_entry,
    replace_entries,
)

JOBS: TypeAdapter[Any] = TypeAdapter(JobRequest)


def test_a_body_without_job_type_is_an_ingest_job_and_each_type_has_its_shape() -> None:
    assert isinstance(JOBS.validate_python({"chunks": [{"text": "a"}]}), IngestRequest)
    assert isinstance(JOBS.validate_python({"job_type": "ingest", "chunks": [{"text": "a"}]}), IngestRequest)
    delete = JOBS.validate_python({"job_type": "delete", "documents": [{"doc_id": "d"}, {"source_uri": "s"}]})
    assert isinstance(delete, DeleteRequest) and len(delete.documents) == 2
    replace = JOBS.validate_python({"job_type": "replace", "source_uri": "s", "chunks": [{"text": "a"}]})
    assert isinstance(replace, ReplaceRequest) and replace.chunks[0].text == "a"


def test_an_unknown_job_type_is_refused_with_its_own_error_naming_the_type() -> None:
    body = {"job_type": "purge", "chunks": [{"text": "a"}]}
    with pytest.raises(ValidationError) as refused:
        JOBS.validate_python(body)
    (error,) = refused.value.errors()
    assert error["type"] == UNKNOWN_JOB_TYPE
    expected = "'purge' is not a job type this service runs; one of ingest, delete, replace"
    assert unknown_job_type_message(body) == expected


def test_each_type_makes_entries_a_worker_reads_back_as_the_same_tasks() -> None:
    by_source = ChunkTask.from_entry("1-0", delete_entry("j", 0, "", "file:///a"))
    by_id = ChunkTask.from_entry("1-1", delete_entry("j", 1, "chunk-x-3", ""))
    assert (by_source.op, by_source.source_uri, by_source.doc_ref) == (DELETE, "file:///a", "")
    assert (by_id.op, by_id.doc_ref, by_id.target) == (DELETE, "chunk-x-3", "doc_id chunk-x-3")
    retire, *chunks = [
        ChunkTask.from_entry(f"2-{number}", fields)
        for number, fields in enumerate(replace_entries("r", "s://m", [("one", {}), ("two", {"k": 1})], "text"))
    ]
    assert (retire.op, retire.index, retire.source_uri, retire.after_retire) == (RETIRE, 0, "s://m", False)
    assert [(c.index, c.text, c.source_uri, c.after_retire) for c in chunks] == [
        (1, "one", "s://m", True),
        (2, "two", "s://m", True),
    ]
    for task in (by_source, by_id, retire, *chunks):  # a dead letter's replay goes through to_entry
        again = ChunkTask.from_entry(task.entry_id, task.to_entry())
        assert again == task
    with pytest.raises(MalformedEntry, match="unknown op 'purge'"):
        ChunkTask.from_entry("3-0", {"job_id": "j", "index": "0", "op": "purge"})
    with pytest.raises(MalformedEntry, match="names neither"):
        ChunkTask.from_entry("3-1", {"job_id": "j", "index": "0", "op": DELETE})


def test_a_delete_removes_its_sources_own_documents_and_a_retire_spares_its_jobs() -> None:
    def doc(job: str, index: int, source: str) -> tuple[str, dict[str, str]]:
        task = ChunkTask("e", job, index, "t", source)
        return task.doc_id, {"file_path": document_path(task), "status": "processed"}

    docs = dict([doc("old", 0, "s://m"), doc("old", 1, "s://m"), doc("new", 1, "s://m"), doc("other", 0, "s://m2")])
    docs["doc-held-elsewhere"] = {"file_path": "chunk-old-0__s%3A%2F%2Fm"}  # names another document's path
    assert documents_of_source(docs, "s://m") == ["chunk-new-1", "chunk-old-0", "chunk-old-1"]
    delete = ChunkTask("e", "d", 0, "", "s://m", op=DELETE)
    assert targets_of(delete, docs) == ["chunk-new-1", "chunk-old-0", "chunk-old-1"]
    retire = ChunkTask("e", "new", 0, "", "s://m", op=RETIRE)
    assert targets_of(retire, docs) == ["chunk-old-0", "chunk-old-1"]
    assert targets_of(ChunkTask("e", "d", 1, "", "", op=DELETE, doc_ref="chunk-x-9"), docs) == ["chunk-x-9"]


class _Cache:
    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries = entries

    async def get_by_ids(self, ids: list[str]) -> list[dict[str, Any] | None]:
        return [self.entries.get(key) for key in ids]


def test_the_rebuild_takes_the_extractions_a_chunks_own_list_names() -> None:
    cache = _Cache(
        {
            "k-first": {"cache_type": "extract", "chunk_id": "chunk-a-0-chunk-000", "return": "A", "create_time": 5},
            "k-glean": {"cache_type": "extract", "chunk_id": "chunk-a-0-chunk-000", "return": "G", "create_time": 6},
            "k-summary": {"cache_type": "summary", "return": "S", "create_time": 1},
        }
    )
    found = {"chunk-c-0-chunk-000": [("C", 1)]}
    data = {
        "chunk-b-0-chunk-000": {"llm_cache_list": ["k-glean", "k-first", "k-summary", "k-gone"]},
        "chunk-c-0-chunk-000": {"llm_cache_list": ["k-c"]},
    }
    chunk_ids = {"chunk-b-0-chunk-000", "chunk-c-0-chunk-000", "chunk-d-0-chunk-000"}
    merged = asyncio.run(listed_extractions(cache, chunk_ids, data, found))
    assert merged == {"chunk-c-0-chunk-000": [("C", 1)], "chunk-b-0-chunk-000": [("A", 5), ("G", 6)]}
    assert list(merged) == ["chunk-c-0-chunk-000", "chunk-b-0-chunk-000"]  # oldest first, as LightRAG orders them
