"""The group commit of LightRAG's file storages: continuous and crash-safe.

LightRAG (1.5.x) flushes each storage on its own (`index_done_callback`):
after every document, at its write-ahead barriers, at each doc-status
change. On the file storages a flush rewrites a whole file (a JSON file per
key-value store, the GraphML, a JSON file per vector store): O(graph) per
document, and the files of one document's flush reach the disk one by one,
unsynced.

`GroupCommit` owns those flushes. Each is noted, not done: the storage is
marked dirty, and the flush becomes "durable at the next group commit". A
committer task commits what is dirty when someone waits for it (`durable()`,
the feeder before it answers a chunk) or `timer` seconds after a storage
became dirty with nobody waiting, never more often than
keeps the commits under `max_duty` of the wall time: the next commit starts
no sooner than max(min_interval, last duration * (1/max_duty - 1)) after the
previous one ended. Every caller that waits while a commit runs is served by
the next one: one commit for all of them.

A commit is a snapshot of every storage at one instant. Each storage's
mutating methods hold a gate shared (gate.py); the commit holds it
exclusively, so it waits for the mutations running and new ones wait for it
(the LLM calls, which touch no storage, go on). The vectors buffered in the
vector storages are embedded before the gate is taken (embed_ahead.py), so
the gate is held for the writes, not for embedding calls. LightRAG writes its recovery
anchors (full_entities, full_relations, doc-status kg_write_state) before it
mutates the graph for a document and purges a reprocessed document's earlier
attempt through them, so such a snapshot is recoverable even with a document
half merged, provided every file of it is from the same instant. The undo
journal (journal.py) makes it so: a commit's files are all old or all new
after a crash (`recover()` at start, before LightRAG opens its storages), and
a commit that fails in process (the embedding endpoint down while a vector
store embeds its buffer at flush) is rolled back on disk at once, its
storages kept dirty and forced to write again at the next commit. The data
storages are written first, the doc statuses last, one after the other.

If LightRAG drops its pending buffers (its abort on an internal storage
error), documents it already marked PROCESSED in memory may miss data:
`on_drop` (the feeder's) is awaited before the next commit, to put them back
to PENDING.

`fault` is TEST-ONLY (faults.py): the step of a commit at which the process
SIGKILLs itself, from the environment variable SHIELD_TEST_COMMIT_KILL_AT.

Only for the file storages: the PostgreSQL ones write on upsert (flush.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ...workers.faults import EMBEDDING, STORAGE
from ..boundary import Flush, IndexedStorage, LightRAGInstance
from .embed_ahead import embed_ahead
from .faults import CommitFault
from .gate import RWGate
from .journal import JournalError, UndoJournal, file_spec, recover, storage_file

log = logging.getLogger("shield_orchestrator.lightrag")

# The coroutine methods by which LightRAG 1.5.7's file storages change what
# they hold (lightrag/kg/json_kv_impl.py, json_doc_status_impl.py,
# networkx_impl.py, nano_vector_db_impl.py): those an instance has are gated.
MUTATIONS = (
    "upsert",
    "delete",
    "drop",
    "update_doc_status_fields",
    "repair_source_conflict",
    "upsert_node",
    "upsert_edge",
    "upsert_nodes_batch",
    "upsert_edges_batch",
    "delete_node",
    "remove_nodes",
    "remove_edges",
    "delete_entity",
    "delete_entity_relation",
)
TIMER = 5.0  # with nobody waiting, a storage is committed at the latest this long after it became dirty
RETRY_MAX = 10.0  # the longest wait after commits that failed in a row


class CommitError(Exception):
    """A commit of the storages failed and was rolled back; `dependency` is what to blame."""

    def __init__(self, storage: str, dependency: str, cause: BaseException) -> None:
        super().__init__(f"commit of {storage} failed: {type(cause).__name__}: {cause}")
        self.storage = storage
        self.dependency = dependency


def _name(storage: IndexedStorage) -> str:
    namespace = getattr(storage, "final_namespace", None) or storage.namespace
    return f"{type(storage).__name__}[{namespace}]"


def _blame(exc: BaseException) -> str:
    """A vector storage embeds what it holds when it flushes: an error of the
    OpenAI client there is the embedding endpoint's, anything else the storage's."""
    import openai

    return EMBEDDING if isinstance(exc, openai.OpenAIError) else STORAGE


async def _finalize_nothing() -> None:
    """A storage's `finalize`, replaced: what it holds reaches the disk only
    through the group commit (LightRAG's would save the vector stores outside it)."""


class GroupCommit:
    """The continuous, crash-safe commit of LightRAG's file storages.

    Owns every storage's flush (`index_done_callback`, replaced on the
    instance by one that notes it), its abort (`drop_pending_index_ops`,
    noted), its mutating methods (gated) and its `finalize` (a no-op), the
    committer task, the undo journal under `working_dir`. Guarantees: no
    storage file is written but by a commit; a commit writes every storage as
    it was at one instant, data first, statuses last, all of its files or
    none (crash or failure); `durable()` returns only once a commit that
    began after the call has succeeded, and raises CommitError if it failed;
    a failed commit leaves everything it held to write for the next one;
    commits take at most `max_duty` of the wall time."""

    def __init__(
        self,
        storages: Sequence[IndexedStorage],
        doc_status: IndexedStorage,
        working_dir: str,
        *,
        min_interval: float = 0.5,
        max_duty: float = 0.25,
        fault: str | None = None,
        timer: float = TIMER,
    ) -> None:
        if not 0 < max_duty <= 1:
            raise ValueError(f"max_duty must be in (0, 1], not {max_duty}")
        self._status = doc_status
        self._order = [storage for storage in storages if storage is not doc_status] + [doc_status]
        self._files = {id(storage): storage_file(storage) for storage in self._order}
        self._working_dir = working_dir
        self.min_interval, self.max_duty, self.timer = min_interval, max_duty, timer
        self.on_drop: Callable[[], Awaitable[None]] | None = None
        self.commits = 0  # commits that wrote
        self.deferred = 0  # flushes noted instead of done
        self.drops = 0  # buffers LightRAG dropped
        self.embedded_ahead = 0  # vectors embedded before a commit held the gate
        self.fault = CommitFault(fault)
        self._gate = RWGate()
        self._lock = asyncio.Lock()  # one commit at a time
        self._wake = asyncio.Event()
        self._flushes: dict[int, Flush] = {}
        self._dirty: set[int] = set()
        self._dirty_since = 0.0  # when the storages became dirty (time.monotonic(): the loop's clock)
        self._dropped = False
        self._started = 0  # commits begun, numbered from 1
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (the commit that serves it, the caller)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_at = float("-inf")
        self._failures = 0  # commits failed in a row
        for storage in self._order:
            self._take_over(storage)

    # --- the storages, taken over -------------------------------------------

    def _take_over(self, storage: IndexedStorage) -> None:
        key = id(storage)
        self._flushes[key] = storage.index_done_callback
        storage.index_done_callback = self._noting_flush(key)
        storage.drop_pending_index_ops = self._noting_drop(storage.drop_pending_index_ops)
        for name in MUTATIONS:
            method = getattr(storage, name, None)
            if method is not None and inspect.iscoroutinefunction(method):
                setattr(storage, name, self._gated(key, method))
        storage.finalize = _finalize_nothing

    def _noting_flush(self, key: int) -> Flush:
        async def index_done_callback() -> None:
            self.deferred += 1
            self._mark(key)

        return index_done_callback

    def _noting_drop(self, drop: Flush) -> Flush:
        async def drop_pending_index_ops() -> None:
            async with self._gate.shared():
                if not (self._dropped or self._dirty):
                    self._dirty_since = time.monotonic()
                self._dropped = True
                self.drops += 1
                self._wake.set()
                await drop()

        return drop_pending_index_ops

    def _gated(self, key: int, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def mutation(*args: Any, **kwargs: Any) -> Any:  # Any: LightRAG's own signatures, passed through
            async with self._gate.shared():
                self._mark(key)
                return await method(*args, **kwargs)

        return mutation

    def _mark(self, key: int) -> None:
        if key not in self._dirty:
            if not (self._dirty or self._dropped):
                self._dirty_since = time.monotonic()
            self._dirty.add(key)
            self._wake.set()

    # --- the interface ------------------------------------------------------

    def start(self) -> None:
        """Start the committer task."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="lightrag-group-commit")

    async def stop(self) -> None:
        """End the committer task, then commit what is dirty (CommitError logged)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self.commit()
        except CommitError as exc:
            log.warning("LightRAG storages not committed at stop (their documents are processed again): %s", exc)
        if self.commits:
            log.info(
                "LightRAG storage commits: %d group commits for %d flushes, %d vectors embedded before the gate",
                *(self.commits, self.deferred, self.embedded_ahead),
            )

    async def durable(self) -> None:
        """Return once a commit that began after this call has succeeded (at once
        when nothing is dirty and no commit runs); CommitError if it failed."""
        if not (self._dirty or self._dropped or self._lock.locked()):
            return
        if self._task is None or self._task.done():
            raise RuntimeError("the group commit is not running: start() it first")
        waiter = (self._started + 1, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._wake.set()
        try:
            await waiter[1]
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def commit(self) -> None:
        """Commit now, whatever the spacing; CommitError if it failed. A cancelled
        caller does not cancel the commit."""
        task = asyncio.ensure_future(self._commit_locked())
        task.add_done_callback(_retrieved)
        await asyncio.shield(task)

    # --- the committer ------------------------------------------------------

    def _due_at(self) -> float | None:
        """When the next commit is due (time.monotonic()), None when there is nothing to commit."""
        if self._waiters:
            return self._next_at
        if self._dirty or self._dropped:
            return max(self._next_at, self._dirty_since + self.timer)
        return None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            due = self._due_at()
            delay = None if due is None else due - time.monotonic()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            try:
                await self._commit_locked()
            except CommitError as exc:
                log.warning("LightRAG storages not committed (tried again): %s", exc)
            except Exception:
                log.exception("the group commit failed unexpectedly (tried again)")

    async def _commit_locked(self) -> None:
        async with self._lock:
            self._started += 1
            number = self._started
            try:
                await self._commit_once(number)
            except BaseException as exc:
                error = exc if isinstance(exc, CommitError) else CommitError("the storages", STORAGE, exc)
                self._settle(number, error)
                raise
            self._settle(number, None)

    def _settle(self, number: int, error: CommitError | None) -> None:
        """Answer the callers that commit `number` serves."""
        served = [waiter for waiter in self._waiters if waiter[0] <= number]
        self._waiters = [waiter for waiter in self._waiters if waiter[0] > number]
        for _number, future in served:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def _commit_once(self, number: int) -> None:
        started, attempted = time.monotonic(), False
        try:
            await self._run_on_drop()
            if not self._dirty:
                return
            attempted = True
            await self._embed_ahead()
            async with self._gate.exclusive():
                keys, self._dirty = self._dirty, set()
                storages = [storage for storage in self._order if id(storage) in keys]
                try:
                    await self._write(number, storages)
                except BaseException:
                    if not self._dirty:
                        self._dirty_since = time.monotonic()
                    self._dirty |= keys  # all of it is written again by the next commit
                    self._force_rewrite(storages)
                    raise
            self.commits += 1
            self._failures = 0
        except CommitError:
            attempted = True
            self._failures += 1
            raise
        finally:
            if attempted:
                self._space(started, time.monotonic())

    async def _embed_ahead(self) -> None:
        """The vectors buffered so far, embedded before the gate (embed_ahead.py)."""
        try:
            self.embedded_ahead += await embed_ahead([s for s in self._order if id(s) in self._dirty])
        except Exception as exc:  # noqa: BLE001 - the flush embeds them, and its failure is the commit's
            log.debug("embedding ahead of commit %d failed: %s", self._started, exc)

    async def _run_on_drop(self) -> None:
        if not self._dropped:
            return
        self._dropped = False
        if self.on_drop is None:
            return
        try:
            await self.on_drop()
        except Exception as exc:
            self._dropped = True
            raise CommitError("the reset of the documents LightRAG dropped", STORAGE, exc) from exc

    async def _write(self, number: int, storages: list[IndexedStorage]) -> None:
        """The journaled write of the storages' files (journal.py); rolled back on disk if it fails."""
        journal = UndoJournal(self._working_dir, self.fault.reached)
        try:
            await _journaled(journal.begin, number, [self._files[id(storage)] for storage in storages])
            for storage in storages:
                await self._flush(storage)
                journal.flushed()
            await _journaled(journal.seal)
        except Exception:
            self._roll_back(number)
            raise

    async def _flush(self, storage: IndexedStorage) -> None:
        try:
            await self._flushes[id(storage)]()
        except Exception as exc:
            dependency = STORAGE if storage is self._status else _blame(exc)
            raise CommitError(_name(storage), dependency, exc) from exc

    def _roll_back(self, number: int) -> None:
        try:
            recover(self._working_dir)
        except (OSError, JournalError) as exc:
            log.error("commit %d failed and was not rolled back (the next commit does it first): %s", number, exc)

    def _force_rewrite(self, storages: list[IndexedStorage]) -> None:
        """A storage of a failed commit writes its file at the next one, even if its
        own write succeeded (its file was rolled back): the JSON key-value stores
        write only when their flag says dirty; the others write at every flush."""
        for storage in storages:
            flag = getattr(storage, "storage_updated", None)
            if file_spec(storage).flagged and flag is not None:
                flag.value = True

    def _space(self, started: float, ended: float) -> None:
        spacing = max(self.min_interval, (ended - started) * (1 / self.max_duty - 1))
        if self._failures:
            spacing = max(spacing, min(RETRY_MAX, self.min_interval * 2**self._failures))
        self._next_at = ended + spacing


async def _journaled(step: Callable[..., None], *args: object) -> None:
    """A step of the journal, off the event loop; its OSError is the storage's."""
    try:
        await asyncio.to_thread(step, *args)
    except OSError as exc:
        raise CommitError("the commit journal", STORAGE, exc) from exc


def _retrieved(task: asyncio.Task[None]) -> None:
    """A commit whose caller was cancelled: its outcome is not left unread."""
    if not task.cancelled():
        task.exception()


def commit_continuously(rag: LightRAGInstance, working_dir: str, fault: str | None) -> GroupCommit:
    """Route every storage of the LightRAG instance through one GroupCommit
    (not started), but those durable on write (the LLM cache's SQLite file,
    llm/cache.py); `working_dir` is LightRAG's, where the journal lives."""
    storages = [storage for storage in rag._index_storages() if not getattr(storage, "durable_on_write", False)]
    return GroupCommit(storages, rag.doc_status, working_dir, fault=fault)
