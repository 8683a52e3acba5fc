"""The floor: a minimal Redis Streams consumer, the least any stream consumer can do.

XREADGROUP COUNT 100 (blocking), then XACK + XDEL of the batch in one pipeline;
no parsing, no tracking, no events. It runs on the service's interpreter and
client library (redis-py), so the ratio to it is the service's own overhead.
The harness is the producer (XADD in pipelined batches).

    python bench/floor.py REDIS_URL STREAM GROUP [CONSUMERS]
"""

from __future__ import annotations

import asyncio
import sys

from peers import task_done
from redis.asyncio import Redis


async def consume(redis: Redis, stream: str, group: str, name: str) -> None:
    while True:
        reply = await redis.xreadgroup(group, name, {stream: ">"}, count=100, block=1000)
        for _stream, entries in reply or []:
            ids = [entry_id for entry_id, _fields in entries]
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xack(stream, group, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()
            task_done(len(ids))


async def main(url: str, stream: str, group: str, consumers: int) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    await asyncio.gather(*(consume(redis, stream, group, f"floor-{n}") for n in range(consumers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1))
