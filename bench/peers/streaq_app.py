"""streaQ: `streaq run peers.streaq_app:worker`; enqueue with `worker.enqueue_many`."""

from __future__ import annotations

from streaq import Worker

from . import QUEUE, concurrency, redis_url, task_done

worker = Worker(redis_url=redis_url(), concurrency=concurrency(), queue_name=QUEUE)


@worker.task(silent=True)
async def noop(text: str) -> None:
    task_done()
