"""SAQ: `saq peers.saq_app.settings`; enqueue with `queue.enqueue("noop", text=...)`."""

from __future__ import annotations

from typing import Any

from saq import Queue

from . import QUEUE, concurrency, redis_url, task_done

queue = Queue.from_url(redis_url(), name=QUEUE)


async def noop(ctx: Any, *, text: str) -> None:
    task_done()


settings = {"queue": queue, "functions": [noop], "concurrency": concurrency()}
