"""The shield orchestrator with a no-op chunk processor: the pool-overhead contestant.

Run with the rendered package on PYTHONPATH (the harness does):
    python bench/noop_service.py
Everything but the processor is the product: API, worker pool, job tracker,
PostgreSQL projection, event bus; settings come from ORCHESTRATOR_* variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from shield_orchestrator.app import configure_logging, serve
from shield_orchestrator.chunks import ChunkTask
from shield_orchestrator.settings import Settings


class NoopProcessor:
    """Takes every chunk as done at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check(self) -> dict[str, Any]:
        return {"processor": {"status": "up", "kind": "no-op (benchmark)"}}

    async def process_batch(self, tasks: Sequence[ChunkTask], time_budget: float) -> dict[str, str | None]:
        return {task.doc_id: None for task in tasks}


def main() -> int:
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_level)
    return serve(settings, NoopProcessor)


if __name__ == "__main__":
    sys.exit(main())
