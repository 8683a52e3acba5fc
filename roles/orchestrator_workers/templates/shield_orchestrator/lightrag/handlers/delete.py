"""Delete jobs' handler (and replace jobs' first step): documents out of the LightRAG
workspace, serialized with the writer.

LightRAG's own delete (`adelete_by_doc_id`) removes a document's status, its
chunks, the entities and relations only it supported, and their vectors; an
entity or relation other documents share keeps their part (rebuilt from
their cached extraction). LightRAG refuses it while its pipeline is busy, and
the feeder keeps that pipeline busy while documents are in flight. So a
delete runs as verify-graph does: the feeder quiesced (admission paused, its
documents in flight ended and committed), then under the workspace lock (the
writer's lease and, on PostgreSQL, its fence: a delete by a superseded host is
refused like any stale write). Deletes that arrive together share one such
section. Ingestion waits meanwhile; extraction ahead goes on (it holds no lock).

A delete names a document by id, or every document whose chunk came with a
source_uri (its LightRAG file path is `<doc id>__<quoted source_uri>`,
feeder.document_path). A replace job's retire removes every document of its
source_uri but the job's own (none yet: its chunks wait for the retire,
replace.py; a redelivered retire spares those that entered since). A chunk
whose text LightRAG already held under another document made no document of
its own: deleting its source_uri leaves the holder, which belongs to the
holder's source.

LightRAG rebuilds what a deleted document shared with others from the cached
extractions of the chunks that remain: those listed in each chunk's
`llm_cache_list` whose cache entry names that chunk. An entry is written once,
by the first chunk of its text; a later chunk of the same text (another
document, a replaced one) lists the entry but is not named in it, and LightRAG
then leaves the deleted chunks named as sources of what it shares.
`patch_rebuild_attribution` has the rebuild take, for such a chunk, the
extraction entries its own list names (the same prompt, so the same answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from ...jobs.tracker import RetireState
from ...queue.tasks import RETIRE, ChunkTask, job_of_document
from ...workers.faults import STORAGE, Failure, classify_exception, classify_message, job_cancelled, transient
from ...workers.processor import Admission
from ..boundary import DocRecord, LightRAGInstance
from ..feeder import field_of

log = logging.getLogger("shield_orchestrator.lightrag")

BUSY_WAIT_SECONDS = 30.0  # LightRAG's pipeline ends its last run this long at most after the feeder quiesced
BUSY_POLL_SECONDS = 0.05


class Removals(Protocol):
    """jobs/ledger.py's RemovalLedger: what a task removed, recorded before it is
    answered; where a replace job's retire stands."""

    async def record(self, task: ChunkTask, doc_ids: Sequence[str]) -> None: ...

    async def retire_state(self, job_id: str) -> RetireState: ...


@dataclass
class _Pending:
    task: ChunkTask
    admit: Admission
    future: asyncio.Future[Failure | None]


def source_suffix(source_uri: str) -> str:
    """The end of the file path of every document whose chunk came with source_uri."""
    return "__" + quote(source_uri, safe="")


def documents_of_source(docs: dict[str, DocRecord], source_uri: str) -> list[str]:
    """The ids of the documents whose own chunk came with source_uri."""
    suffix = source_suffix(source_uri)
    return sorted(doc_id for doc_id, doc in docs.items() if str(field_of(doc, "file_path") or "") == doc_id + suffix)


def targets_of(task: ChunkTask, docs: dict[str, DocRecord]) -> list[str]:
    """The documents a task removes: the one it names; every one of its source_uri;
    for a retire, every one of its source_uri but its own job's."""
    if task.doc_ref:
        return [task.doc_ref]
    found = documents_of_source(docs, task.source_uri)
    if task.op == RETIRE:
        found = [doc_id for doc_id in found if job_of_document(doc_id) != task.job_id]
    return found


class DocumentDeleter:
    """Runs delete tasks. Owns their queue and the one runner that serves it: each
    round takes every task queued, quiesces the feeder (`quiesced`), holds the
    workspace lock, deletes, makes the deletion durable (`durable`, the file
    storages' group commit) and records what each task removed (`record`) before
    answering it. Guarantees: every submitted task gets one outcome; a task of a job
    cancelled before it ran is answered cancelled and deletes nothing; a target that
    names no document is done with nothing removed (a redelivery of a finished
    delete finds nothing and succeeds)."""

    def __init__(
        self,
        rag: LightRAGInstance,
        quiesced: Callable[[], AbstractAsyncContextManager[None]],
        lock: AbstractAsyncContextManager[object],
        removals: Removals,
        durable: Callable[[], Awaitable[None]] | None = None,
        on_retired: Callable[[], None] = lambda: None,
        on_retire_failed: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self._on_retired = on_retired
        self._on_retire_failed = on_retire_failed
        self._rag = rag
        self._quiesced = quiesced
        self._lock = lock
        self._removals = removals
        self._durable = durable
        self._queue: list[_Pending] = []
        # By task: documents it removed in memory whose deletion was not committed
        # (the commit or a later delete of the task failed). The task comes back and
        # finds them gone: they are counted when it succeeds. A crash loses the
        # removal as well, and the task, redelivered, removes them again.
        self._uncounted: dict[str, list[str]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.deleted = 0

    def submit(self, tasks: Sequence[ChunkTask], admit: Admission) -> dict[str, asyncio.Future[Failure | None]]:
        """One future per task's doc_id, answered once the section that ran it ends."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Failure | None]] = {}
        for task in tasks:
            future: asyncio.Future[Failure | None] = loop.create_future()
            self._queue.append(_Pending(task, admit, future))
            futures[task.doc_id] = future
        if self._queue and (self._runner is None or self._runner.done()):
            self._runner = asyncio.create_task(self._run(), name="lightrag-deleter")
        return futures

    async def stop(self) -> None:
        """Cancel the round under way (its deletions are LightRAG's to finish or not:
        its tasks stay pending and come back); answer what is queued transient."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        stopped = transient("the service stopped before the delete ran; it stays pending", None)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_result(stopped)
        self._queue.clear()

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._round(batch)
            except asyncio.CancelledError:
                stopped = transient("the service stopped while deleting; the delete stays pending", None)
                _answer_all(batch, stopped, self._on_retire_failed)
                raise
            except Exception as exc:  # noqa: BLE001 - the lock, the quiesce or the commit: every task shares it
                failure = classify_exception(exc, STORAGE)
                log.warning("%d deletes not done: %s", len(batch), failure.message[:300])
                _answer_all(batch, failure, self._on_retire_failed)

    async def _round(self, batch: list[_Pending]) -> None:
        removed: dict[int, list[str]] = {}
        outcomes: dict[int, Failure | None] = {}
        async with self._quiesced(), self._lock:
            await self._pipeline_idle()
            docs: dict[str, DocRecord] | None = None
            for number, pending in enumerate(batch):
                task = pending.task
                if not await pending.admit(task.job_id, [task.index]):
                    outcomes[number] = job_cancelled(task.job_id)
                    continue
                if not task.doc_ref and docs is None:
                    docs = await self._all_documents()
                outcome, gone = await self._delete(task, targets_of(task, docs or {}))
                outcomes[number] = outcome
                removed[number] = self._uncounted.pop(task.doc_id, []) + gone
                if outcome is not None and removed[number]:
                    self._uncounted[task.doc_id] = removed[number]
                if gone and docs is not None:
                    for doc_id in gone:
                        docs.pop(doc_id, None)
            if self._durable is not None and any(removed.values()):
                try:
                    await self._durable()  # the file storages: on disk before any task is answered
                except BaseException:
                    for number, pending in enumerate(batch):
                        if outcomes.get(number) is None and removed.get(number):
                            self._uncounted[pending.task.doc_id] = removed[number]
                    raise
        for number, pending in enumerate(batch):
            outcome = outcomes[number]
            if outcome is None:
                await self._removals.record(pending.task, removed.get(number, []))
                if pending.task.op == RETIRE:
                    self._on_retired()
            elif pending.task.op == RETIRE and not outcome.cancelled:
                self._on_retire_failed(pending.task.job_id)
            if not pending.future.done():
                pending.future.set_result(outcome)

    async def _delete(self, task: ChunkTask, doc_ids: list[str]) -> tuple[Failure | None, list[str]]:
        """Delete each document; the ones removed, and the task's outcome (the first
        failure stops it: what it removed stays removed, a retry finds the rest)."""
        gone: list[str] = []
        for doc_id in doc_ids:
            result = await self._rag.adelete_by_doc_id(doc_id)
            if result.status == "success":
                gone.append(doc_id)
                self.deleted += 1
                log.info("deleted document %s job=%s (%s)", doc_id, task.job_id, task.target)
            elif result.status == "not_found":
                continue  # deleted before (a redelivery), or never there: nothing to remove
            elif result.status == "not_allowed":
                return transient(f"delete of {doc_id} refused by LightRAG: {result.message}", STORAGE), gone
            else:  # a dependency's failure (the embedding endpoint as the rebuild re-embeds) spends no attempt
                return classify_message(f"delete of {doc_id} failed: {result.message}"), gone
        if not doc_ids:
            log.info("delete job=%s (%s): no document to remove", task.job_id, task.target)
        return None, gone

    async def _all_documents(self) -> dict[str, DocRecord]:
        from lightrag.base import DocStatus

        return dict(await self._rag.doc_status.get_docs_by_statuses(list(DocStatus), strict=True))

    async def _pipeline_idle(self) -> None:
        """Wait for LightRAG's pipeline to end the run the feeder's driver began (the
        feeder is quiesced: nothing starts another): a delete in a busy pipeline is refused."""
        from lightrag.kg.shared_storage import get_namespace_data

        status = await get_namespace_data("pipeline_status", workspace=self._rag.workspace)
        waited = 0.0
        while status.get("busy") and waited < BUSY_WAIT_SECONDS:
            await asyncio.sleep(BUSY_POLL_SECONDS)
            waited += BUSY_POLL_SECONDS


def _answer_all(batch: Sequence[_Pending], outcome: Failure, on_retire_failed: Callable[[str], None]) -> None:
    for pending in batch:
        if pending.task.op == RETIRE:
            on_retire_failed(pending.task.job_id)
        if not pending.future.done():
            pending.future.set_result(outcome)


CachedResults = dict[str, list[tuple[str, int]]]


async def listed_extractions(
    cache: Any, chunk_ids: Iterable[str], chunk_data: dict[str, dict[str, Any]], results: CachedResults
) -> CachedResults:  # Any: LightRAG's KV storage
    """`results` with, for each chunk it lacks, the extraction entries the chunk's own
    llm_cache_list names (whichever chunk wrote them), oldest first."""
    wanted: dict[str, str] = {}
    for chunk_id in chunk_ids:
        if chunk_id not in results and chunk_id in chunk_data:
            for key in chunk_data[chunk_id].get("llm_cache_list") or []:
                wanted.setdefault(str(key), chunk_id)
    if not wanted:
        return results
    found: CachedResults = {}
    for key, entry in zip(wanted, await cache.get_by_ids(list(wanted)), strict=True):
        if isinstance(entry, dict) and entry.get("cache_type") == "extract" and "return" in entry:
            found.setdefault(wanted[key], []).append((entry["return"], int(entry.get("create_time") or 0)))
    for entries in found.values():
        entries.sort(key=lambda item: item[1])
    merged = {**results, **found}
    return dict(sorted(merged.items(), key=lambda item: item[1][0][1]))


def patch_rebuild_attribution() -> None:
    """LightRAG's rebuild after a delete finds a chunk's extraction through its own
    llm_cache_list (module docstring). Patches lightrag.operate once per process."""
    from lightrag import operate

    original = operate._get_cached_extraction_results
    if getattr(original, "__shield_patched__", False):
        return

    async def cached_extraction_results(
        llm_response_cache: Any, chunk_ids: set[str], text_chunks_storage: Any
    ) -> tuple[CachedResults, dict[str, dict[str, Any]]]:
        results, chunk_data = await original(llm_response_cache, chunk_ids, text_chunks_storage=text_chunks_storage)
        return await listed_extractions(llm_response_cache, chunk_ids, chunk_data, results), chunk_data

    cached_extraction_results.__shield_patched__ = True  # type: ignore[attr-defined]
    cached_extraction_results.__wrapped__ = original  # type: ignore[attr-defined]  # for the contract test
    operate._get_cached_extraction_results = cached_extraction_results
