"""Dead letters: list them, replay them into their own job, or discard them.

A replayed chunk goes back to its own job: the job takes it back as pending
(replay_chunks.lua: out of the done set, one failure less, out of `failed`,
a new generation so that the PostgreSQL row may move back once), then the
entry goes back to its stream and the letter leaves the dead-letter stream,
in one transaction. LightRAG's document of the chunk is FAILED: the feeder
puts it back to PENDING on the next attempt. A job whose Redis hash has
expired is restored from its PostgreSQL row first.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from ..queue.keys import RedisKeys
from ..queue.redis_text import entry_fields, text, text_fields
from ..queue.tasks import ChunkTask
from .history import JobHistory
from .states import JobState
from .tracker import JobTracker

log = logging.getLogger("shield_orchestrator.dead_letters")

LETTER_FIELDS = ("original_id", "original_stream", "error", "attempts", "consumer", "dead_lettered_at")
SCAN_PAGE = 500


@dataclass(frozen=True)
class DeadLetter:
    """An entry of the dead-letter stream: the chunk's fields as they were in its stream,
    why and when it failed for good. `fields` keeps them all, so chunk_fields()
    rebuilds the chunk's entry."""

    id: str
    job_id: str
    index: int
    source_uri: str
    text_preview: str
    error: str
    attempts: int
    dead_lettered_at: str
    stream: str
    fields: dict[str, str]

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        return cls(
            id=entry_id,
            job_id=fields.get("job_id", ""),
            index=int(fields.get("index") or -1),
            source_uri=fields.get("source_uri", ""),
            text_preview=fields.get("text", "")[:200],
            error=fields.get("error", ""),
            attempts=int(fields.get("attempts") or 0),
            dead_lettered_at=fields.get("dead_lettered_at", ""),
            stream=fields.get("original_stream", ""),
            fields=fields,
        )

    def as_dict(self) -> dict[str, str | int]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "chunk_index": self.index,
            "source_uri": self.source_uri,
            "text_preview": self.text_preview,
            "error": self.error,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at,
        }

    def chunk_fields(self) -> dict[str, str]:
        """The stream entry of the chunk, as it was before it was dead-lettered."""
        return {key: value for key, value in self.fields.items() if key not in LETTER_FIELDS}


@dataclass
class ReplayReport:
    """What a replay did: the chunks put back, the jobs that took them, the jobs skipped
    (unknown, or cancelled)."""

    replayed: int = 0
    jobs: list[str] | None = None
    skipped: list[str] | None = None


class DeadLetters:
    """The dead-letter stream: find, get, discard, and replay a letter into its own job
    (taken back first; a job gone from Redis is restored from PostgreSQL) and its
    own stream, the entry moved in one transaction."""

    def __init__(self, redis: Redis, keys: RedisKeys, tracker: JobTracker, history: JobHistory) -> None:
        self._redis = redis
        self._keys = keys
        self._tracker = tracker
        self._history = history

    async def find(self, job_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first, optionally of one job."""
        found: list[DeadLetter] = []
        cursor = "+"
        while len(found) < limit:
            page = await self._redis.xrevrange(self._keys.dlq, max=cursor, count=SCAN_PAGE) or []
            for raw_id, raw_fields in page:
                letter = DeadLetter.from_entry(text(raw_id), text_fields(raw_fields))
                if job_id is None or letter.job_id == job_id:
                    found.append(letter)
            if len(page) < SCAN_PAGE:
                break
            cursor = f"({text(page[-1][0])}"
        return found[:limit]

    async def get(self, ids: Sequence[str]) -> list[DeadLetter]:
        letters = []
        for entry_id in ids:
            for raw_id, raw_fields in await self._redis.xrange(self._keys.dlq, min=entry_id, max=entry_id) or []:
                letters.append(DeadLetter.from_entry(text(raw_id), text_fields(raw_fields)))
        return letters

    async def discard(self, entry_id: str) -> bool:
        return bool(await self._redis.xdel(self._keys.dlq, entry_id))

    async def replay(self, letters: Sequence[DeadLetter], who: str) -> ReplayReport:
        """Each letter back into its job and its stream."""
        by_job: dict[str, list[DeadLetter]] = defaultdict(list)
        for letter in letters:
            by_job[letter.job_id].append(letter)
        report = ReplayReport(0, [], [])
        for job_id, items in by_job.items():
            taken = await self._take_back(job_id, items)
            if taken is None:
                assert report.skipped is not None
                report.skipped.append(job_id)
                continue
            await self._requeue(items)
            report.replayed += len(items)
            assert report.jobs is not None
            report.jobs.append(job_id)
            log.info("replayed %d dead letters of job %s (asked by %s)", len(items), job_id, who)
        return report

    async def _take_back(self, job_id: str, letters: Sequence[DeadLetter]) -> int | None:
        """The job takes the chunks back; None when it cannot (unknown, or cancelled)."""
        indexes = [letter.index for letter in letters]
        job = await self._tracker.get(job_id)
        if job is None:
            job = await self._history.get(job_id)
            if job is None:
                log.warning("dead letters of job %s not replayed: the job is unknown", job_id)
                return None
            # A finished job counted every chunk (processed or failed): all of
            # them in the done set, then the replayed ones are taken back.
            await self._tracker.restore(job, list(range(job["chunks_total"])))
        elif job["status"] == JobState.CANCELLED:
            log.warning("dead letters of job %s not replayed: the job was cancelled", job_id)
            return None
        return await self._tracker.take_back(job_id, indexes)

    async def _requeue(self, letters: Sequence[DeadLetter]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for letter in letters:
                stream = letter.stream if letter.stream in self._keys.streams else self._keys.stream
                fields = ChunkTask.from_entry(letter.id, letter.chunk_fields()).to_entry()
                pipe.xadd(stream, entry_fields(fields))
                pipe.xdel(self._keys.dlq, letter.id)
            await pipe.execute()
