"""taskiq + taskiq-redis (stream broker, acknowledged):
`taskiq worker peers.taskiq_app:broker --workers 1 --max-async-tasks 32`; enqueue with `noop.kiq(text)`."""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from . import QUEUE, redis_url, task_done

broker = RedisStreamBroker(url=redis_url(), queue_name=QUEUE)


@broker.task
async def noop(text: str) -> None:
    task_done()
