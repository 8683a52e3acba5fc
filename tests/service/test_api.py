"""The HTTP contract: rejections with the right status and a message naming the
field (and nothing enqueued), auth, job lookups, SSE limits and replay, health,
metrics. One service process serves the whole module."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import shield_orchestrator
from shield_orchestrator.build_info import tree_sha256

from tests.support.helpers import SSECollector, ingest, make_chunks, wait_job
from tests.support.servers import RedisServer
from tests.support.service import API_TOKEN, ServiceProcess

STREAM = "shield:ingestion_queue"


@pytest.fixture(scope="module")
def api_service(module_service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return module_service_factory(
        "api",
        max_chunks_per_job=5,
        max_chunk_bytes=200,
        max_queue_depth=8,
        sse_max_clients=3,
        sse_keepalive_seconds=1,
    )


@pytest.fixture
def client(api_service: ServiceProcess) -> Iterator[httpx.Client]:
    with api_service.client() as c:
        yield c


def nothing_enqueued(redis_server: RedisServer) -> bool:
    r = redis_server.client()
    return r.xlen(STREAM) == 0 and not r.keys("shield:job:*")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"chunks": []}, 422, "chunks: List should have at least 1 item"),
        ({}, 422, "chunks: Field required"),
        ({"chunks": [{"text": ""}]}, 422, "chunks[0].text: must contain text"),
        ({"chunks": [{"text": "ok"}, {"text": "   \n"}]}, 422, "chunks[1].text: must contain text"),
        ({"chunks": [{"text": 42}]}, 422, "chunks[0].text: Input should be a valid string"),
        ({"chunks": [{"source_uri": "x"}]}, 422, "chunks[0].text: Field required"),
        ({"chunks": "text"}, 422, "chunks: Input should be a valid list"),
        ({"chunks": [{"text": "a"}], "metadata": []}, 422, "metadata: Input should be a valid dictionary"),
        ({"chunks": [{"text": f"t{i}"} for i in range(6)]}, 422, "chunks: 6 chunks exceed max_chunks_per_job (5)"),
        ({"chunks": [{"text": "é" * 101}]}, 422, "chunks[0].text: 202 bytes exceed max_chunk_bytes (200)"),
    ],
)
def test_rejected_ingest_names_the_field_and_enqueues_nothing(
    client: httpx.Client, redis_server: RedisServer, body: dict[str, Any], status: int, message: str
) -> None:
    redis_server.client().flushdb()
    response = client.post("/lightrag/ingest-async", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert message.split(": ")[0] in {error["field"] for error in response.json()["errors"]}, response.text
    assert nothing_enqueued(redis_server)


def test_oversize_body_is_rejected_before_parsing(client: httpx.Client, redis_server: RedisServer) -> None:
    redis_server.client().flushdb()
    # 5 chunks of at most 200 bytes: the request limit here is 5 * (2 * 200 + 4096) + 65536 bytes.
    response = client.post(
        "/lightrag/ingest-async", content=b"x" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "body: 100000 bytes exceed the 88016-byte request limit"
    assert nothing_enqueued(redis_server)


def test_invalid_json_is_rejected(client: httpx.Client, redis_server: RedisServer) -> None:
    redis_server.client().flushdb()
    response = client.post("/lightrag/ingest-async", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]
    assert nothing_enqueued(redis_server)


@pytest.mark.parametrize(
    ("headers", "label"),
    [({}, "missing"), ({"Authorization": "Bearer wrong-token"}, "wrong"), ({"Authorization": API_TOKEN}, "no scheme")],
)
def test_token_is_required_except_for_health(
    api_service: ServiceProcess, redis_server: RedisServer, headers: dict[str, str], label: str
) -> None:
    redis_server.client().flushdb()
    with httpx.Client(base_url=api_service.url, headers=headers, timeout=10) as anon:
        for method, path in [
            ("POST", "/lightrag/ingest-async"),
            ("GET", "/jobs"),
            ("GET", f"/jobs/{uuid.uuid4()}"),
            ("GET", "/events/stream"),
            ("GET", "/metrics"),
            ("GET", "/health/detailed"),
        ]:
            kwargs = {"json": {"chunks": [{"text": "Secret Text"}]}} if method == "POST" else {}
            response = anon.request(method, path, **kwargs)
            assert response.status_code == 401, (label, path, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "authorization" in response.json()["detail"]
        assert anon.get("/health").status_code == 200
    assert nothing_enqueued(redis_server)


def test_queue_backlog_over_the_limit_gets_429_with_retry_after(
    client: httpx.Client, redis_server: RedisServer
) -> None:
    redis_server.client().flushdb()
    # Hold the backlog still: an entry nobody reads, so the depth is known.
    r = redis_server.client()
    for _ in range(6):
        r.xadd(STREAM, {"job_id": "backlog", "index": "0", "text": "x"})
    response = client.post("/lightrag/ingest-async", json={"chunks": make_chunks(3)})
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "max_queue_depth (8)" in response.json()["detail"]
    assert not r.keys("shield:job:*")
    r.delete(STREAM)


def jobs_in_redis(redis_server: RedisServer) -> list[str]:
    return sorted(key for key in redis_server.client().keys("shield:job:*") if key.count(":") == 2)


def test_an_idempotency_key_makes_a_repeated_post_return_the_first_job(
    api_service: ServiceProcess, client: httpx.Client, redis_server: RedisServer
) -> None:
    """Issue 23, item 4: the same key and body answer the first job with 200 and enqueue
    nothing, also when the requests arrive together; another body with the key is a
    409 naming the header and the first job, a malformed key a 422 naming the header."""
    redis_server.client().flushdb()
    body = {"chunks": make_chunks(2), "metadata": {"case": "idempotency"}}

    def post(key: str, payload: dict[str, Any] = body) -> httpx.Response:
        with api_service.client() as own:  # one client per thread
            return own.post("/lightrag/ingest-async", json=payload, headers={"Idempotency-Key": key})

    first = post("order-1")
    assert first.status_code == 202, first.text
    again = post("order-1")
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["chunks_total"] == 2 and again.json()["status_url"] == first.json()["status_url"]
    assert jobs_in_redis(redis_server) == [f"shield:job:{first.json()['job_id']}"]

    with ThreadPoolExecutor(6) as pool:  # a new key, six requests at once: one job
        together = list(pool.map(lambda _: post("order-2"), range(6)))
    assert sorted(r.status_code for r in together) == [200] * 5 + [202], [r.text for r in together]
    assert len({r.json()["job_id"] for r in together}) == 1
    assert len(jobs_in_redis(redis_server)) == 2

    other = post("order-1", {"chunks": make_chunks(1)})
    assert other.status_code == 409, other.text
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert first.json()["job_id"] in other.json()["detail"]
    for bad in ("with space", "x" * 256, ""):
        refused = client.post("/lightrag/ingest-async", json=body, headers={"Idempotency-Key": bad})
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["errors"][0]["field"] == "Idempotency-Key"
    assert len(jobs_in_redis(redis_server)) == 2
    assert not [k for k in redis_server.client().keys("shield:idempotency:*") if "order" in k]  # hashed keys


def test_job_lookups_and_listing(client: httpx.Client, redis_server: RedisServer) -> None:
    redis_server.client().flushdb()
    assert client.get("/jobs/not-a-uuid").status_code == 422
    assert "job_id" in client.get("/jobs/not-a-uuid").json()["detail"]
    missing = client.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "bogus"}, "status"),
    ]:
        response = client.get("/jobs", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"].startswith(field), response.text

    first = ingest(client, make_chunks(2, prefix="list-a"))
    second = ingest(client, make_chunks(2, offset=2, prefix="list-b"))
    for job_id in (first["job_id"], second["job_id"]):
        job = wait_job(client, job_id, timeout=120)
        assert job["status"] == "completed" and job["percent_complete"] == 100.0
        assert set(job) >= {
            "job_id",
            "job_type",
            "status",
            "chunks_total",
            "chunks_processed",
            "chunks_failed",
            "percent_complete",
            "created_at",
            "started_at",
            "completed_at",
            "error_message",
        }
    listed = httpx_retry(
        lambda: client.get("/jobs", params={"limit": 2}).json(),
        lambda body: [j["job_id"] for j in body["jobs"]] == [second["job_id"], first["job_id"]],
    )
    assert listed["source"] == "postgresql" and listed["count"] == 2
    assert len(client.get("/jobs", params={"limit": 1}).json()["jobs"]) == 1
    # Served from PostgreSQL once the Redis hash is gone.
    redis_server.client().delete(f"shield:job:{first['job_id']}")
    job = client.get(f"/jobs/{first['job_id']}").json()
    assert job["status"] == "completed" and job["chunks_processed"] == 2


def httpx_retry(fetch: Any, ok: Any, attempts: int = 100) -> Any:
    body = None
    for _ in range(attempts):
        body = fetch()
        if ok(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"never satisfied: {body}")


def test_sse_rejects_unknown_types_limits_clients_and_replays(
    api_service: ServiceProcess, client: httpx.Client
) -> None:
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    bad = client.get("/events/stream", params={"event_types": "ingestion.queued,nope.bad"})
    assert bad.status_code == 422 and "nope.bad" in bad.json()["detail"]
    assert client.get("/events/stream", headers={"Last-Event-ID": "garbage"}).status_code == 422

    target: dict[str, str] = {}

    def completed(event: Any) -> bool:
        return event.type == "ingestion.completed" and event.data.get("job_id") == target.get("id")

    url = f"{api_service.url}/events/stream?event_types=ingestion.queued,ingestion.completed"
    collectors = [SSECollector(url, auth, stop_when=completed).start() for _ in range(3)]
    assert all(c.status_code == 200 for c in collectors)
    full = client.get("/events/stream")
    assert full.status_code == 429 and "at most 3" in full.json()["detail"]
    assert full.headers["Retry-After"]

    time.sleep(1.5)  # one keep-alive period (1 s in this module) with nothing to send
    target["id"] = job_id = ingest(client, make_chunks(1, prefix="sse"))["job_id"]
    wait_job(client, job_id)
    for c in collectors:
        c.wait(30)
        mine = [e.type for e in c.events if e.data.get("job_id") == job_id]
        assert mine == ["ingestion.queued", "ingestion.completed"]
        assert any(comment.startswith(": keep-alive") for comment in c.comments)

    # The three clients hung up: their slots free up (the server sees it at the next keep-alive).
    httpx_retry(lambda: client.get("/metrics").text, lambda text: "shield_sse_clients 0.0" in text)

    # Reconnect with Last-Event-ID of the queued event: the missed events come back, in order.
    queued = next(e for e in collectors[0].events if e.type == "ingestion.queued")
    replay = SSECollector(
        f"{api_service.url}/events/stream", {**auth, "Last-Event-ID": queued.id}, stop_when=completed
    ).start()
    types = [e.type for e in replay.wait(30) if e.data.get("job_id") == job_id]
    assert "ingestion.queued" not in types
    assert types[0] == "ingestion.started" and types[-1] == "ingestion.completed"
    assert "ingestion.progress" in types
    assert all(re.fullmatch(r"\d+-\d+", e.id) for e in replay.events)


def test_health_and_metrics(api_service: ServiceProcess, client: httpx.Client, rendered: Path) -> None:
    basic = httpx.get(f"{api_service.url}/health").json()
    assert basic["status"] == "healthy"
    assert set(basic) == {"status", "timestamp", "version", "tree_sha256", "release", "uptime_seconds"}
    # Run from a rendered tree, not from a release directory of the role.
    assert basic["release"] is None
    assert basic["version"] == shield_orchestrator.__version__
    # The code it runs: the package rendered for the tests, hashed as the role hashes it.
    assert basic["tree_sha256"] == tree_sha256(rendered / "shield_orchestrator")
    detailed = client.get("/health/detailed")
    assert detailed.status_code == 200, detailed.text
    body = detailed.json()
    assert body["status"] == "healthy"
    # Run from a rendered tree, not from the role: nothing recorded beside it.
    assert body["build"] == {
        "version": basic["version"],
        "tree_sha256": basic["tree_sha256"],
        "recorded_sha256": None,
        "intact": None,
        "release": None,
    }
    assert body["endpoint_calls"]["endpoints"]["llm_endpoint"]["stalled_total"] == 0
    for name in ("redis", "postgres", "lightrag", "llm_endpoint", "embedding_endpoint"):
        assert body["dependencies"][name]["status"] == "up", name
    pool = body["worker_pool"]
    assert pool["status"] == "running" and pool["active_workers"] == 4
    assert {"queue_depth", "pending", "processing_rate"} <= set(pool)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    for name in (
        "shield_chunks_processed_total",
        "shield_chunks_failed_total",
        "shield_chunks_retried_total",
        "shield_chunks_dead_lettered_total",
        "shield_chunk_processing_seconds_bucket",
        "shield_queue_depth",
        "shield_pending",
        "shield_active_workers 4.0",
        "shield_sse_clients",
        f'shield_build_info{{release="",tree_sha256="{basic["tree_sha256"]}",version="{basic["version"]}"}} 1.0',
        'shield_endpoint_calls_in_flight{endpoint="llm_endpoint"}',
    ):
        assert name in text, name
