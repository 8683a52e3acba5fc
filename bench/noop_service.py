"""The shield orchestrator with a no-op chunk processor: the pool-overhead contestant.

Run with the rendered package on PYTHONPATH (the harness does):
    python bench/noop_service.py
Everything but the processor is the product: API, worker pool, job tracker,
PostgreSQL projection, event bus; settings come from ORCHESTRATOR_* variables.
BENCH_NOOP_MS_PER_CHUNK (default 0) makes each batch take that long per chunk.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from shield_orchestrator.cli import configure_logging, load_settings
from shield_orchestrator.queue.tasks import ChunkTask
from shield_orchestrator.service import serve
from shield_orchestrator.settings import Settings, SettingsError
from shield_orchestrator.workers.breaker import DependencyGate, DependencyReport
from shield_orchestrator.workers.processor import BatchResult


class NoopProcessor:
    """Takes every chunk as done, at once or after BENCH_NOOP_MS_PER_CHUNK per chunk."""

    def __init__(
        self, settings: Settings, gate: DependencyGate, lock: object, watch: object, slots: object, ledger: object
    ) -> None:
        self.settings = settings
        self.seconds_per_chunk = float(os.environ.get("BENCH_NOOP_MS_PER_CHUNK") or 0) / 1000

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check(self) -> list[DependencyReport]:
        return [DependencyReport("processor", True, required=True, detail={"kind": "no-op (benchmark)"})]

    async def process_batch(self, tasks: Sequence[ChunkTask]) -> BatchResult:
        if self.seconds_per_chunk:
            await asyncio.sleep(self.seconds_per_chunk * len(tasks))
        return {task.doc_id: None for task in tasks}


def main() -> int:
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return serve(settings, NoopProcessor)


if __name__ == "__main__":
    sys.exit(main())
