"""The processor interface: what the worker pool calls to process a batch of chunk tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..queue.tasks import ChunkTask
from .breaker import DependencyReport
from .faults import Failure

# What a processor answers for a batch: every task's doc_id -> None (done) or why not.
BatchResult = dict[str, Failure | None]


class ChunkProcessor(Protocol):
    """What the worker pool calls. The LightRAG processor is the product's one;
    the benchmark harness injects a no-op one."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def process_batch(self, tasks: Sequence[ChunkTask], time_budget: float) -> BatchResult:
        """Process the batch within time_budget seconds."""
        ...

    async def check(self) -> list[DependencyReport]:
        """Health of the processor's own dependencies, named and marked required by the processor."""
        ...
