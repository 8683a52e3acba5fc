"""Whose fault a failure is: the dependency's (transient, pauses) or the chunk's (spends an attempt)."""

from __future__ import annotations

import httpx
import openai
import pytest
from shield_orchestrator.workers.faults import (
    EMBEDDING,
    LLM,
    STORAGE,
    FaultKind,
    classify_exception,
    classify_message,
    parse_retry_after,
    raised_by_storage,
    retry_after_of,
)


@pytest.mark.parametrize(
    ("message", "kind", "dependency"),
    [
        ("C[1/1]: d-chunk-000: BadRequestError: Error code: 400 - lab stand-in: injected failure", "chunk", None),
        ("UnprocessableEntityError: Error code: 422 - input too long", "chunk", None),
        ("InternalServerError: Error code: 500 - oops", "chunk", None),
        ("APIConnectionError: Connection error.", "transient", LLM),
        ("RateLimitError: Error code: 429 - slow down", "transient", LLM),
        ("InternalServerError: Error code: 503 - Service Unavailable", "transient", LLM),
        ("APITimeoutError: Request timed out.", "transient", LLM),
        (
            "NanoVectorDBStorage[shield_relationships] index flush failed: RetryError[<Future raised "
            "APIConnectionError>]",
            "transient",
            EMBEDDING,
        ),
        (
            # As LightRAG 1.5.7 records it when the embedding endpoint goes away during a flush.
            "document d-21: Cancelled by internal error: NanoVectorDBStorage[shield_relationships]: "
            "Connection error.: Erik Lindqvist->Lisbon: User cancelled during relation summary",
            "transient",
            EMBEDDING,
        ),
        (
            "PGKVStorage[full_docs] index flush failed: ConnectionDoesNotExistError: connection was closed",
            "transient",
            STORAGE,
        ),
        ("OSError: [Errno 111] Connect call failed ('127.0.0.1', 5432) asyncpg", "transient", STORAGE),
        ("the database system is shutting down", "transient", STORAGE),
        ("Failed to extract: notes/postgres.txt: BadRequestError: Error code: 400", "chunk", None),
    ],
)
def test_classify_message(message: str, kind: str, dependency: str | None) -> None:
    failure = classify_message(message)
    assert failure.kind is FaultKind(kind)
    assert failure.dependency == dependency


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://llm.invalid/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (422, False), (500, False), (408, True), (429, True), (502, True), (503, True), (504, True)],
)
def test_http_status_decides(status: int, transient: bool) -> None:
    assert classify_exception(status_error(status), LLM).transient is transient


def test_retry_after_is_honoured() -> None:
    failure = classify_exception(status_error(429, {"Retry-After": "2"}), EMBEDDING)
    assert failure.transient and failure.dependency == EMBEDDING and failure.retry_after == 2.0


def test_retry_after_ms_comes_first() -> None:
    """OpenAI's Retry-After-Ms, as the SDK reads it, before Retry-After."""
    assert retry_after_of({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_of({"retry-after": "3"}) == 3.0
    assert retry_after_of({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_after_of({}) is None
    failure = classify_exception(status_error(429, {"Retry-After-Ms": "1500"}), LLM)
    assert failure.retry_after == 1.5


@pytest.mark.parametrize(
    "message",
    [
        # As LLMSlotUnavailable says it, and as LightRAG records it on the document.
        "LLM slot wait timed out after 240 s: the cluster's 8 slots stayed taken "
        "(orchestrator_workers_llm_cluster_max_async)",
        "Failed to extract entities and relationships: LLM slot wait timed out after 240 s: Redis, which holds "
        "the cluster's LLM slots, did not answer (ConnectionError: Error 111 connecting to 10.0.0.5:6379.)",
    ],
)
def test_a_call_that_found_no_llm_slot_is_the_llms_transient_failure(message: str) -> None:
    """Nothing is spent: the document waits for a later round, the pool pauses on the LLM."""
    failure = classify_message(message)
    assert (failure.kind, failure.dependency) == (FaultKind.TRANSIENT, LLM)


def test_transport_errors_are_the_dependency() -> None:
    request = httpx.Request("GET", "http://llm.invalid")
    for exc in (
        openai.APIConnectionError(request=request),
        httpx.ConnectError("refused"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ):
        failure = classify_exception(exc, STORAGE)
        assert failure.transient and failure.dependency == STORAGE, exc


def test_the_cause_under_a_retry_wrapper_decides() -> None:
    class Attempt:
        def __init__(self, exc: BaseException) -> None:
            self._exc = exc

        def exception(self) -> BaseException:
            return self._exc

    class RetryError(Exception):
        def __init__(self, exc: BaseException) -> None:
            super().__init__("RetryError")
            self.last_attempt = Attempt(exc)

    assert classify_exception(RetryError(status_error(503)), LLM).transient
    assert not classify_exception(RetryError(status_error(400)), LLM).transient


@pytest.mark.parametrize(
    ("raw", "seconds"), [("2", 2.0), (" 0.5 ", 0.5), (None, None), ("", None), ("soon", None), ("-1", None)]
)
def test_parse_retry_after(raw: str | None, seconds: float | None) -> None:
    assert parse_retry_after(raw) == seconds


def test_what_a_storage_client_raised_is_told_from_an_endpoints() -> None:
    import asyncpg

    assert raised_by_storage(ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 5432)"))
    assert raised_by_storage(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"))
    request = httpx.Request("POST", "http://llm.example/v1/chat/completions")
    assert not raised_by_storage(openai.APIConnectionError(request=request))
    assert not raised_by_storage(httpx.ConnectError("refused", request=request))
    assert not raised_by_storage(TimeoutError())  # LightRAG's LLM queue times out with it too
    assert not raised_by_storage(ValueError("the LLM's answer did not parse"))
