"""What a job's tasks found or changed in the graph beyond their own outcome, recorded
before it: what a delete job's tasks and a replace job's retire removed (and where
that retire stands, for the job's chunks), and which chunks' text the graph already
held. Counted in the job, told as events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..events.bus import EventPublisher
from ..events.types import EventType
from ..metrics import Metrics
from ..queue.tasks import RETIRE, ChunkTask
from .tracker import JobTracker, RetireState
from .views import duplicate_chunks

DOC_IDS_IN_EVENT = 100  # an event names this many of a target's documents at most (the count is whole)


class JobLedger:
    """Records, before a task's own outcome (so the job's final row holds it):
    - what each delete task (or replace job's retire) removed: the job's
      `documents_removed` count (a retire also marks the job retired) and a
      `documents.deleted` event naming the documents;
    - the chunks whose text LightRAG already held (a content duplicate: processed,
      not a failure), each with the document that holds the text: the job's
      duplicates hash and `chunks_duplicate` count, a `chunks.duplicate` event and
      shield_chunks_duplicate_total.
    Answers where a replace job's retire stands."""

    def __init__(self, tracker: JobTracker, events: EventPublisher, metrics: Metrics) -> None:
        self._tracker = tracker
        self._events = events
        self._metrics = metrics

    async def record(self, task: ChunkTask, doc_ids: Sequence[str]) -> None:
        if doc_ids or task.op == RETIRE:
            await self._tracker.record_removed(task.job_id, len(doc_ids), retire=task.op == RETIRE)
        target = {"doc_id": task.doc_ref} if task.doc_ref else {"source_uri": task.source_uri}
        self._events.publish(
            EventType.DOCUMENTS_DELETED,
            {
                "job_id": task.job_id,
                "index": task.index,
                "step": "replace" if task.op == RETIRE else "delete",
                **target,
                "documents_removed": len(doc_ids),
                "doc_ids": list(doc_ids[:DOC_IDS_IN_EVENT]),
            },
        )

    async def retire_state(self, job_id: str) -> RetireState:
        return await self._tracker.retire_state(job_id)

    async def record_duplicates(self, job_id: str, holders: Mapping[int, str]) -> None:
        if not holders:
            return
        added = await self._tracker.record_duplicates(job_id, holders)
        if added > 0:
            self._metrics.chunks_duplicate.inc(added)
            self._events.publish(
                EventType.CHUNKS_DUPLICATE,
                {"job_id": job_id, "chunks": list(duplicate_chunks(holders)[:DOC_IDS_IN_EVENT])},
            )
