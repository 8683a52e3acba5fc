"""The feeder: the one writer of a LightRAG workspace in this process.

Workers hand it their chunks; it runs rounds, one at a time, each under the
workspace lock (an asyncio lock on one host; across hosts, see locks.py):
read every document's status afresh, put a FAILED document back to PENDING
(a retry that really retries: nothing is deleted while LightRAG is busy),
insert the new ones, let LightRAG's pipeline run to completion, and read the
statuses again. A document counts as done only once LightRAG wrote it
PROCESSED, which it does after every storage flushed (durable before acked);
on the file storages a flush is durable at the next group commit
(commit/group.py), and a round's documents are answered only once a commit
that began after the pipeline ran has succeeded.

A chunk whose text LightRAG already holds under another document (a content
duplicate, however many times over) is resolved through the content hash to
the document that really holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from urllib.parse import quote
from uuid import uuid4

from ..queue.tasks import ChunkTask
from ..workers.breaker import DependencyGate
from ..workers.faults import STORAGE, Failure, chunk_fault, classify_exception, classify_message, transient
from .boundary import DocRecord, LightRAGInstance, Row, StatusObject
from .commit import CommitError, GroupCommit

log = logging.getLogger("shield_orchestrator.lightrag")

Outcome = Failure | None
IN_PROGRESS = frozenset({"pending", "parsing", "analyzing", "processing", "preprocessed"})
# Documents per round: large enough to keep LightRAG's parallel inserts busy,
# small enough that a round ends well within the task timeout.
MAX_ROUND = 200
WATCH_SECONDS = 3.0


def field_of(doc: DocRecord | None, name: str) -> object:
    """A field of a doc-status record, dict or object (None when absent)."""
    return doc.get(name) if isinstance(doc, Mapping) else getattr(doc, name, None)


def doc_status(doc: DocRecord | None) -> str:
    """A doc-status record's status in lower case ("" for no record)."""
    value = field_of(doc, "status")
    return str(getattr(value, "value", value) or "").lower()


def document_path(task: ChunkTask) -> str:
    """LightRAG dedups documents by file_path basename: give each chunk its own."""
    source = quote(task.source_uri or "inline", safe="")
    return f"{task.doc_id}__{source}"


@dataclass
class RoundPlan:
    """What a round does with each document, from the statuses read under the lock."""

    done: dict[str, Outcome] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)  # FAILED by an earlier attempt: back to PENDING
    insert: list[ChunkTask] = field(default_factory=list)  # not in LightRAG yet
    running: list[str] = field(default_factory=list)  # PENDING/PROCESSING: the pipeline takes them


def plan_round(tasks: Sequence[ChunkTask], docs: Mapping[str, DocRecord]) -> RoundPlan:
    plan = RoundPlan()
    for task in tasks:
        state = doc_status(docs.get(task.doc_id))
        if state == "processed":
            plan.done[task.doc_id] = None
        elif state == "failed":
            plan.reset.append(task.doc_id)
        elif state in IN_PROGRESS:
            plan.running.append(task.doc_id)
        else:
            plan.insert.append(task)
    return plan


def outcome_of(doc: DocRecord | None, what: str) -> Outcome:
    """A document's outcome after a round: None when PROCESSED, else why not."""
    state = doc_status(doc)
    if state == "processed":
        return None
    if state == "failed":
        return classify_message(f"{what}: {field_of(doc, 'error_msg') or 'FAILED'}")
    if state in IN_PROGRESS:
        return transient(f"{what} is still {state} after the pipeline ran", None)
    return chunk_fault(f"{what}: LightRAG did not record the document")


@dataclass
class _Queued:
    task: ChunkTask
    future: asyncio.Future[Outcome]


class LightRAGFeeder:
    """The one writer of the LightRAG workspace in this process.

    Owns the queue of submitted chunks and the rounds that take them, one at a
    time, each under the workspace lock and, on the file storages, made durable
    by the GroupCommit before it is answered. Guarantees: every submitted task gets one outcome, None only
    when its document (or the document that holds its text) is PROCESSED, and
    committed on the file storages; a chunk submitted again while its document
    is in a round shares that round's outcome; a round that outlasts
    round_timeout answers its documents with a timeout (and runs on); a round
    that fails, a commit that fails and a lock that fails answer failures,
    never done."""

    def __init__(
        self,
        rag: LightRAGInstance,
        lock: AbstractAsyncContextManager[object],
        gate: DependencyGate,
        content_hash: Callable[[str], str],
        storage_probe: Callable[[], Awaitable[bool]],
        *,
        round_timeout: float,
        commit: GroupCommit | None = None,
    ) -> None:
        self._rag = rag
        self._commit = commit
        self._unanswered: list[str] = []  # the running round's documents (on_drop may reset them)
        self._redone: set[str] = set()  # those of them on_drop put back to PENDING
        if commit is not None:
            commit.on_drop = self._on_drop
        self._storage_probe = storage_probe
        self._round_timeout = round_timeout
        self._lock = lock
        self._gate = gate
        self._content_hash = content_hash
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._queue: list[_Queued] = []
        self._wakeup = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lightrag-feeder")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def process(self, tasks: Sequence[ChunkTask]) -> dict[str, Outcome]:
        """Each task's outcome: None (PROCESSED in LightRAG) or why not. The wait for
        the workspace lock does not count against the task timeout; a round that
        takes longer than it answers its documents with a timeout (a chunk fault)."""
        futures = {task.doc_id: self._submit(task) for task in tasks}
        await asyncio.wait(futures.values())
        return {doc_id: future.result() for doc_id, future in futures.items()}

    def _submit(self, task: ChunkTask) -> asyncio.Future[Outcome]:
        """The future of the task's document: shared by every submission of the same
        document (a redelivery while an earlier attempt still runs waits for it)."""
        future = self._futures.get(task.doc_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._futures[task.doc_id] = future
            self._queue.append(_Queued(task, future))
            self._wakeup.set()
        return future

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._wakeup.wait()
            if not await self._gate.wait_closed(self._stop):
                return
            batch, self._queue = self._queue[:MAX_ROUND], self._queue[MAX_ROUND:]
            if not self._queue:
                self._wakeup.clear()
            if not batch:
                continue
            try:
                await self._locked_round(batch)
            except Exception as exc:  # noqa: BLE001 - the lock itself (Redis) failed: the round did not run
                log.warning("no LightRAG round: the workspace lock failed (%s); retrying", exc)
                self._answer(batch, {item.task.doc_id: transient(f"workspace lock: {exc}", None) for item in batch})
                await asyncio.sleep(1)

    async def _locked_round(self, batch: list[_Queued]) -> None:
        """One round under the workspace lock, watched. Its documents are answered
        when it ends, or with a timeout once it has run for round_timeout seconds
        (the round itself goes on: cancelling LightRAG mid-pipeline could wedge it).
        While it runs, the storages are probed every WATCH_SECONDS: LightRAG retries
        a lost storage inside the round, which then just takes long; a failed probe
        pauses the pool on lightrag_storage at once."""
        tasks = [item.task for item in batch]
        loop = asyncio.get_running_loop()
        async with self._lock:
            work = asyncio.ensure_future(self._round(tasks))
            started, late = loop.time(), False
            while not (await asyncio.wait({work}, timeout=WATCH_SECONDS))[0]:
                await self._probe_storage()
                if not late and loop.time() - started > self._round_timeout:
                    late = True
                    timeout = chunk_fault(f"timed out after {self._round_timeout:.0f}s in LightRAG")
                    self._answer(batch, {task.doc_id: timeout for task in tasks})
                    log.warning("a LightRAG round of %d documents outlasted the task timeout", len(tasks))
            results = await self._results_of(work, tasks)
        self._answer(batch, results)

    async def _probe_storage(self) -> None:
        try:
            answered = await asyncio.wait_for(self._storage_probe(), WATCH_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means down
            answered, reason = False, f"{type(exc).__name__}: {exc}"
        else:
            reason = "the storage probe failed"
        if not answered:
            self._gate.trip(STORAGE, f"LightRAG's storages do not answer during a round: {reason}")

    async def _results_of(self, work: asyncio.Future[dict[str, Outcome]], tasks: list[ChunkTask]) -> dict[str, Outcome]:
        try:
            return await work
        except CommitError as exc:  # the round ran, its commit did not: nothing of it is on disk yet
            failure = classify_exception(exc.__cause__ or exc, exc.dependency)
            log.warning("LightRAG round of %d documents not committed: %s", len(tasks), exc)
            return {task.doc_id: failure for task in tasks}
        except Exception as exc:  # noqa: BLE001 - every document of the round shares the failure
            failure = classify_exception(exc, STORAGE)
            log.warning("LightRAG round of %d documents failed: %s", len(tasks), failure.message[:300])
            return {task.doc_id: failure for task in tasks}

    def _answer(self, batch: list[_Queued], results: Mapping[str, Outcome]) -> None:
        for item in batch:
            if self._futures.get(item.task.doc_id) is item.future:
                del self._futures[item.task.doc_id]
            if not item.future.done():
                item.future.set_result(results.get(item.task.doc_id, transient("no outcome from the round", None)))

    async def _round(self, tasks: Sequence[ChunkTask]) -> dict[str, Outcome]:
        if self._commit is None:
            return await self._run_pipeline(tasks)
        self._unanswered, self._redone = [task.doc_id for task in tasks], set()
        try:
            results = await self._run_pipeline(tasks)
            await self._commit.durable()  # the round's documents on disk before any is answered
        finally:
            self._unanswered = []
        again = transient("LightRAG aborted the round; the document is processed again", None)
        return {doc_id: again if doc_id in self._redone else outcome for doc_id, outcome in results.items()}

    async def _run_pipeline(self, tasks: Sequence[ChunkTask]) -> dict[str, Outcome]:
        ids = [task.doc_id for task in tasks]
        plan = plan_round(tasks, await self._rag.aget_docs_by_ids(ids))
        await self._reset_failed(plan.reset)
        if plan.insert:
            await self._rag.ainsert(
                [task.text for task in plan.insert],
                ids=[task.doc_id for task in plan.insert],
                file_paths=[document_path(task) for task in plan.insert],
                track_id=f"shield-{uuid4().hex}",
            )
        elif plan.reset or plan.running:
            await self._rag.apipeline_process_enqueue_documents()
        return await self._outcomes(tasks, plan)

    async def _on_drop(self) -> None:
        """The group commit's on_drop: LightRAG dropped its pending buffers (its
        abort on an internal storage error), so a document of the round it marked
        PROCESSED may miss data: back to PENDING, processed again."""
        updates = await self._pending_updates(self._unanswered, "processed")
        if updates:
            log.warning("LightRAG aborted a round: %d documents of it are processed again", len(updates))
            await self._rag.doc_status.upsert(updates)
            self._redone.update(updates)

    async def _holders(self, tasks: Sequence[ChunkTask]) -> dict[str, str]:
        """For chunks not in LightRAG under their own id: the document that already
        holds the same text, if any (a content duplicate, of any depth)."""
        found: dict[str, str] = {}
        for task in tasks:
            holder = await self._rag.doc_status.get_doc_by_content_hash(
                self._content_hash(task.text), exclude_doc_id=task.doc_id
            )
            if holder:
                found[task.doc_id] = str(holder[0])
        return found

    async def _reset_failed(self, doc_ids: Sequence[str]) -> None:
        """FAILED documents back to PENDING, so the pipeline processes them again."""
        updates = await self._pending_updates(doc_ids, "failed")  # without content, a document stays FAILED
        if updates:
            log.info("retrying %d FAILED LightRAG documents: %s", len(updates), ", ".join(sorted(updates))[:300])
            await self._rag.doc_status.upsert(updates)

    async def _pending_updates(self, doc_ids: Sequence[str], status: str) -> dict[str, Row]:
        """The doc-status updates that put each document now in `status` back to PENDING
        (LightRAG's own reset), for those whose content LightRAG still holds."""
        if not doc_ids:
            return {}
        docs = await self._rag.aget_docs_by_ids(list(doc_ids))
        updates: dict[str, Row] = {}
        for doc_id in doc_ids:
            doc = docs.get(doc_id)
            if doc is None or doc_status(doc) != status:
                continue
            content = await self._rag.full_docs.get_by_id(doc_id)
            if not content:
                continue
            update, _path, _meta = self._rag._build_pending_reset_update(_status_object(doc), content)
            updates[doc_id] = update
        return updates

    async def _outcomes(self, tasks: Sequence[ChunkTask], plan: RoundPlan) -> dict[str, Outcome]:
        """Every document's outcome after the pipeline ran. A chunk LightRAG took as
        a content duplicate has no document of its own: the document that holds
        its text (found by content hash, however long the chain of duplicates)
        answers for it."""
        docs = await self._rag.aget_docs_by_ids([task.doc_id for task in tasks])
        holders = await self._holders(
            [task for task in tasks if task.doc_id not in plan.done and not docs.get(task.doc_id)]
        )
        if holders:
            docs = {**docs, **(await self._holder_docs(sorted(set(holders.values()))))}
        results: dict[str, Outcome] = dict(plan.done)
        for task in tasks:
            if task.doc_id in results:
                continue
            holder = holders.get(task.doc_id)
            if holder is not None:
                results[task.doc_id] = outcome_of(docs.get(holder), f"identical text as document {holder}")
            else:
                results[task.doc_id] = outcome_of(docs.get(task.doc_id), f"document {task.doc_id}")
        return results

    async def _holder_docs(self, holder_ids: list[str]) -> Mapping[str, DocRecord]:
        """The holders' records; a holder an earlier attempt left FAILED is
        processed again first (its own chunk may be long gone)."""
        docs = await self._rag.aget_docs_by_ids(holder_ids)
        failed = [doc_id for doc_id in holder_ids if doc_status(docs.get(doc_id)) == "failed"]
        if failed:
            await self._reset_failed(failed)
            await self._rag.apipeline_process_enqueue_documents()
            docs = await self._rag.aget_docs_by_ids(holder_ids)
        return docs


def _status_object(doc: DocRecord) -> StatusObject:
    """LightRAG's reset helper wants a DocProcessingStatus; JSON storages answer dicts."""
    if not isinstance(doc, Mapping):
        return doc
    from lightrag.base import DocProcessingStatus

    fields = DocProcessingStatus.__dataclass_fields__
    status: StatusObject = DocProcessingStatus(**{key: value for key, value in doc.items() if key in fields})
    return status
