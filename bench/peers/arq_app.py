"""arq: `arq peers.arq_app.WorkerSettings`; enqueue with `pool.enqueue_job("noop", text)`."""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from . import QUEUE, concurrency, redis_url, task_done


async def noop(ctx: Any, text: str) -> None:
    task_done()


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url())
    queue_name = QUEUE
    max_jobs = concurrency()
