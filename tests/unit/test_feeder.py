"""What a LightRAG round does with each document, from its status."""

from __future__ import annotations

from shield_orchestrator.chunks import ChunkTask
from shield_orchestrator.faults import FaultKind
from shield_orchestrator.feeder import document_path, outcome_of, plan_round


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
