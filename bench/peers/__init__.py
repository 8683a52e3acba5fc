"""No-op tasks for the peer task queues, and how their worker processes report completions.

Each peer's task calls `task_done()`. A worker process keeps its count and the
wall-clock time of its last completion in memory; a daemon thread copies them
every 10 ms into the Redis hash `bench:done` (one field per process), so that
the harness learns when the last of N tasks finished, and when, at the cost of
one HSET per 10 ms instead of one Redis command per task.
"""

from __future__ import annotations

import os
import threading
import time

import redis

DONE_KEY = "bench:done"
QUEUE = "bench"

_lock = threading.Lock()
_count = 0
_last = 0.0
_flusher: threading.Thread | None = None


def redis_url() -> str:
    return os.environ["BENCH_REDIS_URL"]


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "32"))


def task_done(count: int = 1) -> None:
    global _count, _last, _flusher
    with _lock:
        _count += count
        _last = time.time()
        if _flusher is None:  # started lazily: after a prefork pool has forked
            _flusher = threading.Thread(target=_flush, name="bench-done", daemon=True)
            _flusher.start()


def _flush() -> None:
    client = redis.Redis.from_url(redis_url())
    field = str(os.getpid())
    sent = -1
    while True:
        time.sleep(0.01)
        with _lock:
            count, last = _count, _last
        if count != sent:
            client.hset(DONE_KEY, field, f"{count} {last!r}")
            sent = count
