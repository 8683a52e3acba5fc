"""The feeder: the one writer of a LightRAG workspace in this process, a continuous pipeline.

Workers hand it their chunks (`submit`); it keeps a window of documents inside
LightRAG and refills it as each one ends, so the LLM never waits for a round:

- Admission: a chunk enters LightRAG only if its job is not cancelled (the
  job tracker's admission, atomic with the cancel), high priority first. Its
  status is read afresh: PROCESSED is answered at once, FAILED goes back to
  PENDING (a retry that really retries), PENDING/PROCESSING is watched, a new
  one is enqueued into LightRAG's running pipeline (its in-batch feeder takes
  it without waiting for the others).
- Extraction ahead (with an Extractor: extract.py): an admitted document is
  extracted before it enters the window, with no lock held, up to `window`
  documents at once; it enters the window once extracted (high priority first).
- The LLM's queue (with a CallOrder: llm/order.py): a document's calls wait
  behind those of the documents queued before it, its extraction ahead level
  with the document a window ahead of it, so the window is refilled as it frees
  and documents end one after another.
- The driver keeps LightRAG's pipeline running while documents are in flight.
- The watcher reads the in-flight documents' statuses (woken by LightRAG's own
  status writes, and every POLL_SECONDS): each document is answered on its own
  as soon as it is PROCESSED and durable (on the file storages, once a group
  commit that began after it has succeeded: commit/), or FAILED, or has
  outlasted the task timeout.
- The window: at most `window` documents in LightRAG at once, all of them
  started (LightRAG's max_parallel_insert is the window); workers read only
  what the window and a small read-ahead can take (`reserve`), so a cancel or
  a high-priority chunk acts in seconds.
- The workspace lock is held for a session: from the first admission until
  nothing is in flight, or until the lock is contended and the session has
  lasted SESSION_SECONDS (then it drains and lets the other host in).

A chunk whose text LightRAG already holds under another document (a content
duplicate, however many times over) is resolved through the content hash to
the document that really holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote
from uuid import uuid4

from ..queue.tasks import ChunkTask
from ..workers.breaker import DependencyGate
from ..workers.faults import (
    LLM,
    STORAGE,
    Failure,
    chunk_fault,
    classify_exception,
    classify_message,
    job_cancelled,
    raised_by_storage,
    transient,
)
from ..workers.processor import Admission, admit_all, batch_result
from .boundary import DocRecord, LightRAGInstance, Row, StatusObject
from .commit import CommitError
from .llm.order import calls_of

if TYPE_CHECKING:
    from .commit import GroupCommit
    from .extract import Extractor
    from .llm.order import CallOrder

log = logging.getLogger("shield_orchestrator.lightrag")

Outcome = Failure | None


class Duplicates(Protocol):
    """jobs/ledger.py's JobLedger: the chunks of a job whose text LightRAG already
    held, each with the document holding it, recorded before they are answered."""

    async def record_duplicates(self, job_id: str, holders: Mapping[int, str]) -> None: ...


IN_PROGRESS = frozenset({"pending", "parsing", "analyzing", "processing", "preprocessed"})
WATCH_SECONDS = 3.0  # the storages are probed this often while documents are in flight
POLL_SECONDS = 0.5  # in-flight statuses are read at least this often
SESSION_SECONDS = 10.0  # a contended workspace lock is let go after a session this long
DRIVER_SPIN_SECONDS = 0.1


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
class AdmissionPlan:
    """What the feeder does with each document it admits, from its status read under the lock."""

    done: dict[str, Outcome] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)  # FAILED by an earlier attempt: back to PENDING
    insert: list[ChunkTask] = field(default_factory=list)  # not in LightRAG yet
    running: list[str] = field(default_factory=list)  # PENDING/PROCESSING: the pipeline takes them


def plan_admission(tasks: Sequence[ChunkTask], docs: Mapping[str, DocRecord]) -> AdmissionPlan:
    plan = AdmissionPlan()
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
    """A submitted task waiting for its outcome (shared by every submission of its document)."""

    task: ChunkTask
    future: asyncio.Future[Outcome]
    admit: Admission
    rank: tuple[int, int] = (1, 0)  # its place in the queues: (0 urgent | 1, arrival)
    admitted: bool = False  # by its job's admission, before its extraction ahead


@dataclass
class _Flight:
    """A document in LightRAG the feeder waits for, and the queued tasks it answers."""

    items: list[_Queued]
    label: str  # "document X", or "identical text as document X" for a content duplicate
    since: float


class LightRAGFeeder:
    """The one writer of the LightRAG workspace in this process: a continuous pipeline.

    Owns the queue of submitted chunks (high priority first), the window of
    documents in LightRAG, the pipeline driver, the status watcher, the
    workspace-lock session and the answers. Guarantees: every submitted task gets
    one outcome; None only when its document (or the document that holds its
    text) is PROCESSED and, on the file storages, committed; a task of a job
    cancelled before it entered LightRAG is answered `job_cancelled` and never
    enters; a chunk submitted again while its document is in flight shares its
    outcome; a document that outlasts the task timeout is answered with a
    timeout (and runs on); at most `window` documents are in LightRAG and at
    most `window + ahead` tasks are held (reserved, queued or in flight) unless
    redeliveries add more."""

    def __init__(
        self,
        rag: LightRAGInstance,
        lock: AbstractAsyncContextManager[object],
        gate: DependencyGate,
        content_hash: Callable[[str], str],
        storage_probe: Callable[[], Awaitable[bool]],
        *,
        task_timeout: float,
        window: int,
        ahead: int,
        urgent: Callable[[ChunkTask], bool] = lambda task: False,
        commit: GroupCommit | None = None,
        extractor: Extractor | None = None,
        order: CallOrder | None = None,
        duplicates: Duplicates | None = None,
    ) -> None:
        self._rag = rag
        self._duplicates = duplicates
        self._order = order
        self._commit = commit
        self._extractor = extractor
        self._storage_probe = storage_probe
        self._task_timeout = task_timeout
        self._lock = lock
        self._gate = gate
        self._content_hash = content_hash
        self._urgent = urgent
        self.window = window
        self._ahead = ahead
        self._futures: dict[str, asyncio.Future[Outcome]] = {}
        self._queue: list[tuple[int, int, _Queued]] = []  # a heap: (0 urgent | 1, arrival, item)
        # Extracted ahead (extract.py), waiting for the window: a heap as the queue.
        self._ready: list[tuple[int, int, _Queued]] = []
        self._extractions: dict[asyncio.Task[None], _Queued] = {}
        self._extract_more = asyncio.Event()
        self._arrivals = itertools.count()
        self._flights: dict[str, _Flight] = {}  # by the document watched
        self._awaiting: dict[str, list[_Queued]] = {}  # PROCESSED, answered once committed
        self._reserved = 0
        self._admitting = 0
        self._wakeup = asyncio.Event()  # the admitter has something to do
        self._room = asyncio.Event()  # a place in the window or the read-ahead freed
        self._kick = asyncio.Event()  # the driver: documents wait for LightRAG's pipeline
        self._statuses = asyncio.Event()  # LightRAG wrote a final status
        self._stop = asyncio.Event()
        self._stopping = False
        self._paused = 0  # quiesced() callers
        self._yielding = False  # the lock is contended: drain, then let it go
        self._session = False
        self._session_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self.admitted = 0
        self.answered = 0

    # --- the workers' side ------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Documents in LightRAG the feeder waits for."""
        return len(self._flights)

    @property
    def extracting(self) -> int:
        """Documents being extracted ahead of the pipeline."""
        return len(self._extractions)

    @property
    def ready(self) -> int:
        """Documents extracted ahead, waiting for a place in the window."""
        return len(self._ready)

    @property
    def held(self) -> int:
        """Places taken: reserved by workers, queued, extracted or being so, being
        admitted, in flight."""
        waiting = len(self._queue) + len(self._extractions) + len(self._ready)
        return self._reserved + waiting + self._admitting + len(self._flights)

    def start(self) -> None:
        self._watch_status_writes()
        if self._commit is not None:
            self._commit.on_drop = self._reprocess_uncommitted
        loops = [("admitter", self._admit_loop), ("driver", self._drive), ("watcher", self._watch)]
        if self._extractor is not None:
            loops.append(("extractor", self._extract_loop))
        for name, loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=f"lightrag-feeder-{name}"))

    def begin_stop(self) -> None:
        """Take nothing new: queued tasks are answered at once (they stay pending in the
        stream), documents in flight run on until stop()."""
        self._stopping = True
        stopping = transient("the service is stopping; the chunk stays pending for the next run", None)
        for heap in (self._queue, self._ready):
            while heap:
                self._answer([heapq.heappop(heap)[2]], stopping)
        for extraction, item in list(self._extractions.items()):
            extraction.cancel()
            self._answer([item], stopping)
        self._room.set()
        self._wakeup.set()

    async def stop(self) -> None:
        self.begin_stop()
        self._stop.set()
        for task in [*self._tasks, *self._answering, *self._extractions]:
            task.cancel()
        for task in [*self._tasks, *self._answering, *self._extractions]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        stopped = transient("the service stopped before LightRAG finished the document", None)
        for flight in self._flights.values():
            self._answer(flight.items, stopped)
        self._flights.clear()
        for items in self._awaiting.values():
            self._answer(items, stopped)
        self._awaiting.clear()
        if self._session:
            await self._end_session()

    def fenced_out(self, reason: str) -> None:
        """Another host took the workspace lock over while this one held it (a write
        refused by the writer fence, fence.py): the documents in flight are answered
        transient (their chunks come back, under the lock), nothing more is admitted,
        and the session ends; the next admission takes the lock again."""
        superseded = transient(f"superseded in LightRAG's workspace: {reason}", None)
        for flight in self._flights.values():
            self._answer(flight.items, superseded)
        self._flights.clear()
        self._yielding = True
        self._room.set()
        self._wakeup.set()

    async def reserve(self, want: int, stopping: asyncio.Event) -> int:
        """Wait for room (the window and the read-ahead), then reserve up to `want` places."""
        while not (stopping.is_set() or self._stopping):
            free = self.window + self._ahead - self.held
            if free > 0:
                taken = min(want, free)
                self._reserved += taken
                return taken
            self._room.clear()
            waits = [asyncio.ensure_future(self._room.wait()), asyncio.ensure_future(stopping.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return 0

    def release(self, count: int) -> None:
        self._reserved = max(0, self._reserved - count)
        if count:
            self._room.set()

    def submit(
        self, tasks: Sequence[ChunkTask], admit: Admission = admit_all, reserved: int = 0
    ) -> dict[str, asyncio.Future[Outcome]]:
        """The future of each task's document: shared by every submission of the same
        document (a redelivery while an earlier attempt still runs waits for it)."""
        self._reserved = max(0, self._reserved - reserved)
        futures: dict[str, asyncio.Future[Outcome]] = {}
        loop = asyncio.get_running_loop()
        for task in tasks:
            future = self._futures.get(task.doc_id)
            if future is None or future.done():
                future = loop.create_future()
                item = _Queued(task, future, admit)
                if self._stopping:
                    future.set_result(transient("the service is stopping; the chunk stays pending", None))
                else:
                    self._futures[task.doc_id] = future
                    item.rank = (0 if self._urgent(task) else 1, next(self._arrivals))
                    if self._order is not None:
                        self._order.place(task.doc_id, item.rank)
                    heapq.heappush(self._queue, (*item.rank, item))
            futures[task.doc_id] = future
        self._wakeup.set()
        self._extract_more.set()
        return futures

    async def process(self, tasks: Sequence[ChunkTask]) -> dict[str, Outcome]:
        """Each task's outcome, all at once (the batch interface)."""
        return await batch_result(self.submit(tasks))

    @contextlib.asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """Nothing in flight while the block runs (and the workspace lock let go, so
        the caller can take it): admission pauses, in-flight documents end."""
        self._paused += 1
        self._wakeup.set()
        try:
            while self._flights or self._awaiting or self._session:
                self._wakeup.set()
                await asyncio.sleep(0.05)
            yield
        finally:
            self._paused -= 1
            self._wakeup.set()

    # --- admission --------------------------------------------------------------------
    async def _admit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await self._wakeup.wait()
            self._wakeup.clear()
            if not await self._gate.wait_closed(self._stop):
                return
            entering = self._entering
            idle = not self._flights and not self._awaiting
            if self._session and idle and (self._paused or self._yielding or not entering):
                await self._end_session()
                self._yielding = False
                if entering:
                    self._wakeup.set()
                continue
            if self._paused or self._stopping or self._yielding or not entering:
                continue
            if self._session and loop.time() - self._session_since > SESSION_SECONDS and await self._contended():
                log.info("another host waits for the workspace lock: this one drains and lets it go")
                self._yielding = True  # no new admission: the session drains, then lets the other host in
                self._wakeup.set()  # ...and ends at once if nothing is in flight
                continue
            room = self.window - len(self._flights)
            if room <= 0:
                continue
            batch = [heapq.heappop(entering)[2] for _ in range(min(room, len(entering)))]
            self._admitting = len(batch)
            try:
                if not self._session:
                    await self._begin_session()
                await self._admit(batch)
            except Exception as exc:  # noqa: BLE001 - Redis (lock, admission) or a storage read failed
                failure = classify_exception(exc, STORAGE)
                log.warning("%d chunks not admitted into LightRAG: %s", len(batch), failure.message[:300])
                self._answer(batch, failure)
                await asyncio.sleep(1)
            finally:
                self._admitting = 0
            self._room.set()
            self._extract_more.set()
            if entering or not self._flights:  # more to admit, or nothing in flight: the session may end
                self._wakeup.set()

    @property
    def _entering(self) -> list[tuple[int, int, _Queued]]:
        """What enters the window next: the extracted documents when extracting
        ahead, else the queue."""
        return self._ready if self._extractor is not None else self._queue

    # --- extraction ahead of the pipeline (extract.py) --------------------------------
    async def _extract_loop(self) -> None:
        """Start the extraction of queued documents, high priority first, while fewer
        than `window` are being extracted: their LLM work needs no lock."""
        while not self._stop.is_set():
            await self._extract_more.wait()
            self._extract_more.clear()
            if not await self._gate.wait_closed(self._stop):
                return
            free = self.window - len(self._extractions)
            if self._stopping or free <= 0 or not self._queue:
                continue
            batch = [heapq.heappop(self._queue)[2] for _ in range(min(free, len(self._queue)))]
            try:
                admitted = await self._admitted(batch)
            except Exception as exc:  # noqa: BLE001 - Redis (admission) failed
                failure = classify_exception(exc, STORAGE)
                log.warning("%d chunks not admitted into LightRAG: %s", len(batch), failure.message[:300])
                self._answer(batch, failure)
                self._room.set()
                await asyncio.sleep(1)
                self._extract_more.set()
                continue
            for item in admitted:
                extraction = asyncio.create_task(self._extract(item), name="lightrag-extract-ahead")
                self._extractions[extraction] = item
            self._room.set()
            if self._queue:
                self._extract_more.set()

    async def _extract(self, item: _Queued) -> None:
        """Extract a document ahead; a failure answers it (it does not enter LightRAG)."""
        assert self._extractor is not None
        calls_of(item.task.doc_id, ahead=True)  # its LLM calls queue at its place ahead (llm/order.py)
        try:
            await self._extractor.extract(item.task.text, item.task.doc_id)
        except Exception as exc:  # noqa: BLE001 - the LLM's or the cache's failure is the chunk's answer
            # The extraction talks to the LLM and to the LLM cache, a storage (PostgreSQL
            # in a cluster): blamed on the LLM, an outage of PostgreSQL paused the pool on
            # the LLM, whose probe answered at once, and the pool never waited for it.
            failure = classify_exception(exc, STORAGE if raised_by_storage(exc) else LLM)
            log.info("extraction of %s ahead of the pipeline failed: %s", item.task.doc_id, failure.message[:300])
            self._answer([item], failure)
            self._room.set()
        finally:
            self._extractions.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        if not item.future.done() and not self._stopping:
            heapq.heappush(self._ready, (*item.rank, item))
        self._wakeup.set()
        self._extract_more.set()

    async def _begin_session(self) -> None:
        await self._lock.__aenter__()
        self._session, self._session_since = True, asyncio.get_running_loop().time()

    async def _end_session(self) -> None:
        self._session = False
        await self._lock.__aexit__(None, None, None)

    async def _contended(self) -> bool:
        contended = getattr(self._lock, "contended", None)
        return bool(await contended()) if contended is not None else False

    async def _admitted(self, batch: list[_Queued]) -> list[_Queued]:
        """The batch's tasks their jobs admit (a cancelled job's are answered so)."""
        admitted = [item for item in batch if item.admitted]
        for job_id, items in _by_job([item for item in batch if not item.admitted]).items():
            if await items[0].admit(job_id, [item.task.index for item in items]):
                admitted += items
                for item in items:
                    item.admitted = True
            else:
                log.info("job %s is cancelled: %d of its chunks do not enter LightRAG", job_id, len(items))
                self._answer(items, job_cancelled(job_id))
        return admitted

    async def _admit(self, batch: list[_Queued]) -> None:
        """Into LightRAG: the batch's admitted tasks, by their documents' statuses."""
        admitted = await self._admitted(batch)
        if not admitted:
            return
        self.admitted += len(admitted)
        tasks = [item.task for item in admitted]
        plan = plan_admission(tasks, await self._rag.aget_docs_by_ids([task.doc_id for task in tasks]))
        by_doc = {item.task.doc_id: item for item in admitted}
        self._settle_processed([by_doc[doc_id] for doc_id in plan.done])
        await self._reset_failed(plan.reset)
        for doc_id in [*plan.reset, *plan.running]:
            self._fly(doc_id, by_doc[doc_id], f"document {doc_id}")
        if plan.insert:
            await self._rag.apipeline_enqueue_documents(
                [task.text for task in plan.insert],
                ids=[task.doc_id for task in plan.insert],
                file_paths=[document_path(task) for task in plan.insert],
                track_id=f"shield-{uuid4().hex}",
            )
            await self._place_inserted(plan.insert, by_doc)
        self._kick.set()

    async def _place_inserted(self, inserted: list[ChunkTask], by_doc: Mapping[str, _Queued]) -> None:
        """Watch each inserted document; a content duplicate (LightRAG recorded no
        document for it) waits for the document that holds its text."""
        docs = await self._rag.aget_docs_by_ids([task.doc_id for task in inserted])
        duplicates = [task for task in inserted if not docs.get(task.doc_id)]
        for task in inserted:
            if docs.get(task.doc_id):
                self._fly(task.doc_id, by_doc[task.doc_id], f"document {task.doc_id}")
        if not duplicates:
            return
        holders = await self._holders(duplicates)
        holder_docs = await self._rag.aget_docs_by_ids(sorted(set(holders.values())))
        await self._reset_failed([doc_id for doc_id, doc in holder_docs.items() if doc_status(doc) == "failed"])
        unrecorded = await self._record_duplicates([task for task in duplicates if task.doc_id in holders], holders)
        for task in duplicates:
            item, holder = by_doc[task.doc_id], holders.get(task.doc_id)
            if task.job_id in unrecorded:
                self._answer([item], unrecorded[task.job_id])
            elif holder is None:
                self._answer([item], chunk_fault(f"document {task.doc_id}: LightRAG did not record the document"))
            elif doc_status(holder_docs.get(holder)) == "processed":
                self._settle_processed([item])
            else:
                self._fly(holder, item, f"identical text as document {holder}")

    async def _record_duplicates(self, tasks: Sequence[ChunkTask], holders: Mapping[str, str]) -> dict[str, Failure]:
        """Record each job's content duplicates before they are answered; per job whose
        record failed (Redis), the transient failure its duplicates are answered with
        (they come back, are found duplicates again and recorded then)."""
        failed: dict[str, Failure] = {}
        if self._duplicates is None:
            return failed
        by_job: dict[str, dict[int, str]] = defaultdict(dict)
        for task in tasks:
            by_job[task.job_id][task.index] = holders[task.doc_id]
        for job_id, found in by_job.items():
            try:
                await self._duplicates.record_duplicates(job_id, found)
            except Exception as exc:  # noqa: BLE001 - Redis: the chunks come back and are recorded then
                log.warning("job %s: %d content duplicates not recorded: %s", job_id, len(found), exc)
                failed[job_id] = transient(f"content duplicates not recorded: {type(exc).__name__}: {exc}", None)
        return failed

    def _fly(self, doc_id: str, item: _Queued, label: str) -> None:
        flight = self._flights.get(doc_id)
        if flight is None:
            self._flights[doc_id] = _Flight([item], label, asyncio.get_running_loop().time())
        else:
            flight.items.append(item)

    # --- the pipeline -----------------------------------------------------------------
    async def _drive(self) -> None:
        """Keep LightRAG's pipeline running while documents wait for it. Documents
        enqueued while it runs join the running batch (LightRAG's in-batch feeder)."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await self._kick.wait()
            self._kick.clear()
            while self._flights and not self._stop.is_set():
                began = loop.time()
                try:
                    await self._rag.apipeline_process_enqueue_documents()
                except Exception as exc:  # noqa: BLE001 - every document in flight shares the failure
                    failure = classify_exception(exc, STORAGE)
                    log.warning("LightRAG's pipeline failed: %s", failure.message[:300])
                    for flight in self._flights.values():
                        self._answer(flight.items, failure)
                    self._flights.clear()
                    self._room.set()
                    break
                self._statuses.set()
                if not await self._left_behind(began):
                    break
                if loop.time() - began < DRIVER_SPIN_SECONDS:
                    await asyncio.sleep(DRIVER_SPIN_SECONDS)

    async def _left_behind(self, began: float) -> bool:
        """After a run of the pipeline: whether a document in flight still waits for
        one. A document the run should have taken (in flight before it began) and
        left PENDING/PROCESSING (LightRAG halted the run: a storage error, a
        cancel) is answered transient, and its chunk comes back; one that arrived
        as the run ended waits for the next run."""
        read = list(self._flights)
        if not read:
            return False
        docs = await self._rag.aget_docs_by_ids(read)
        waiting = False
        for doc_id in read:
            flight = self._flights.get(doc_id)
            state = doc_status(docs.get(doc_id))
            if flight is None or state not in IN_PROGRESS:
                continue
            if flight.since >= began:
                waiting = True
                continue
            del self._flights[doc_id]
            self._answer(flight.items, transient(f"{flight.label} is still {state} after the pipeline ran", None))
            self._room.set()
            self._wakeup.set()
        return waiting

    # --- outcomes ---------------------------------------------------------------------
    def _watch_status_writes(self) -> None:
        """Wake the watcher when LightRAG writes a document PROCESSED or FAILED."""
        status = self._rag.doc_status
        upsert = status.upsert

        async def upsert_and_notify(data: Mapping[str, Mapping[str, object]]) -> None:
            await upsert(data)
            for row in data.values():
                value = row.get("status") if isinstance(row, Mapping) else None
                if str(getattr(value, "value", value) or "").lower() in ("processed", "failed"):
                    self._statuses.set()
                    return

        status.upsert = upsert_and_notify

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        probed = loop.time()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._statuses.wait(), POLL_SECONDS)
            self._statuses.clear()
            if not self._flights:
                continue
            read = list(self._flights)  # documents flown while the read runs wait for the next one
            try:
                docs = await self._rag.aget_docs_by_ids(read)
            except Exception as exc:  # noqa: BLE001 - the storage is down: probed below, read again next time
                log.warning("LightRAG's document statuses unreadable: %s", exc)
                docs = None
            now = loop.time()
            if docs is not None:
                self._settle_flights(read, docs, now)
            if self._flights and now - probed >= WATCH_SECONDS:
                probed = now
                await self._probe_storage()

    def _settle_flights(self, read: Sequence[str], docs: Mapping[str, DocRecord], now: float) -> None:
        ended = 0
        for doc_id in read:
            flight = self._flights.get(doc_id)
            if flight is None:
                continue
            doc = docs.get(doc_id)
            state = doc_status(doc)
            if state == "processed":
                self._settle_processed(flight.items)
            elif state in IN_PROGRESS:
                if now - flight.since <= self._task_timeout:
                    continue
                log.warning("LightRAG document %s outlasted the task timeout; it runs on", doc_id)
                self._answer(flight.items, chunk_fault(f"timed out after {self._task_timeout:.0f}s in LightRAG"))
            else:
                self._answer(flight.items, outcome_of(doc, flight.label))
            del self._flights[doc_id]
            ended += 1
        if ended:
            self._room.set()
            self._wakeup.set()

    def _settle_processed(self, items: list[_Queued]) -> None:
        """Answer done: at once where LightRAG's storages wrote on upsert, else once a
        group commit that began after now has succeeded."""
        if not items:
            return
        if self._commit is None:
            self._answer(items, None)
            return
        for item in items:
            self._awaiting.setdefault(item.task.doc_id, []).append(item)
        task = asyncio.create_task(self._answer_when_durable(items))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_when_durable(self, items: list[_Queued]) -> None:
        assert self._commit is not None
        try:
            await self._commit.durable()
            outcome: Outcome = None
        except CommitError as exc:
            outcome = classify_exception(exc.__cause__ or exc, exc.dependency)
            log.warning("%d LightRAG documents not committed: %s", len(items), exc)
        for item in items:
            waiting = self._awaiting.get(item.task.doc_id)
            if waiting is not None and item in waiting:
                waiting.remove(item)
                if not waiting:
                    del self._awaiting[item.task.doc_id]
        self._answer(items, outcome)
        self._wakeup.set()

    async def _reprocess_uncommitted(self) -> None:
        """LightRAG dropped its pending buffers (its abort on an internal storage
        error): a document it marked PROCESSED since the last commit may miss data,
        so it goes back to PENDING. One waiting for the commit is answered
        transient (its chunk is tried again); one in flight stays in flight and
        runs again. Awaited by the group commit before its next commit."""
        waiting, flying = list(self._awaiting), list(self._flights)
        updates = await self._pending_updates([*waiting, *flying], "processed")
        if updates:
            log.warning("LightRAG dropped its buffers: %d documents are processed again", len(updates))
            await self._rag.doc_status.upsert(updates)
            self._kick.set()
        again = transient("LightRAG aborted its batch; the document is processed again", None)
        for doc_id in waiting:
            self._answer(self._awaiting.pop(doc_id, []), again)

    def _answer(self, items: Sequence[_Queued], outcome: Outcome) -> None:
        for item in items:
            if self._futures.get(item.task.doc_id) is item.future:
                del self._futures[item.task.doc_id]
                if self._order is not None:
                    self._order.forget(item.task.doc_id)
            if not item.future.done():
                item.future.set_result(outcome)
                self.answered += 1

    async def _probe_storage(self) -> None:
        try:
            answered = await asyncio.wait_for(self._storage_probe(), WATCH_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means down
            answered, reason = False, f"{type(exc).__name__}: {exc}"
        else:
            reason = "the storage probe failed"
        if not answered:
            self._gate.trip(STORAGE, f"LightRAG's storages do not answer while documents are in flight: {reason}")

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


def _status_object(doc: DocRecord) -> StatusObject:
    """LightRAG's reset helper wants a DocProcessingStatus; JSON storages answer dicts."""
    if not isinstance(doc, Mapping):
        return doc
    from lightrag.base import DocProcessingStatus

    fields = DocProcessingStatus.__dataclass_fields__
    status: StatusObject = DocProcessingStatus(**{key: value for key, value in doc.items() if key in fields})
    return status


def _by_job(items: Sequence[_Queued]) -> dict[str, list[_Queued]]:
    jobs: dict[str, list[_Queued]] = defaultdict(list)
    for item in items:
        jobs[item.task.job_id].append(item)
    return jobs
