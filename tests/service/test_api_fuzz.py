"""What a fuzzer tries by hand, against the real service: NUL bytes and lone
surrogates, deep and huge metadata, too many chunks, ids and headers of tens of
kilobytes, repeated query parameters, one SSE client too many, a chunked body
past the request limit. Every answer is a 4xx naming the field (never a 5xx)
and nothing is enqueued."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import ingest, wait_job
from tests.support.servers import RedisServer, wait_until
from tests.support.service import API_TOKEN, ServiceProcess

STREAM = "shield:ingestion_queue"
INGEST = "/lightrag/ingest-async"
# 5 chunks of at most 200 bytes: the request limit is 5 * (2 * 200 + 4096) + 65536 bytes.
BODY_LIMIT = 88016
SSE_MAX_CLIENTS = 100  # the role's default


@pytest.fixture(scope="module")
def fuzz_service(module_service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return module_service_factory("fuzz", max_chunks_per_job=5, max_chunk_bytes=200, sse_keepalive_seconds=1)


@pytest.fixture
def client(fuzz_service: ServiceProcess) -> Iterator[httpx.Client]:
    with fuzz_service.client() as c:
        yield c


def queue_state(redis_server: RedisServer) -> tuple[int, int]:
    """(stream length, job hashes): both unchanged when nothing was enqueued."""
    r = redis_server.client()
    return r.xlen(STREAM), len(r.keys("shield:job:*"))


def settled_queue_state(redis_server: RedisServer, within: float = 60.0) -> tuple[int, int]:
    """queue_state once no job is in flight (the stream empty and the keys unchanged
    over half a second): a job an earlier test accepted must not move the figures
    a test compares before and after a refused request."""
    readings: list[tuple[int, int]] = []

    def settled() -> tuple[int, int] | None:
        readings.append(queue_state(redis_server))
        last = readings[-2:]
        return last[-1] if len(last) == 2 and last[0] == last[1] and last[1][0] == 0 else None

    return wait_until(settled, within, "no job in flight", interval=0.5)


def raw(body: object) -> dict[str, Any]:
    """Send JSON as Python writes it: lone surrogates as \\ud800 escapes, NaN and
    Infinity as bare words (httpx's own encoder refuses both)."""
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


BAD_BODIES = [
    ({"chunks": [{"text": "a\ud800b"}]}, "chunks[0].text", "lone surrogate"),
    ({"chunks": [{"text": "a", "source_uri": "x\ud800"}]}, "chunks[0].source_uri", ""),
    ({"chunks": [{"text": "a"}], "source_type": "\ud800"}, "source_type", ""),
    ({"chunks": [{"text": "a\x00b"}]}, "chunks[0].text", "NUL"),
    ({"chunks": [{"text": "\x00\x00\x00"}]}, "chunks[0].text", "NUL"),
    ({"chunks": [{"text": "&nbsp;   &#160; "}]}, "chunks[0].text", "must contain text"),
    ({"chunks": [{"text": "a", "source_uri": "x\x00"}]}, "chunks[0].source_uri", "NUL"),
    ({"chunks": [{"text": "a"}], "source_type": "t" * 70}, "source_type", "at most 57"),
    ({"chunks": [{"text": "a", "source_uri": "u" * 5000}]}, "chunks[0].source_uri", "at most 2048"),
    ({"chunks": [{"text": "a"}], "metadata": {"k": "\x00"}}, "metadata", "NUL"),
    ({"chunks": [{"text": "a"}], "metadata": {"\x00": "v"}}, "metadata", "NUL"),
    ({"chunks": [{"text": "a", "metadata": {"k": "\ud800"}}]}, "chunks[0].metadata", "lone surrogate"),
    ({"chunks": [{"text": "a"}], "metadata": {"k": float("nan")}}, "metadata", "not a JSON number"),
    ({"chunks": [{"text": "a", "metadata": {"k": float("inf")}}]}, "chunks[0].metadata", "not a JSON number"),
    ({"chunks": [{"text": "a"}], "metadata": nested(300)}, "metadata", "nested deeper than 8 levels"),
    ({"chunks": [{"text": "a", "metadata": nested(9)}]}, "chunks[0].metadata", "nested deeper than 8 levels"),
    ({"chunks": [{"text": "a", "metadata": {"k": "x" * 66000}}]}, "chunks[0].metadata", "exceed 65536"),
    ({"chunks": [{"text": "a"}], "metadata": {"k": "x" * 66000}}, "metadata", "exceed 65536"),
    ({"chunks": []}, "chunks", "at least 1 item"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
def test_bad_bodies_get_422_naming_the_field_and_enqueue_nothing(
    client: httpx.Client, redis_server: RedisServer, body: object, field: str, message: str
) -> None:
    before = queue_state(redis_server)
    response = client.post(INGEST, **raw(body))
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["errors"][0]["field"] == field, answer
    assert answer["detail"].startswith(f"{field}: ") and message in answer["detail"], answer
    assert queue_state(redis_server) == before


def test_ten_thousand_one_byte_chunks_are_too_large(client: httpx.Client, redis_server: RedisServer) -> None:
    before = queue_state(redis_server)
    response = client.post(INGEST, json={"chunks": [{"text": "x"}] * 10_000})
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["field"] == "body"
    assert queue_state(redis_server) == before


@pytest.mark.parametrize("job_id", ["0", "x" * 10_000, "%00", str(uuid.uuid4()).replace("-", ""), "{" + "1" * 8 + "}"])
def test_a_job_id_that_is_not_a_uuid_gets_422(client: httpx.Client, job_id: str) -> None:
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/verify"):
        response = client.get(path)
        assert response.status_code == 422, (path[:80], response.text[:300])
        assert response.json()["errors"][0]["field"] == "job_id"
        assert len(response.content) < 2000  # the 10 kB id is not echoed back


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/jobs?limit=1&limit=100", "limit"),
        ("/jobs?status=queued&status=completed", "status"),
        ("/events/stream?event_types=ingestion.queued&event_types=ingestion.failed", "event_types"),
    ],
)
def test_repeated_query_parameters_get_422(client: httpx.Client, path: str, field: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": field, "message": "given 2 times; give it once"}]


def test_a_64_kb_authorization_header_is_refused_not_a_server_error(
    fuzz_service: ServiceProcess, redis_server: RedisServer
) -> None:
    before = queue_state(redis_server)
    huge = {"Authorization": "Bearer " + "A" * 65_536}
    with httpx.Client(base_url=fuzz_service.url, headers=huge, timeout=10) as anon:
        for method, path in [("GET", "/jobs"), ("POST", INGEST)]:
            response = anon.request(method, path, json={"chunks": [{"text": "a"}]} if method == "POST" else None)
            assert response.status_code in (400, 401, 431), response.text[:300]
    assert queue_state(redis_server) == before


@pytest.mark.parametrize(
    "last_event_id", ["garbage", "1-2-3", "-1", "9" * 10_000, "99999999999999999999999-0", "18446744073709551616"]
)
def test_a_garbage_last_event_id_gets_422(client: httpx.Client, last_event_id: str) -> None:
    response = client.get("/events/stream", headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 422, response.text[:300]
    assert response.json()["errors"][0]["field"] == "Last-Event-ID"


def test_the_101st_sse_client_gets_429_with_retry_after(fuzz_service: ServiceProcess) -> None:
    async def run() -> tuple[int, dict[str, Any], str]:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        limits = httpx.Limits(max_connections=SSE_MAX_CLIENTS + 10)
        async with httpx.AsyncClient(base_url=fuzz_service.url, headers=auth, timeout=30, limits=limits) as c:
            async with AsyncExitStack() as streams:
                opened = [
                    await streams.enter_async_context(c.stream("GET", "/events/stream")) for _ in range(SSE_MAX_CLIENTS)
                ]
                assert all(s.status_code == 200 for s in opened)
                refused = await c.get("/events/stream")
                return refused.status_code, refused.json(), refused.headers.get("Retry-After", "")

    status, answer, retry_after = asyncio.run(run())
    assert status == 429, answer
    assert answer["errors"][0]["field"] == "events" and f"at most {SSE_MAX_CLIENTS}" in answer["detail"]
    assert int(retry_after) >= 1


def padded_body(size: int) -> Iterator[bytes]:
    """A valid ingest request padded with JSON whitespace to `size` bytes, sent in
    64 kB pieces without a Content-Length (HTTP/1.1 chunked)."""
    head, tail = b'{"chunks": [{"text": "padded"}]', b"}"
    yield head
    piece = b" " * 65_536
    for _ in range((size - len(head) - len(tail)) // len(piece)):
        yield piece
    yield tail


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_chunked_body_over_the_limit_gets_413(client: httpx.Client, redis_server: RedisServer) -> None:
    before = queue_state(redis_server)
    response = client.post(INGEST, content=padded_body(200_000), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"body: more bytes exceed the {BODY_LIMIT}-byte request limit"
    assert response.json()["errors"][0]["field"] == "body"
    assert queue_state(redis_server) == before
    # Under the limit, the same framing is accepted.
    small = client.post(INGEST, content=padded_body(70_000), headers={"Content-Type": "application/json"})
    assert small.status_code == 202, small.text
    assert wait_job(client, small.json()["job_id"])["status"] == "completed"


def test_a_50_mb_chunked_body_is_not_held_in_memory(
    fuzz_service: ServiceProcess, client: httpx.Client, redis_server: RedisServer
) -> None:
    assert fuzz_service.proc is not None
    pid = fuzz_service.proc.popen.pid
    before, rss_before = settled_queue_state(redis_server), rss_kib(pid)
    response = client.post(INGEST, content=padded_body(50_000_000), headers={"Content-Type": "application/json"})
    growth_kib = rss_kib(pid) - rss_before
    print(f"service RSS {rss_before} KiB before, {growth_kib:+d} KiB after a 50 MB chunked body")
    assert response.status_code == 413, response.text
    assert queue_state(redis_server) == before
    assert growth_kib < 10 * 1024, f"RSS grew by {growth_kib} KiB"


def test_a_text_lightrag_cleans_up_is_found_again_as_a_duplicate(client: httpx.Client) -> None:
    """LightRAG stores a text stripped, HTML-unescaped, without control characters, and
    finds duplicates by the hash of that: the second job holding the same text
    completes through the first one's document (it was dead-lettered when the
    service hashed the text as received)."""
    text = "  \x01Fuzzed &amp; duplicated text.\x7f  "
    first = ingest(client, [{"text": text}])
    assert wait_job(client, first["job_id"])["status"] == "completed"
    second = ingest(client, [{"text": text}])
    job = wait_job(client, second["job_id"])
    assert job["status"] == "completed" and job["chunks_failed"] == 0, job
