"""Did this job really land in the graph? Read back from LightRAG's own storages.

For every chunk of the job: its document is PROCESSED (or, for a chunk LightRAG
took as a content duplicate, the document that holds its text is), its chunk
vectors are in the vector store, and the entities extracted from it are
counted. The same answer from any host sharing the graph (the CLI's
`verify-job` and GET /jobs/{id}/verify). A replace job's chunks are its tasks
after the first (its retire); a delete job has no chunk to read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from typing_extensions import TypedDict

from ..queue.tasks import chunk_doc_id
from .boundary import DocRecord, LightRAGInstance
from .feeder import doc_status, field_of


class ChunkProblem(TypedDict):
    """Why one chunk of a job does not verify: its index (-1: the job as a whole),
    the document that should hold it, and what is wrong."""

    index: int
    document: str
    problem: str


class JobVerification(TypedDict):
    """What verify-job and GET /jobs/{id}/verify answer, read back from LightRAG's
    own storages: `verified` only when no problem was found (at most 100 listed)."""

    job_id: str
    chunks_total: int
    documents_processed: int
    duplicates: int
    chunk_vectors_expected: int
    chunk_vectors_found: int
    entities: int
    verified: bool
    problems: list[ChunkProblem]


@runtime_checkable
class JobVerifier(Protocol):
    """A processor that can read a job's chunks back from where it put them."""

    async def verify(self, job_id: str, indexes: Sequence[int]) -> JobVerification: ...


def chunk_indexes(job_type: str, chunks_total: int) -> range | None:
    """The indexes of a job's chunks: all of an ingest job's tasks, a replace job's
    after its retire; None for a delete job (it has none)."""
    if job_type == "delete":
        return None
    return range(1 if job_type == "replace" else 0, chunks_total)


async def verify_job(rag: LightRAGInstance, job_id: str, indexes: Sequence[int]) -> JobVerification:
    """Check these chunks of the job in LightRAG's storages (`rag`: an initialised LightRAG)."""
    ids = [chunk_doc_id(job_id, index) for index in indexes]
    docs = await rag.aget_docs_by_ids(ids)
    holders = await _duplicate_holders(rag, job_id, [doc_id for doc_id in ids if doc_id not in docs])
    if holders:
        docs = {**docs, **(await rag.aget_docs_by_ids(sorted(set(holders.values()))))}
    problems: list[ChunkProblem] = []
    processed: list[str] = []
    for index, doc_id in zip(indexes, ids, strict=True):
        document = holders.get(doc_id, doc_id)
        state = doc_status(docs.get(document))
        if state == "processed":
            processed.append(document)
        else:
            problems.append({"index": index, "document": document, "problem": f"status {state or 'absent'}"})
    expected, found = await _chunk_vectors(rag, [docs[doc_id] for doc_id in sorted(set(processed))])
    if found < expected:
        problems.append({"index": -1, "document": "", "problem": f"{expected - found} chunk vectors missing"})
    return {
        "job_id": job_id,
        "chunks_total": len(ids),
        "documents_processed": len(processed),
        "duplicates": len(holders),
        "chunk_vectors_expected": expected,
        "chunk_vectors_found": found,
        "entities": await _entity_count(rag, sorted(set(processed))),
        "verified": not problems,
        "problems": problems[:100],
    }


async def _duplicate_holders(rag: LightRAGInstance, job_id: str, absent: list[str]) -> dict[str, str]:
    """For chunks with no document of their own: the document their duplicate record
    points at, followed to one that exists."""
    if not absent:
        return {}
    from lightrag.base import DocStatus

    records = await rag.doc_status.get_docs_by_statuses([DocStatus.FAILED])
    wanted = set(absent)
    pointers: dict[str, str] = {}
    for record in records.values():
        metadata = field_of(record, "metadata")
        path = str(field_of(record, "file_path") or "")
        doc_id = path.split("__", 1)[0]
        if isinstance(metadata, Mapping) and metadata.get("is_duplicate") and doc_id in wanted:
            pointers[doc_id] = str(metadata.get("original_doc_id") or "")
    holders: dict[str, str] = {}
    for doc_id, original in pointers.items():
        seen = {doc_id}
        while original in pointers and original not in seen:
            seen.add(original)
            original = pointers[original]
        holders[doc_id] = original
    return holders


async def _chunk_vectors(rag: LightRAGInstance, docs: list[DocRecord]) -> tuple[int, int]:
    """(chunk vectors the documents should have, how many the vector store holds)."""
    chunk_ids = [str(chunk) for doc in docs for chunk in _listed(field_of(doc, "chunks_list"))]
    if not chunk_ids:
        return 0, 0
    found = await rag.chunks_vdb.get_by_ids(chunk_ids)
    return len(chunk_ids), sum(1 for item in found if item)


async def _entity_count(rag: LightRAGInstance, doc_ids: list[str]) -> int:
    entities: set[str] = set()
    for doc_id in doc_ids:
        record = await rag.full_entities.get_by_id(doc_id)
        entities.update(str(name) for name in _listed((record or {}).get("entity_names")))
    return len(entities)


def _listed(value: object) -> list[object]:
    """A list field of a LightRAG record (absent or null: empty)."""
    return list(value) if isinstance(value, list | tuple) else []
