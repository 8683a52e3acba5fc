"""The processor interface: what the worker pool calls to process chunk tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..queue.tasks import ChunkTask
from .breaker import DependencyReport
from .faults import Failure

# What a processor answers for a batch: every task's doc_id -> None (done) or why not.
BatchResult = dict[str, Failure | None]
# Whether some chunks of one job (by index) may start: False once the job is cancelled.
Admission = Callable[[str, Sequence[int]], Awaitable[bool]]


async def admit_all(job_id: str, indexes: Sequence[int]) -> bool:
    """The Admission of a caller without a job tracker (the batch interface, tests): every chunk may start."""
    return True


async def batch_result(futures: Mapping[str, asyncio.Future[Failure | None]]) -> BatchResult:
    """A pipeline's futures, all awaited, as the batch interface's result."""
    if futures:
        await asyncio.wait(futures.values())
    return {doc_id: future.result() for doc_id, future in futures.items()}


class ChunkProcessor(Protocol):
    """What the worker pool calls. The LightRAG processor is the product's one;
    the benchmark harness injects a no-op one."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def process_batch(self, tasks: Sequence[ChunkTask]) -> BatchResult:
        """Every task's outcome. The processor keeps its own deadline: a chunk it
        gives up on is answered with a failure, not left waiting."""
        ...

    async def check(self) -> list[DependencyReport]:
        """Health of the processor's own dependencies, named and marked required by the processor."""
        ...


@runtime_checkable
class PipelineProcessor(ChunkProcessor, Protocol):
    """A processor that works as a continuous pipeline (the LightRAG one): each task is
    answered on its own as soon as it is done, a task starts only once its job is
    admitted (not cancelled), and the workers read only as much as it can start."""

    def submit(
        self, tasks: Sequence[ChunkTask], admit: Admission, reserved: int = 0
    ) -> Mapping[str, asyncio.Future[Failure | None]]:
        """One future per task's doc_id, resolved with the task's outcome; `reserved`
        places of an earlier `reserve` are spent by these tasks."""
        ...

    async def reserve(self, want: int, stopping: asyncio.Event) -> int:
        """Wait until the pipeline can take more, then reserve up to `want` places
        (0 once `stopping` is set). A reservation is spent by `submit` or given back
        with `release`."""
        ...

    def release(self, count: int) -> None:
        """Give back reserved places that were not submitted."""
        ...

    def begin_stop(self) -> None:
        """Take nothing new: tasks not started are answered at once (transient), those
        in flight run on."""
        ...
