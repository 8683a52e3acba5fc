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

    async def process_batch(self, tasks: Sequence[ChunkTask]) -> BatchResult:
        """Every task's outcome. The processor keeps its own deadline: a chunk it
        gives up on is answered with a failure, not left waiting (the LightRAG
        one answers a chunk fault once a round outlasts task_timeout_seconds)."""
        ...

    async def check(self) -> list[DependencyReport]:
        """Health of the processor's own dependencies, named and marked required by the processor."""
        ...
