"""Replace jobs' chunks: held until their job's retire has removed the old documents.

A replace job's first task (its retire, index 0: delete.py) removes the
documents its source_uri holds; its chunks enter LightRAG only after it, so
that a chunk whose text an old document held is inserted anew instead of being
found as a duplicate of a document about to go. The retire may run on another
host: the chunks wait for the job's `retired` mark in Redis (jobs/ledger.py),
read every POLL_SECONDS, and at once when this process's own deleter ran it.
A chunk whose retire failed for good is answered as a chunk fault (it is
dead-lettered with it; replaying both replays the replace); a chunk of a
cancelled job is answered cancelled. When an attempt of a retire fails in this
process, the chunks of its job held here are answered transient at once: a
worker retries its batch once every task of it is answered, and the retire may
be in the same batch as the chunks that wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence

from ...jobs.tracker import RetireState
from ...queue.tasks import ChunkTask
from ...workers.faults import STORAGE, Failure, chunk_fault, classify_exception, job_cancelled, transient
from ...workers.processor import Admission
from .delete import Removals

log = logging.getLogger("shield_orchestrator.lightrag")

POLL_SECONDS = 0.25
RETIRE_FAILED = "retire-failed"  # why a waiter is cancelled: its job's retire failed an attempt
Submit = Callable[[Sequence[ChunkTask], Admission], Mapping[str, asyncio.Future[Failure | None]]]


class AfterRetire:
    """Holds replace jobs' chunks until their retire is done, then hands them to the
    feeder (`submit`). Owns one waiter per job with chunks held. Guarantees: every held
    chunk gets one outcome (the feeder's, once handed on); none is handed on before
    its job is marked retired."""

    def __init__(self, removals: Removals, submit: Submit) -> None:
        self._removals = removals
        self._submit = submit
        self._waiters: dict[asyncio.Task[None], str] = {}  # by job
        self._retired = asyncio.Event()  # this process's deleter ran a retire: look again now

    def retired(self) -> None:
        """A retire ended in this process: the waiters read their jobs' marks at once."""
        self._retired.set()

    def retire_failed(self, job_id: str) -> None:
        """An attempt of the job's retire failed in this process: its chunks held here
        are answered transient (their batch, maybe the retire's own, is retried)."""
        for waiter, job in list(self._waiters.items()):
            if job == job_id:
                waiter.cancel(RETIRE_FAILED)

    def submit(self, tasks: Sequence[ChunkTask], admit: Admission) -> dict[str, asyncio.Future[Failure | None]]:
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Failure | None]] = {task.doc_id: loop.create_future() for task in tasks}
        by_job: dict[str, list[ChunkTask]] = {}
        for task in tasks:
            by_job.setdefault(task.job_id, []).append(task)
        for job_id, held in by_job.items():
            waiter = asyncio.create_task(self._wait(job_id, held, admit, futures), name="lightrag-after-retire")
            self._waiters[waiter] = job_id
            waiter.add_done_callback(lambda done: self._waiters.pop(done, None))
        return futures

    async def stop(self) -> None:
        for waiter in list(self._waiters):
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def _wait(
        self,
        job_id: str,
        held: list[ChunkTask],
        admit: Admission,
        futures: Mapping[str, asyncio.Future[Failure | None]],
    ) -> None:
        mine = {task.doc_id: futures[task.doc_id] for task in held}
        try:
            state = await self._state_when_settled(job_id)
        except asyncio.CancelledError as cancel:
            if cancel.args == (RETIRE_FAILED,):
                _answer(mine, transient(f"job {job_id}: an attempt of its retire failed; the chunk waits for it", None))
                return
            _answer(mine, transient("the service stopped while the chunk waited for its replace's retire", None))
            raise
        except Exception as exc:  # noqa: BLE001 - Redis did not answer: the chunks come back
            _answer(mine, classify_exception(exc, STORAGE))
            return
        if state is RetireState.CANCELLED:
            _answer(mine, job_cancelled(job_id))
            return
        if state is RetireState.FAILED:
            _answer(mine, chunk_fault(f"job {job_id}: its retire of the old documents failed; the chunk waits for it"))
            return
        for doc_id, inner in self._submit(held, admit).items():
            inner.add_done_callback(functools.partial(_settle, mine[doc_id]))

    async def _state_when_settled(self, job_id: str) -> RetireState:
        while True:
            state = await self._removals.retire_state(job_id)
            if state is not RetireState.PENDING:
                return state
            self._retired.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retired.wait(), POLL_SECONDS)


def _settle(outer: asyncio.Future[Failure | None], inner: asyncio.Future[Failure | None]) -> None:
    if not outer.done():
        outer.set_result(inner.result() if not inner.cancelled() else transient("the chunk was not processed", None))


def _answer(futures: Mapping[str, asyncio.Future[Failure | None]], outcome: Failure) -> None:
    for future in futures.values():
        if not future.done():
            future.set_result(outcome)
