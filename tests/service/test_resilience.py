"""Nothing accepted is lost: killed workers, poison chunks, SIGTERM, PostgreSQL outages."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.helpers import SSECollector, ingest, lightrag_files, make_chunks, wait_job
from tests.support.servers import PostgresServer, RedisServer, Standin, wait_until
from tests.support.service import API_TOKEN, EMBEDDING_DIM, ServiceProcess

STREAM = "shield:ingestion_queue"
GROUP = "lightrag-workers"


def wait_progress(client: httpx.Client, job_id: str, at_least: int, timeout: float = 120) -> dict[str, Any]:
    def enough() -> dict[str, Any] | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["chunks_processed"] >= at_least else None

    return wait_until(enough, timeout, f"{at_least} chunks of job {job_id} processed", 0.1)


def assert_exactly_once(redis_server: RedisServer, job: dict[str, Any], total: int) -> None:
    """Every chunk counted once: counters, the done-set, and an empty stream."""
    assert job["status"] == "completed", job
    assert job["chunks_processed"] == total
    assert job["chunks_failed"] == 0
    r = redis_server.client()
    assert r.scard(f"shield:job:{job['job_id']}:done") == total
    assert r.xlen(STREAM) == 0
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert r.xlen(f"{STREAM}:dlq") == 0


def assert_all_processed(state_dir: Path, job_id: str, total: int) -> None:
    statuses = json.loads(lightrag_files(state_dir)["doc_status"].read_text())
    for index in range(total):
        assert statuses[f"chunk-{job_id}-{index}"]["status"] == "processed", index


def test_killed_host_entries_are_taken_over_once_its_heartbeat_lapses(
    service_factory: Any, redis_server: RedisServer
) -> None:
    # Host A is killed with SIGKILL mid-batch; host B (other consumer names)
    # takes A's pending entries over as soon as A's heartbeats have lapsed
    # (6 s), not after the task timeout (300 s, the default here).
    host_a: ServiceProcess = service_factory(hostname="host-a", batch_size=5).start()
    client = host_a.client()
    job_id = ingest(client, make_chunks(40, prefix="kill"))["job_id"]
    wait_progress(client, job_id, 3)
    host_a.kill()
    killed = time.monotonic()
    r = redis_server.client()
    pending = r.xpending(STREAM, GROUP)["pending"]
    assert pending > 0, "the kill should leave delivered, unacked entries"
    consumers = {c["name"]: c["pending"] for c in r.xinfo_consumers(STREAM, GROUP)}
    assert sum(v for k, v in consumers.items() if k.startswith("host-a-worker-")) == pending

    host_b = service_factory(hostname="host-b", batch_size=5)
    host_b.env["ORCHESTRATOR_STATE_DIR"] = host_a.env["ORCHESTRATOR_STATE_DIR"]
    host_b.start()
    wait_until(lambda: "took over" in host_b.log_text(), 30, "host B taking over host A's entries")
    assert time.monotonic() - killed < 30
    job = wait_job(host_b.client(), job_id, timeout=240)
    assert_exactly_once(redis_server, job, 40)
    assert "whose heartbeat has lapsed" in host_b.log_text()
    # A silent consumer is removed by the first reclaim scan that finds it holding
    # nothing (every reclaim_interval_seconds, 2 s): the job may end before that.
    wait_until(
        lambda: not [c for c in r.xinfo_consumers(STREAM, GROUP) if c["name"].startswith("host-a-")],
        10,
        "the silent consumers removed from the group",
    )
    assert not [c for c in r.xinfo_consumers(f"{STREAM}:high", GROUP) if c["name"].startswith("host-a-")]
    assert host_b.terminate() == 0
    assert_all_processed(Path(host_b.env["ORCHESTRATOR_STATE_DIR"]), job_id, 40)


def test_restarted_host_finishes_its_own_pending_entries_first(service_factory: Any, redis_server: RedisServer) -> None:
    svc: ServiceProcess = service_factory(hostname="host-same", batch_size=5).start()
    client = svc.client()
    job_id = ingest(client, make_chunks(80, prefix="own"))["job_id"]
    wait_progress(client, job_id, 2)
    svc.kill()
    assert redis_server.client().xpending(STREAM, GROUP)["pending"] > 0
    svc.start()  # same hostname: same consumer names, long task timeout
    job = wait_job(svc.client(), job_id, timeout=240)
    assert_exactly_once(redis_server, job, 80)
    assert "resuming" in svc.log_text() and "own pending entries" in svc.log_text()


def test_poison_chunk_is_dead_lettered_after_three_attempts(service: ServiceProcess, redis_server: RedisServer) -> None:
    client = service.client()
    sse = SSECollector(
        f"{service.url}/events/stream?event_types=worker.task_failed,ingestion.failed,ingestion.completed",
        {"Authorization": f"Bearer {API_TOKEN}"},
        stop_when=lambda event: event.type in ("ingestion.failed", "ingestion.completed"),
    ).start()
    chunks = make_chunks(6, prefix="poison")
    chunks[2]["text"] = "Zed Poisonous wrote LAB_STANDIN_FAIL_ALWAYS into the Quarantine Register."
    job_id = ingest(client, chunks)["job_id"]
    job = wait_job(client, job_id, timeout=180)

    assert job["status"] == "failed"
    assert job["chunks_processed"] == 5
    assert job["chunks_failed"] == 1
    assert job["percent_complete"] == 100.0
    assert "1 of 6 chunks failed" in job["error_message"]
    assert "injected failure" in job["error_message"]

    r = redis_server.client()
    letters = r.xrange(f"{STREAM}:dlq")
    assert len(letters) == 1
    _id, letter = letters[0]
    assert letter["job_id"] == job_id and letter["index"] == "2"
    assert letter["attempts"] == "3"
    assert "injected failure" in letter["error"]
    assert "LAB_STANDIN_FAIL_ALWAYS" in letter["text"]
    assert r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0

    events = sse.wait(30)
    attempts = [e.data["attempt"] for e in events if e.type == "worker.task_failed" and e.data["job_id"] == job_id]
    assert attempts == [1, 2, 3]
    assert events[-1].type == "ingestion.failed"
    log = service.log_text()
    assert f"chunk dead-lettered job={job_id} chunk=2 attempts=3" in log
    assert f"chunk failed job={job_id} chunk=2 attempt=1/3" in log


def test_transient_failure_is_retried_and_succeeds(service: ServiceProcess, redis_server: RedisServer) -> None:
    client = service.client()
    chunks = make_chunks(3, prefix="transient")
    chunks[1]["text"] = "Yara Flicker reported LAB_STANDIN_FAIL_ONCE from the Harbor Station."
    job_id = ingest(client, chunks)["job_id"]
    job = wait_job(client, job_id, timeout=120)
    assert_exactly_once(redis_server, job, 3)
    # Failed once, and the first retry (attempt 2) succeeded.
    assert re.findall(rf"chunk failed job={job_id} chunk=(\d+) attempt=(\d)/3", service.log_text()) == [("1", "1")]


def test_sigterm_mid_job_then_restart_completes(service_factory: Any, redis_server: RedisServer) -> None:
    svc: ServiceProcess = service_factory(hostname="host-term", batch_size=5).start()
    client = svc.client()
    job_id = ingest(client, make_chunks(80, prefix="term"))["job_id"]
    wait_progress(client, job_id, 2)
    started = time.monotonic()
    assert svc.terminate(timeout=90) == 0, svc.log_text()[-2000:]
    assert time.monotonic() - started < 65
    log = svc.log_text()
    assert "received signal 15" in log
    assert "worker pool stopped workers=4" in log
    assert "stopped cleanly" in log
    r = redis_server.client()
    job_hash = r.hgetall(f"shield:job:{job_id}")
    # Whatever was not finished is still in the stream (pending or never read).
    assert int(job_hash["chunks_processed"]) + r.xlen(STREAM) == 80
    svc.start()
    job = wait_job(svc.client(), job_id, timeout=240)
    assert_exactly_once(redis_server, job, 80)


def test_sigterm_drains_with_readiness_off_while_the_api_still_answers(
    service_factory: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 19: from SIGTERM on, /health answers 503 (draining) so that new work goes
    elsewhere, while the API keeps answering (job status) until the in-flight chunks
    have finished; then the process exits 0 and nothing it held is lost."""
    slow = Standin.start(tmp_path, embedding_dim=EMBEDDING_DIM, name="standin-drain", extra=["--delay-ms", "400"])
    try:
        svc: ServiceProcess = service_factory(
            hostname="host-drain", batch_size=2, llm_base_url=slow.base_url, embedding_base_url=slow.base_url
        ).start()
        client = svc.client()
        job_id = ingest(client, make_chunks(12, prefix="drain"))["job_id"]
        wait_progress(client, job_id, 1)
        assert svc.proc is not None
        svc.proc.popen.send_signal(signal.SIGTERM)
        draining = wait_until(lambda: _draining(client), 10, "/health to answer 503 draining")
        assert draining["status"] == "draining"
        # Still answering while it drains: the job's status, with the API's token.
        answered = client.get(f"/jobs/{job_id}")
        assert answered.status_code == 200 and answered.json()["job_id"] == job_id
        assert svc.proc.popen.wait(90) == 0, svc.log_text()[-2000:]
    finally:
        slow.stop()
    log = svc.log_text()
    assert "draining; the API answers until then" in log
    assert "worker pool stopped workers=4" in log and "stopped cleanly" in log
    assert log.count("worker pool stopped") == 1
    r = redis_server.client()
    job_hash = r.hgetall(f"shield:job:{job_id}")
    assert int(job_hash["chunks_processed"]) + r.xlen(STREAM) == 12


def _draining(client: httpx.Client) -> dict[str, Any] | None:
    try:
        response = client.get("/health")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 503 else None


def test_postgres_outage_mid_job_rows_catch_up(
    service_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    service: ServiceProcess = service_factory(batch_size=5).start()
    client = service.client()
    job_id = ingest(client, make_chunks(120, prefix="pgdown"))["job_id"]
    wait_progress(client, job_id, 1)
    postgres_server.stop()
    try:
        assert client.get(f"/jobs/{job_id}").json()["status"] == "processing", "PostgreSQL must go down mid-job"
        job = wait_job(client, job_id, timeout=180)
        assert job["status"] == "completed" and job["chunks_processed"] == 120
        listed = client.get("/jobs").json()
        assert listed["source"] == "redis" and listed["degraded"] is True
        assert "PostgreSQL" in listed["warning"]
        assert listed["jobs"][0]["job_id"] == job_id
        detailed = client.get("/health/detailed")
        assert detailed.status_code == 200, detailed.text
        body = detailed.json()
        assert body["status"] == "degraded"
        assert body["dependencies"]["postgres"]["status"] == "down"
        # Not durable yet: the Redis hash must not expire before PostgreSQL has the row.
        assert redis_server.client().ttl(f"shield:job:{job_id}") == -1
    finally:
        postgres_server.start()

    def row() -> str:
        return postgres_server.psql(
            f"SELECT status, chunks_processed, chunks_failed, completed_at IS NOT NULL FROM job_status "
            f"WHERE job_id = '{job_id}'"
        )

    assert wait_until(lambda: row() == "completed|120|0|t", 60, "the row to catch up")
    assert client.get("/jobs").json()["source"] == "postgresql"
    assert wait_until(lambda: redis_server.client().ttl(f"shield:job:{job_id}") > 0, 10, "the TTL after sync")
    assert "PostgreSQL unreachable" in service.log_text()
    assert "reachable again" in service.log_text()


def test_workers_recycle_their_loop_without_dropping_work(service_factory: Any, redis_server: RedisServer) -> None:
    svc: ServiceProcess = service_factory(recycle_after_tasks=3, batch_size=2, pool_size=2).start()
    client = svc.client()
    job = wait_job(client, ingest(client, make_chunks(12, prefix="recycle"))["job_id"], timeout=180)
    assert_exactly_once(redis_server, job, 12)
    log = svc.log_text()
    assert "recycled its loop after" in log
    assert "reason=recycle" in log
    consumers = {c["name"] for c in redis_server.client().xinfo_consumers(STREAM, GROUP)}
    assert consumers == {"testhost-worker-1", "testhost-worker-2"}
