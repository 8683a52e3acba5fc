"""What fails around the pool: kills, dependency outages, rate limits, chunk faults,
rows PostgreSQL refuses, Redis blips, duplicates. Nothing good is dead-lettered,
no count runs ahead of the graph, no request answers 500."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.service.conftest import ServiceFactory
from tests.support.helpers import SSECollector, ingest, lightrag_files, make_chunks, wait_job
from tests.support.servers import PostgresServer, RedisServer, Standin, wait_until
from tests.support.service import API_TOKEN, EMBEDDING_DIM, ServiceProcess

STREAM = "shield:ingestion_queue"
DLQ = f"{STREAM}:dlq"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def processed_docs(state_dir: Path, job_id: str) -> int:
    """PROCESSED documents of the job in LightRAG's doc status, read from its file."""
    path = lightrag_files(state_dir).get("doc_status")
    if path is None:
        return 0
    statuses = json.loads(path.read_text())
    prefix = f"chunk-{job_id}-"
    return sum(1 for doc_id, doc in statuses.items() if doc_id.startswith(prefix) and doc["status"] == "processed")


class CountWatch:
    """A thread comparing, over and over, the job's count (its Redis hash) with the
    PROCESSED documents LightRAG holds for it: the count must never run ahead."""

    def __init__(self, redis_server: RedisServer, state_dir: Path, job_id: str) -> None:
        self.redis = redis_server.client()
        self.state_dir, self.job_id = state_dir, job_id
        self.samples = 0
        self.ahead: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CountWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            counted = int(self.redis.hget(f"shield:job:{self.job_id}", "chunks_processed") or 0)
            processed = processed_docs(self.state_dir, self.job_id)
            self.samples += 1
            if counted > processed:
                self.ahead.append((counted, processed))
            time.sleep(0.05)


def counted(redis_server: RedisServer, job_id: str) -> int:
    return int(redis_server.client().hget(f"shield:job:{job_id}", "chunks_processed") or 0)


# Enough that the fifth kill still lands mid-job: with one commit per round on
# the file storages, a job of 200 was done before the fourth kill.
KILL_CHUNKS = 1000


def test_kill_9_five_times_mid_job_never_lets_the_count_run_ahead_of_the_graph(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    svc: ServiceProcess = service_factory(hostname="host-kill", batch_size=5).start()
    state = Path(svc.env["ORCHESTRATOR_STATE_DIR"])
    job_id = ingest(svc.client(), make_chunks(KILL_CHUNKS, prefix="kill9"))["job_id"]
    rng = random.Random(9)
    hits = []
    with CountWatch(redis_server, state, job_id) as watch:
        for _ in range(5):
            time.sleep(rng.uniform(1.0, 4.0))
            hits.append(counted(redis_server, job_id))
            svc.kill()
            # Restarted at once: after the kill, every chunk counted is PROCESSED.
            assert counted(redis_server, job_id) <= processed_docs(state, job_id)
            svc.start()
        job = wait_job(svc.client(), job_id, timeout=300)
    assert all(count < KILL_CHUNKS for count in hits), f"a kill came after the job ended: {hits}"
    assert watch.samples > 100 and watch.ahead == [], watch.ahead[:5]
    r = redis_server.client()
    # A failure names why: each dead letter's chunk and error (a refusal of LightRAG's, say).
    letters = [(fields["index"], fields["error"][:400]) for _id, fields in r.xrange(DLQ)[:5]]
    assert job["status"] == "completed" and job["chunks_processed"] == KILL_CHUNKS, (job, letters)
    assert r.scard(f"shield:job:{job_id}:done") == KILL_CHUNKS
    assert r.xlen(DLQ) == 0 and r.xlen(STREAM) == 0
    assert svc.terminate() == 0
    assert processed_docs(state, job_id) == KILL_CHUNKS


def pause_events(collector: SSECollector) -> list[tuple[str, str]]:
    return [(e.type, e.data["dependency"]) for e in collector.events if e.type.startswith("worker_pool.")]


def test_llm_endpoint_down_90s_pauses_and_resumes_with_no_dead_letter(
    service_factory: ServiceFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    standin = Standin.start(tmp_path, embedding_dim=EMBEDDING_DIM, name="standin-outage")
    try:
        svc: ServiceProcess = service_factory(
            llm_base_url=standin.base_url, embedding_base_url=standin.base_url, batch_size=5
        ).start()
        client = svc.client()
        events = SSECollector(
            f"{svc.url}/events/stream?event_types=worker_pool.paused,worker_pool.resumed,ingestion.progress", AUTH
        ).start()
        job_id = ingest(client, make_chunks(120, prefix="outage"))["job_id"]
        wait_until(lambda: client.get(f"/jobs/{job_id}").json()["chunks_processed"] >= 10, 120, "10 chunks")
        standin.stop()
        paused = wait_until(lambda: _paused_health(client), 60, "the pool to pause")
        assert paused["worker_pool"]["status"] == "paused"
        assert {item["dependency"] for item in paused["worker_pool"]["paused"]} <= {
            "llm_endpoint",
            "embedding_endpoint",
        }
        assert all(item["since"] for item in paused["worker_pool"]["paused"])
        # The stand-in serves both endpoints: whichever call fails first pauses the pool.
        down = {item["dependency"] for item in paused["worker_pool"]["paused"]}
        metrics = client.get("/metrics").text
        assert all(f'shield_pool_paused{{dependency="{name}"}} 1.0' in metrics for name in down), metrics
        accepted = client.post("/lightrag/ingest-async", json={"chunks": make_chunks(1, prefix="while-paused")})
        assert accepted.status_code == 202, "POSTs are accepted while paused"
        time.sleep(90)
        returned = time.time()
        standin.start_again()
        job = wait_job(client, job_id, timeout=300)
        wait_job(client, accepted.json()["job_id"], timeout=120)
    finally:
        standin.stop()
    assert job["status"] == "completed" and job["chunks_processed"] == 120 and job["chunks_failed"] == 0, job
    assert redis_server.client().xlen(DLQ) == 0
    kinds = [(e.type, e.data.get("dependency")) for e in events.events if e.type.startswith("worker_pool.")]
    paused_on = {name for kind, name in kinds if kind == "worker_pool.paused"}
    assert paused_on and paused_on <= {"llm_endpoint", "embedding_endpoint"}, kinds
    assert all(("worker_pool.resumed", name) in kinds for name in paused_on), kinds
    first_after = min(e.received for e in events.events if e.type == "ingestion.progress" and e.received >= returned)
    print(f"\nFIGURE outage: first chunk processed {first_after - returned:.1f}s after the endpoint returned")
    assert first_after - returned < 30
    log = svc.log_text()
    for name in paused_on:
        assert 1 <= log.count(f"worker pool paused: {name}") <= 2, "one line per state change, not per chunk"
        assert f"worker pool resumed: {name}" in log
    assert "lightrag_storage" not in log, "the endpoint's outage is not blamed on the storages"
    assert "chunk dead-lettered" not in log and "chunk failed" not in log
    metrics = client.get("/metrics").text
    for name in paused_on:
        assert f'shield_pool_paused{{dependency="{name}"}} 0.0' in metrics
        assert f'shield_pool_pauses_total{{dependency="{name}"}}' in metrics


def _paused_health(client: httpx.Client) -> dict[str, Any] | None:
    body = client.get("/health/detailed").json()
    return body if body["worker_pool"].get("paused") else None


def test_rate_limited_endpoint_429_retry_after_is_waited_out(
    service_factory: ServiceFactory, redis_server: RedisServer, llm_standin: Standin
) -> None:
    svc: ServiceProcess = service_factory(batch_size=5).start()
    client = svc.client()
    events = SSECollector(f"{svc.url}/events/stream?event_types=worker_pool.paused,worker_pool.resumed", AUTH).start()
    job_id = ingest(client, make_chunks(60, prefix="ratelimit"))["job_id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["chunks_processed"] >= 5, 120, "5 chunks")
    llm_standin.outage(429, seconds=30, retry_after=2)
    job = wait_job(client, job_id, timeout=300)
    assert job["status"] == "completed" and job["chunks_processed"] == 60, job
    assert redis_server.client().xlen(DLQ) == 0
    resumed = [e for e in events.events if e.type == "worker_pool.resumed"]
    assert resumed and max(e.data["paused_seconds"] for e in resumed) >= 20, resumed
    assert "chunk dead-lettered" not in svc.log_text()


def marked(chunks: list[dict[str, Any]], indexes: range | list[int], marker: str) -> None:
    for index in indexes:
        chunks[index]["text"] = f"Marker {marker} number {index} was filed by Quinn Archer at the Tidewater Depot."


def test_fail_once_chunks_under_load_are_retried_fail_always_ones_dead_lettered(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    chunks = make_chunks(120, prefix="chunkfaults")
    once = list(range(5, 120, 10))
    marked(chunks, once, "LAB_STANDIN_FAIL_ONCE")
    marked(chunks, [7, 63], "LAB_STANDIN_FAIL_ALWAYS")
    job_id = ingest(client, chunks)["job_id"]
    job = wait_job(client, job_id, timeout=300)
    assert job["status"] == "failed" and job["chunks_processed"] == 118 and job["chunks_failed"] == 2, job
    letters = redis_server.client().xrange(DLQ)
    assert sorted(int(fields["index"]) for _id, fields in letters) == [7, 63]
    assert all(fields["attempts"] == "3" for _id, fields in letters)
    log = svc.log_text()
    assert "worker pool paused" not in log, "a chunk's own fault never pauses the pool"
    # Every fail-once chunk failed its first attempt and its first retry (attempt 2)
    # succeeded, however many prompts quoted it under load (the stand-in's contract).
    failures = re.findall(rf"chunk failed job={job_id} chunk=(\d+) attempt=(\d)/3", log)
    failed = sorted((int(chunk), int(attempt)) for chunk, attempt in failures)
    always = [(index, attempt) for index in (7, 63) for attempt in (1, 2, 3)]
    assert failed == sorted([(index, 1) for index in once] + always), failed


def test_a_row_postgresql_refuses_does_not_hold_back_the_others(
    service_factory: ServiceFactory, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    # Behind the API's back (the API bounds its fields): a job whose job_type
    # is longer than the column (64), as an older or buggy writer could leave.
    bad = str(uuid.uuid4())
    r = redis_server.client()
    now = "2026-11-29T10:00:00+00:00"
    r.hset(
        f"shield:job:{bad}",
        mapping={
            "job_id": bad,
            "job_type": "ingest:" + "x" * 70,
            "status": "queued",
            "chunks_total": 1,
            "chunks_processed": 0,
            "chunks_failed": 0,
            "job_metadata": "{}",
            "created_at": now,
            "updated_at": now,
        },
    )
    r.hincrby("shield:jobs:dirty", bad, 1)
    good = [ingest(client, make_chunks(2, prefix=f"goodrow{i}"))["job_id"] for i in range(3)]
    for job_id in good:
        wait_job(client, job_id, timeout=120)

    def rows() -> str:
        ids = ",".join(f"'{job_id}'" for job_id in good)
        return postgres_server.psql(f"SELECT count(*) FROM job_status WHERE job_id IN ({ids}) AND status = 'completed'")

    wait_until(lambda: rows() == "3", 30, "every other job's row")
    health = client.get("/health/detailed").json()
    [rejected] = health["postgres_sync"]["rejected_jobs"]
    assert rejected["job_id"] == bad and "value too long" in rejected["reason"], rejected
    assert health["postgres_sync"]["available"] is True
    log = svc.log_text()
    assert f"PostgreSQL refuses the row of job {bad}" in log and "PostgreSQL unreachable" not in log
    assert r.ttl(f"shield:job:{good[0]}") > 0, "the good jobs were settled (TTL started)"


def test_redis_restarts_and_short_outages_never_answer_500(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    job_id = ingest(client, make_chunks(2, prefix="blips"))["job_id"]
    wait_job(client, job_id, timeout=120)
    wait_until(lambda: client.get("/jobs").json()["count"] >= 1, 30, "the job's row in PostgreSQL")
    statuses: Counter[tuple[str, int]] = Counter()
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=svc.url, headers=AUTH, timeout=10) as http:
            while not stop.is_set():
                for path in (f"/jobs/{job_id}", "/health/detailed"):
                    try:
                        statuses[(path.split("/")[1], http.get(path).status_code)] += 1
                    except httpx.HTTPError:
                        statuses[(path.split("/")[1], 0)] += 1
                time.sleep(0.02)

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(2)]
    for thread in pollers:
        thread.start()
    try:
        for _ in range(6):
            redis_server.restart()
            time.sleep(1)
        for _ in range(6):
            redis_server.restart(down_seconds=5)
            time.sleep(1)
    finally:
        stop.set()
        for thread in pollers:
            thread.join(15)
    assert not [key for key in statuses if key[1] >= 500 and key[1] != 503], statuses
    assert statuses[("jobs", 200)] > 50 and statuses[("health", 200)] > 10, statuses
    job = client.get(f"/jobs/{job_id}")
    assert job.status_code == 200 and job.json()["status"] == "completed"


QUEUE_GAUGES = ("shield_queue_depth", "shield_queue_high_priority_depth", "shield_pending", "shield_dead_letters")


def exposed(text: str) -> set[str]:
    """The metric names of the exposition's samples."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_answer_200_with_redis_up_0_while_redis_is_down(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    """Issue 22: a Redis outage leaves /metrics the process's own series, with
    shield_redis_up 0 and the queue gauges left out, never a 503."""
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    before = client.get("/metrics")
    assert before.status_code == 200 and "shield_redis_up 1.0" in before.text, before.text
    assert set(QUEUE_GAUGES) <= exposed(before.text)
    redis_server.stop()
    try:
        during = client.get("/metrics", timeout=30)
        assert during.status_code == 200, during.text
        assert "shield_redis_up 0.0" in during.text
        names = exposed(during.text)
        assert set(QUEUE_GAUGES) & names == set(), "no stale or made-up queue depth"
        assert {"shield_active_workers", "shield_chunks_processed_total", "shield_build_info"} <= names
        assert "shield_configured_workers 4.0" in during.text
    finally:
        redis_server.restart()

    def redis_back() -> str | None:
        text = client.get("/metrics").text
        return text if "shield_redis_up 1.0" in text else None

    assert set(QUEUE_GAUGES) <= exposed(wait_until(redis_back, 30, "shield_redis_up 1"))


def test_the_same_text_three_times_in_a_job_completes_in_seconds_each_duplicate_reported_with_its_holder(
    service_factory: ServiceFactory, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    events = SSECollector(f"{svc.url}/events/stream?event_types=chunks.duplicate", auth).start()
    same = "Olga Brandt ferried the Meridian Archive from Tallinn to Gdansk in one night."
    chunks = make_chunks(20, prefix="dups")
    for index in (3, 7, 15):
        chunks[index]["text"] = same
    started = time.monotonic()
    job = wait_job(client, ingest(client, chunks)["job_id"], timeout=120)
    assert job["status"] == "completed" and job["chunks_processed"] == 20, job
    assert time.monotonic() - started < 30
    assert redis_server.client().xlen(DLQ) == 0
    job_id = job["job_id"]
    # Two of the three are duplicates, never failures, each naming the one that holds the text.
    assert job["chunks_duplicate"] == 2 and job["chunks_failed"] == 0, job
    answer = client.get(f"/jobs/{job_id}/duplicates")
    assert answer.status_code == 200, answer.text
    listed = answer.json()
    assert listed["chunks_duplicate"] == 2 and len(listed["duplicates"]) == 2, listed
    holder = ({3, 7, 15} - {item["index"] for item in listed["duplicates"]}).pop()
    assert {(item["document"], item["holder_job_id"]) for item in listed["duplicates"]} == {
        (f"chunk-{job_id}-{holder}", job_id)
    }, listed
    # A second job with the same text: its chunk is held by the first job's document.
    second = wait_job(client, ingest(client, [{**chunks[0], "text": same}])["job_id"], timeout=60)
    assert second["status"] == "completed" and second["chunks_duplicate"] == 1, second
    held = client.get(f"/jobs/{second['job_id']}/duplicates").json()["duplicates"]
    assert held == [{"index": 0, "document": f"chunk-{job_id}-{holder}", "holder_job_id": job_id}], held
    counted = [line for line in client.get("/metrics").text.splitlines() if line.startswith("shield_chunks_duplicate_")]
    assert "shield_chunks_duplicate_total 3.0" in counted, counted
    page = client.get(f"/jobs/{job_id}/duplicates", params={"limit": 1, "offset": 1}).json()
    assert page["chunks_duplicate"] == 2 and page["duplicates"] == listed["duplicates"][1:], page
    bad = client.get(f"/jobs/{job_id}/duplicates", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.text, bad.text
    assert client.get(f"/jobs/{uuid.uuid4()}/duplicates").status_code == 404

    # The event names them as they are found.
    wait_until(lambda: len(events.events) >= 2, 15, "two chunks.duplicate events")
    told = {(event.data["job_id"], chunk["index"]) for event in events.events for chunk in event.data["chunks"]}
    assert told == {*((job_id, item["index"]) for item in listed["duplicates"]), (second["job_id"], 0)}, told

    # Durable with the job's final row: once Redis lets the job go, PostgreSQL answers the same.
    rows = (
        f"SELECT chunk_index || ' ' || document_id FROM job_duplicates WHERE job_id = '{job_id}' ORDER BY chunk_index"
    )
    expected = "\n".join(f"{item['index']} {item['document']}" for item in listed["duplicates"])
    wait_until(lambda: postgres_server.psql(rows) == expected or None, 30, "the duplicates' rows")
    count = f"SELECT chunks_duplicate FROM job_status WHERE job_id = '{job_id}'"
    assert postgres_server.psql(count) == "2"
    redis = redis_server.client()
    wait_until(lambda: not redis.hexists("shield:jobs:dirty", job_id), 30, "the job settled in Redis")
    redis.delete(*(f"shield:job:{job_id}{suffix}" for suffix in ("", ":done", ":admitted", ":duplicates")))
    assert client.get(f"/jobs/{job_id}").json()["chunks_duplicate"] == 2
    assert client.get(f"/jobs/{job_id}/duplicates").json() == listed
