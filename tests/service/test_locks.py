"""The workspace lock on a real Redis: one holder at a time, renewed while held,
released at once when done, and lapsing within its lease when a holder dies."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from tests.support.servers import RedisServer


def test_one_holder_at_a_time_and_a_dead_holder_lapses(redis_server: RedisServer, rendered: Path) -> None:
    sys.path.insert(0, str(rendered))  # the package as the role renders it
    from shield_orchestrator.lightrag.locks import RedisLeaseLock

    async def scenario() -> dict[str, float]:
        redis = Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
        key = "shield:lightrag:lock:test"
        await redis.delete(key, f"{key}:fence", f"{key}:contended")
        first, second = RedisLeaseLock(redis, key, ttl_seconds=3), RedisLeaseLock(redis, key, ttl_seconds=3)
        figures: dict[str, float] = {}
        async with first:
            waiter = asyncio.create_task(second.__aenter__())
            await asyncio.sleep(4)  # longer than the lease: the holder renews it
            assert not waiter.done(), "a second holder got in while the first held the lease"
            # Still the first holder's lease (renewed past its 3 s), and the fence
            # it took is the counter's.
            assert await redis.get(key) == first._token
            assert await redis.pttl(key) > 1000
            assert first.fence == 1 == int(await redis.get(f"{key}:fence") or 0)
            released = time.monotonic()
        await asyncio.wait_for(waiter, 5)
        figures["handover"] = time.monotonic() - released
        assert second.fence == 2
        # The holder dies: its renewer stops, nothing releases the lease.
        assert second._renewer is not None
        second._renewer.cancel()
        died = time.monotonic()
        third = RedisLeaseLock(redis, key, ttl_seconds=3)
        async with third:
            figures["takeover_after_death"] = time.monotonic() - died
            assert third.fence == 3
        await redis.aclose()
        return figures

    figures = asyncio.run(scenario())
    assert figures["handover"] < 1.0, figures
    assert figures["takeover_after_death"] <= 3.5, figures
