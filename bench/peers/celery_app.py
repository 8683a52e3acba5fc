"""Celery with the Redis broker: `celery -A peers.celery_app worker --pool ... --concurrency ...`;
enqueue with `noop.delay(text)`. No result backend: results are ignored."""

from __future__ import annotations

from celery import Celery

from . import QUEUE, redis_url, task_done

app = Celery("bench", broker=redis_url())
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(text: str) -> None:
    task_done()
