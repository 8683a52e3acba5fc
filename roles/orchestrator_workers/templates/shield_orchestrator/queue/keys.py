"""Every Redis key and stream name of the service, built in one place.

The Lua scripts never build a key themselves: they get theirs as KEYS from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings


@dataclass(frozen=True)
class RedisKeys:
    """Every Redis key name, derived from the stream name, the group, the events stream
    and the key prefix of the settings: the one place a key is spelt."""

    stream: str
    group: str
    events: str
    prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisKeys:
        return cls(
            stream=settings.stream_name,
            group=settings.consumer_group,
            events=settings.events_stream,
            prefix=settings.key_prefix,
        )

    @property
    def high(self) -> str:
        """The stream of high-priority chunks, read before the normal one."""
        return f"{self.stream}:high"

    @property
    def streams(self) -> tuple[str, str]:
        """Both ingestion streams, high priority first."""
        return (self.high, self.stream)

    def stream_for(self, priority: str) -> str:
        return self.high if priority == "high" else self.stream

    @property
    def dlq(self) -> str:
        """Dead letters: entries that failed for good, with their error."""
        return f"{self.stream}:dlq"

    def job(self, job_id: str) -> str:
        """A job's hash: status, counters, timestamps."""
        return f"{self.prefix}job:{job_id}"

    def job_done(self, job_id: str) -> str:
        """The set of a job's chunk indexes already counted (a redelivery counts once)."""
        return f"{self.job(job_id)}:done"

    def job_admitted(self, job_id: str) -> str:
        """A bitmap of the job's chunk indexes handed to LightRAG (admit_chunks.lua):
        what a cancel can no longer stop."""
        return f"{self.job(job_id)}:admitted"

    def job_duplicates(self, job_id: str) -> str:
        """A hash of the job's chunks LightRAG found already in the graph: chunk index ->
        the document that holds its text (record_duplicates.lua)."""
        return f"{self.job(job_id)}:duplicates"

    @property
    def jobs_dirty(self) -> str:
        """Hash job id -> version of the jobs PostgreSQL has not caught up with."""
        return f"{self.prefix}jobs:dirty"

    def heartbeat(self, consumer: str) -> str:
        """A consumer's heartbeat: present (with a short TTL) while its process lives."""
        return f"{self.prefix}heartbeat:{consumer}"

    def workspace_lock(self, workspace: str) -> str:
        """The lease that lets one host at a time run LightRAG's pipeline on `workspace`."""
        return f"{self.prefix}lightrag:lock:{workspace}"

    @property
    def llm_slots(self) -> str:
        """Sorted set of the cluster's LLM slots: holder tokens scored by lease expiry (lightrag/llm/slots.py)."""
        return f"{self.prefix}llm:slots"

    def idempotency(self, key_sha256: str) -> str:
        """The job first accepted with an Idempotency-Key (by the key's SHA-256): "<job id> <body's SHA-256>"."""
        return f"{self.prefix}idempotency:{key_sha256}"

    def replacing(self, source_sha256: str) -> str:
        """The replace job last accepted for a source_uri (by its SHA-256): its job id."""
        return f"{self.prefix}replacing:{source_sha256}"

    @property
    def jobs_recent(self) -> str:
        """Sorted set of job ids by creation time (GET /jobs while PostgreSQL is down)."""
        return f"{self.prefix}jobs:recent"
