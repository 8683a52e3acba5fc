"""One commit per LightRAG round for the local (file) storages.

LightRAG (1.5.x) commits every document on its own: every storage flushed
(`_insert_done`), then the document's status written PROCESSED, and each
status transition persisted at once. With the file storages each of those
rewrites a whole JSON file or the GraphML, so a document costs a few
rewrites of the whole graph: O(graph) per document, the bulk of the CPU,
and it grows as the graph grows.

The feeder already answers a round's documents only when the round ends (a
chunk is acked after its outcome is read). `RoundCommit` moves the commit
there: while a round runs, the storages' flushes are noted, not done; when
it ends, every data storage is flushed, then the document statuses, last,
so PROCESSED is never on disk before the data it vouches for (LightRAG's
own order). Until that commit succeeds nothing of the round is answered as
done, and a failed commit is retried before the next round reads a status.
A process killed mid-round leaves the files as the last commit wrote them:
its chunks, never acked, come back and are processed again.

If LightRAG drops its pending buffers during a round (its abort on an
internal storage error), documents it already marked PROCESSED in memory may
miss data: the feeder puts them back to PENDING before the commit
(`dropped` tells it).

Only for the file storages: the PostgreSQL ones write on upsert, and their
statuses would reach the database ahead of the deferred data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from ...workers.faults import EMBEDDING, STORAGE
from ..boundary import Flush, IndexedStorage, LightRAGInstance

log = logging.getLogger("shield_orchestrator.lightrag")


class CommitError(Exception):
    """A storage's flush failed at the end of a round; `dependency` is what to blame."""

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


class RoundCommit:
    """The commit of LightRAG's file storages, one per round.

    Owns each storage's flush (`index_done_callback`, replaced on the instance
    by one that can be deferred) and wraps its abort (`drop_pending_index_ops`).
    Guarantees: while `round()` runs no storage writes; when the round ends
    normally every data storage is flushed, then the doc statuses, last, so no
    PROCESSED reaches the disk before its data; a commit that failed
    (CommitError) is tried again first, and no round runs until it succeeds;
    `dropped` tells whether LightRAG dropped its buffers during the round.
    Outside a round a flush is done at once."""

    def __init__(self, storages: Sequence[IndexedStorage], doc_status: IndexedStorage) -> None:
        self._status = doc_status
        self._storages = list(storages)
        self._flushes: dict[int, Flush] = {}
        self._deferring = False
        self._dirty = False  # something was deferred since the last commit that succeeded
        self.dropped = False  # LightRAG dropped a pending buffer during this round
        self.deferred = 0  # flushes noted instead of done
        self.commits = 0
        for storage in self._storages:
            self._flushes[id(storage)] = storage.index_done_callback
            storage.index_done_callback = self._deferrable(storage)
            storage.drop_pending_index_ops = self._noting_drop(storage.drop_pending_index_ops)

    def _deferrable(self, storage: IndexedStorage) -> Flush:
        flush = self._flushes[id(storage)]

        async def index_done_callback() -> None:
            if self._deferring:
                self._dirty = True
                self.deferred += 1
                return
            await flush()

        return index_done_callback

    def _noting_drop(self, drop: Flush) -> Flush:
        async def drop_pending_index_ops() -> None:
            if self._deferring:
                self.dropped = True
            await drop()

        return drop_pending_index_ops

    @contextlib.asynccontextmanager
    async def round(self) -> AsyncIterator[None]:
        """Defer the flushes while the block runs; commit when it ends normally.
        A commit an earlier round left undone is done first: nothing reads a
        status that is not on disk."""
        await self.commit()
        self._deferring, self.dropped = True, False
        try:
            yield
        finally:
            self._deferring = False
        await self.commit()

    async def commit(self) -> None:
        """Every data storage flushed, then the statuses; raises CommitError."""
        if not self._dirty:
            return
        data = [storage for storage in self._storages if storage is not self._status]
        results = await asyncio.gather(*(self._flushes[id(storage)]() for storage in data), return_exceptions=True)
        for storage, result in zip(data, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                raise CommitError(_name(storage), _blame(result), result) from result
        try:
            await self._flushes[id(self._status)]()
        except Exception as exc:
            raise CommitError(_name(self._status), STORAGE, exc) from exc
        self._dirty = False
        self.commits += 1


def commit_per_round(rag: LightRAGInstance) -> RoundCommit:
    """Route every storage of the LightRAG instance through one RoundCommit."""
    return RoundCommit(rag._index_storages(), rag.doc_status)
