"""Whose fault a failure is: a dependency's (transient) or the chunk's own.

Only the chunk's own fault spends one of its attempts and can end in the
dead-letter stream. A transient failure (a dependency refusing connections,
timing out, rate-limiting, answering 502/503/504, a storage flush that failed
because of one of those) pauses the pool on that dependency instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

# Dependencies the pool can pause on.
LLM = "llm_endpoint"
EMBEDDING = "embedding_endpoint"
STORAGE = "lightrag_storage"

TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})


class FaultKind(StrEnum):
    """Whose fault a failure is: a dependency's (transient: no attempt spent, the pool
    pauses) or the chunk's own (spends one of its attempts); or nobody's: the chunk's
    job was cancelled before the chunk entered LightRAG (acked unprocessed)."""

    TRANSIENT = "transient"
    CHUNK = "chunk"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Failure:
    """Why a chunk was not processed this time."""

    message: str
    kind: FaultKind = FaultKind.CHUNK
    dependency: str | None = None
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        return self.kind is FaultKind.TRANSIENT

    @property
    def cancelled(self) -> bool:
        return self.kind is FaultKind.CANCELLED


class Superseded(Exception):
    """A write this process may no longer make: another host took the LightRAG
    workspace over (lightrag/fence.py's StaleWriter). Owns nothing; classified
    transient and no dependency's failure: the chunk spends no attempt, no
    breaker opens, and it is tried again under the lock."""


def chunk_fault(message: str) -> Failure:
    return Failure(message, FaultKind.CHUNK)


def job_cancelled(job_id: str) -> Failure:
    """The chunk's job was cancelled before the chunk entered LightRAG."""
    return Failure(f"job {job_id} was cancelled before the chunk entered LightRAG", FaultKind.CANCELLED)


def transient(message: str, dependency: str | None, retry_after: float | None = None) -> Failure:
    return Failure(message, FaultKind.TRANSIENT, dependency, retry_after)


# What a chat call that found no LLM slot says (lightrag/llm/slots.py): every slot of
# the cluster's cap stayed taken, or Redis, which holds them, did not answer.
LLM_SLOT_SIGNATURE = "LLM slot wait timed out"

# Signatures of transient failures in error texts (LightRAG's doc-status
# error_msg, exception messages), then hints at which dependency failed.
_TRANSIENT = re.compile(
    r"(?i)(APIConnectionError|APITimeoutError|RateLimitError|ServiceUnavailable|" + LLM_SLOT_SIGNATURE + "|"
    r"Error code: (408|429|502|503|504)\b|status code (408|429|502|503|504)\b|"
    r"Connection (refused|reset|error|aborted)|ConnectError|ConnectTimeout|ReadTimeout|RemoteProtocolError|"
    r"timed out|TimeoutError|Temporary failure in name resolution|IndexFlushError|index flush failed|"
    r"cancellation_reason|Pipeline (was )?cancelled|ConnectionRefusedError|\[Errno (104|110|111|113)\]|"
    r"ConnectionDoesNotExist|CannotConnectNow|too many connections|server closed the connection|"
    r"connection was closed|connection is closed|database system is (shutting down|starting up|in recovery)|"
    r"No space left on device)"
)
# "Connection error." is the OpenAI client's APIConnectionError as LightRAG quotes
# it (e.g. a vector storage's flush, which embeds what it holds, failing on the
# embedding endpoint); the storages' own drivers word theirs differently. A chat
# call that found no LLM slot counts as the LLM endpoint's (it is its capacity).
_CLIENT_ERROR = re.compile(
    r"APIConnectionError|APITimeoutError|RateLimitError|Error code: \d{3}|\bConnection error\.|" + LLM_SLOT_SIGNATURE
)
_EMBEDDING_HINT = re.compile(r"(?i)(embed|VectorDB|Vector\w*Storage|vdb)")


def classify_message(message: str) -> Failure:
    """A failure from its text alone (what LightRAG records for a FAILED document)."""
    if not _TRANSIENT.search(message):
        return chunk_fault(message)
    # The LLM and embedding endpoints are reached through the OpenAI client, whose
    # errors carry its signature; a transient error without it came from
    # LightRAG's storages (a raw "[Errno 111] Connect call failed" is asyncpg's).
    if _CLIENT_ERROR.search(message):
        dependency = EMBEDDING if _EMBEDDING_HINT.search(message) else LLM
    else:
        dependency = STORAGE
    return transient(message, dependency)


def http_failure(status: int, message: str, dependency: str, retry_after: float | None) -> Failure:
    """An HTTP answer of an endpoint: 408/429/502/503/504 are the endpoint's
    trouble; any other refusal (400, 422, ...) is about this input."""
    if status in TRANSIENT_HTTP:
        return transient(message, dependency, retry_after)
    return chunk_fault(message)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for APIs and ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """The wait an HTTP answer asks for, in seconds: Retry-After-Ms (OpenAI's), else Retry-After."""
    milliseconds = parse_retry_after(headers.get("retry-after-ms"))
    return milliseconds / 1000 if milliseconds is not None else parse_retry_after(headers.get("retry-after"))


def classify_exception(exc: BaseException, dependency: str) -> Failure:
    """A failure from an exception raised while talking to `dependency` (an
    OpenAI-compatible endpoint, or LightRAG's storages)."""
    import httpx
    import openai

    cause = _unwrap(exc)
    message = f"{type(cause).__name__}: {cause}"[:2000]
    if _superseded(exc) or _superseded(cause):
        return transient(message, None)
    if isinstance(cause, openai.APIStatusError):
        retry_after = retry_after_of(cause.response.headers)
        return http_failure(cause.status_code, message, dependency, retry_after)
    if isinstance(cause, openai.APIConnectionError | httpx.TransportError | OSError | TimeoutError):
        return transient(message, dependency)
    found = classify_message(message)
    return transient(message, dependency) if found.transient else found


STORAGE_CLIENT_MODULES = frozenset({"asyncpg", "psycopg", "psycopg2", "sqlite3"})


def raised_by_storage(exc: BaseException) -> bool:
    """Whether `exc` came from a storage's client (PostgreSQL's asyncpg, SQLite, or a
    socket error under them) rather than an HTTP endpoint's: the OpenAI client wraps
    its own socket errors, so a bare OSError is a storage's. A timeout is not told
    apart (LightRAG's LLM queue raises TimeoutError too) and is not counted here."""
    import httpx
    import openai

    cause = _unwrap(exc)
    if isinstance(cause, openai.OpenAIError | httpx.HTTPError | TimeoutError):
        return False
    return isinstance(cause, OSError) or type(cause).__module__.split(".")[0] in STORAGE_CLIENT_MODULES


def _superseded(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from (LightRAG wraps some), is Superseded."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, Superseded):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unwrap(exc: BaseException) -> BaseException:
    """The error under tenacity's RetryError (LightRAG's bindings retry with it)."""
    for _ in range(5):
        last_attempt = getattr(exc, "last_attempt", None)
        inner = last_attempt.exception() if last_attempt is not None else None
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc
