"""What a LightRAG round does with each document, from its status."""

from __future__ import annotations

import asyncio
from typing import Any

from shield_orchestrator.lightrag.feeder import LightRAGFeeder, document_path, outcome_of, plan_round
from shield_orchestrator.queue.tasks import ChunkTask
from shield_orchestrator.workers.breaker import DependencyGate
from shield_orchestrator.workers.faults import FaultKind, chunk_fault


def task(index: int, source: str = "") -> ChunkTask:
    return ChunkTask(entry_id=f"1-{index}", job_id="j", index=index, text=f"text {index}", source_uri=source)


def test_plan_round_by_status() -> None:
    tasks = [task(i) for i in range(5)]
    docs = {
        "chunk-j-0": {"status": "processed"},
        "chunk-j-1": {"status": "FAILED"},
        "chunk-j-2": {"status": "processing"},
        "chunk-j-3": {"status": "pending"},
    }
    plan = plan_round(tasks, docs)
    assert plan.done == {"chunk-j-0": None}
    assert plan.reset == ["chunk-j-1"]
    assert plan.running == ["chunk-j-2", "chunk-j-3"]
    assert [t.doc_id for t in plan.insert] == ["chunk-j-4"]


def test_outcomes() -> None:
    assert outcome_of({"status": "processed"}, "d") is None
    failed = outcome_of({"status": "failed", "error_msg": "BadRequestError: Error code: 400"}, "d")
    assert failed is not None and failed.kind is FaultKind.CHUNK and failed.message.startswith("d: ")
    down = outcome_of({"status": "failed", "error_msg": "APIConnectionError: Connection error."}, "d")
    assert down is not None and down.transient
    still = outcome_of({"status": "processing"}, "d")
    assert still is not None and still.transient
    absent = outcome_of(None, "d")
    assert absent is not None and absent.kind is FaultKind.CHUNK


def test_every_chunk_gets_its_own_file_path() -> None:
    assert document_path(task(3, "s3://bucket/a b.txt")) == "chunk-j-3__s3%3A%2F%2Fbucket%2Fa%20b.txt"
    assert document_path(task(4)) == "chunk-j-4__inline"


Record = dict[str, Any]
_RECORD = {"content_summary": "text", "content_length": 4, "created_at": "t0", "updated_at": "t1", "file_path": "f"}


class _FakeDocStatus:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.upserts: list[dict[str, dict[str, Any]]] = []

    async def upsert(self, updates: dict[str, dict[str, Any]]) -> None:
        self.upserts.append(updates)
        self.docs.update(updates)


class _FakeFullDocs:
    async def get_by_id(self, doc_id: str) -> dict[str, str]:
        return {"content": f"text of {doc_id}"}


class _FakeRag:
    """What the feeder's on_drop reads and writes of LightRAG."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.doc_status = _FakeDocStatus(docs)
        self.full_docs = _FakeFullDocs()

    async def aget_docs_by_ids(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {doc_id: self.doc_status.docs[doc_id] for doc_id in ids if doc_id in self.doc_status.docs}

    def _build_pending_reset_update(self, doc: Any, content: dict[str, str]) -> tuple[Record, str, Record]:
        return {"status": "pending", "content_summary": content["content"][:10]}, "", {}


class _DroppingCommit:
    """A group commit whose next commit follows a drop of LightRAG's buffers: it awaits on_drop first."""

    def __init__(self) -> None:
        self.on_drop: Any = None
        self.durables = 0

    async def durable(self) -> None:
        self.durables += 1
        await self.on_drop()


def test_after_a_dropped_buffer_the_rounds_processed_documents_are_processed_again() -> None:
    """LightRAG dropped its pending buffers mid-round: before the next commit, what it
    marked PROCESSED in that round goes back to PENDING (the feeder's on_drop) and is
    answered transient; the rest is untouched."""
    tasks = [task(i) for i in range(3)]
    rag = _FakeRag(
        {
            "chunk-j-0": {"status": "processed", **_RECORD},
            "chunk-j-1": {"status": "failed", "error_msg": "Error code: 400", **_RECORD},
            "chunk-j-2": {"status": "processed", **_RECORD},
            "chunk-j-9": {"status": "processed", **_RECORD},  # answered in an earlier round: left alone
        }
    )
    commit = _DroppingCommit()
    feeder = LightRAGFeeder(
        rag,
        asyncio.Lock(),
        DependencyGate(lambda _change: None),
        str,
        _always,
        round_timeout=60,
        commit=commit,  # type: ignore[arg-type]
    )
    assert commit.on_drop == feeder._on_drop
    refused = chunk_fault("document chunk-j-1: Error code: 400")

    async def pipeline(_tasks: Any) -> dict[str, Any]:
        return {"chunk-j-0": None, "chunk-j-1": refused, "chunk-j-2": None}

    feeder._run_pipeline = pipeline  # type: ignore[method-assign]
    answered = asyncio.run(feeder._round(tasks))
    assert commit.durables == 1
    assert set(rag.doc_status.upserts[0]) == {"chunk-j-0", "chunk-j-2"}
    assert rag.doc_status.docs["chunk-j-0"]["status"] == "pending"
    for doc_id in ("chunk-j-0", "chunk-j-2"):
        outcome = answered[doc_id]
        assert outcome is not None and outcome.transient and "processed again" in outcome.message
    assert answered["chunk-j-1"] is refused
    asyncio.run(feeder._on_drop())  # no round running: nothing to reset
    assert len(rag.doc_status.upserts) == 1


async def _always() -> bool:
    return True
