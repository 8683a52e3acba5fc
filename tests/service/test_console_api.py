"""The console's API: cancel, dead letters (API and CLI), priorities, /workers and
/queue, and the Alembic migrations of the job history. Real Redis, PostgreSQL,
LightRAG and the LLM stand-in; the service runs as the unit runs it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.service.conftest import ServiceFactory
from tests.support.helpers import SSECollector, ingest, make_chunks, wait_job
from tests.support.servers import PostgresServer, RedisServer, wait_until
from tests.support.service import API_TOKEN, ServiceProcess, run_cli

STREAM = "shield:ingestion_queue"
DLQ = f"{STREAM}:dlq"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FINAL = ("completed", "failed", "cancelled")


def pg_value(postgres: PostgresServer, sql: str) -> str:
    return postgres.psql(sql).strip()


def pg_status(postgres: PostgresServer, job_id: str) -> str:
    return pg_value(postgres, f"SELECT status FROM job_status WHERE job_id = '{job_id}'")


def fail_once(chunks: list[dict[str, Any]], indexes: list[int], tag: str) -> None:
    """The stand-in answers 400 to these chunks' first LLM call; with one attempt
    per chunk they are dead-lettered, and a replay then succeeds."""
    for index in indexes:
        chunks[index]["text"] = (
            f"Marker LAB_STANDIN_FAIL_ONCE {tag}-{index:04d} was filed by Quinn Archer at the Tidewater Depot."
        )


def cli_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    out = run_cli(env, *args)
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


# --- cancel ---------------------------------------------------------------------------


def test_cancel_stops_a_job_its_chunks_are_skipped_and_every_view_says_cancelled(
    service_factory: ServiceFactory, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    svc: ServiceProcess = service_factory(batch_size=5).start()
    client = svc.client()
    events = SSECollector(
        f"{svc.url}/events/stream?event_types=ingestion.cancelled", AUTH, stop_when=lambda e: True
    ).start()
    job_id = ingest(client, make_chunks(300, prefix="cancel"))["job_id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["chunks_processed"] >= 1, 60, "a first chunk")
    first = client.post(f"/jobs/{job_id}/cancel")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["status"] == "cancelled" and body["already_cancelled"] is False, body
    assert 1 <= body["chunks_in_lightrag"] < 300, body
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["already_cancelled"] is True, again.text
    event = events.wait(15)[0]
    assert event.type == "ingestion.cancelled" and event.data["job_id"] == job_id, event
    r = redis_server.client()
    wait_until(lambda: r.xlen(STREAM) == 0 and r.xlen(f"{STREAM}:high") == 0, 60, "the stream drained")
    wait_until(lambda: "skipped" in svc.log_text(), 30, "a worker skipping the cancelled chunks")
    time.sleep(1)  # chunks in flight at the cancel settle; nothing else may be processed
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled", job
    # At most what the workers held at the cancel (pool_size 4 x batch_size 5) is counted after it.
    assert job["chunks_processed"] < 300 and job["chunks_processed"] - body["chunks_in_lightrag"] <= 20, job
    assert r.xlen(DLQ) == 0
    wait_until(lambda: pg_status(postgres_server, job_id) == "cancelled", 30, "the PostgreSQL row cancelled")
    listed = client.get("/jobs", params={"status": "cancelled"}).json()["jobs"]
    assert [item["job_id"] for item in listed] == [job_id], listed


def test_cancel_answers_404_unknown_409_finished_422_malformed(service: ServiceProcess) -> None:
    client = service.client()
    unknown = client.post(f"/jobs/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404 and "job_id" in unknown.json()["detail"], unknown.text
    assert client.post("/jobs/not-a-uuid/cancel").status_code == 422
    job = wait_job(client, ingest(client, make_chunks(2, prefix="cancel-done"))["job_id"])
    assert job["status"] == "completed", job
    late = client.post(f"/jobs/{job['job_id']}/cancel")
    assert late.status_code == 409 and "completed" in late.json()["detail"], late.text
    assert client.get(f"/jobs/{job['job_id']}").json()["status"] == "completed"
    assert httpx.post(f"{service.url}/jobs/{job['job_id']}/cancel").status_code == 401


# --- dead letters ---------------------------------------------------------------------


def dead_lettered_job(svc: ServiceProcess, n: int, failing: list[int], tag: str) -> dict[str, Any]:
    chunks = make_chunks(n, prefix=tag)
    fail_once(chunks, failing, tag)
    client = svc.client()
    job = wait_job(client, ingest(client, chunks)["job_id"], timeout=180)
    assert job["status"] == "failed" and job["chunks_failed"] == len(failing), job
    return job


def test_dead_letters_listed_by_job_replayed_by_id_and_the_job_completes(
    service_factory: ServiceFactory, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    svc: ServiceProcess = service_factory(retry_attempts=1).start()
    client = svc.client()
    job = dead_lettered_job(svc, 12, [3, 8], "dlq-ids")
    other = dead_lettered_job(svc, 4, [1], "dlq-other")
    listed = client.get("/dead-letters", params={"job_id": job["job_id"]}).json()
    assert listed["count"] == 2, listed
    letters = sorted(listed["dead_letters"], key=lambda item: item["chunk_index"])
    assert [item["chunk_index"] for item in letters] == [3, 8]
    assert all(item["attempts"] == 1 and "injected failure" in item["error"] for item in letters), letters
    assert all(item["job_id"] == job["job_id"] and item["dead_lettered_at"] for item in letters), letters
    assert client.get("/dead-letters").json()["count"] == 3
    assert client.get("/dead-letters", params={"limit": 1}).json()["count"] == 1
    wait_until(lambda: pg_status(postgres_server, job["job_id"]) == "failed", 30, "the failed row")
    one = client.post("/dead-letters/replay", json={"ids": [letters[0]["id"]]})
    assert one.status_code == 200 and one.json()["replayed"] == 1, one.text
    assert one.json()["jobs"] == [job["job_id"]]
    taken_back = client.get(f"/jobs/{job['job_id']}").json()
    assert taken_back["chunks_failed"] == 1 and taken_back["status"] in ("processing", "failed"), taken_back
    halfway = wait_until(
        lambda: (j := client.get(f"/jobs/{job['job_id']}").json())["chunks_processed"] == 11 and j, 60, "the replay"
    )
    assert halfway["status"] == "failed" and halfway["chunks_failed"] == 1, "one letter left: still failed"
    rest = client.post("/dead-letters/replay", json={"ids": [letters[1]["id"]]}).json()
    assert rest["replayed"] == 1, rest
    done = wait_job(client, job["job_id"], timeout=120, statuses=("completed",))
    assert done["chunks_processed"] == 12 and done["chunks_failed"] == 0, done
    assert redis_server.client().scard(f"shield:job:{job['job_id']}:done") == 12
    wait_until(lambda: pg_status(postgres_server, job["job_id"]) == "completed", 30, "the completed row")
    assert pg_value(postgres_server, f"SELECT chunks_failed FROM job_status WHERE job_id = '{job['job_id']}'") == "0"
    assert client.get("/dead-letters").json()["count"] == 1, "the other job's letter stays"
    assert client.get(f"/jobs/{other['job_id']}").json()["status"] == "failed"
    assert "replayed 1 dead letters of job" in svc.log_text() and "asked by api token " in svc.log_text()
    assert API_TOKEN not in svc.log_text()


def test_dead_letters_replayed_by_job_and_all_discarded_and_bad_requests(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    svc: ServiceProcess = service_factory(retry_attempts=1).start()
    client = svc.client()
    first = dead_lettered_job(svc, 6, [0, 5], "dlq-job")
    second = dead_lettered_job(svc, 5, [2], "dlq-all")
    third = dead_lettered_job(svc, 3, [1], "dlq-gone")
    by_job = client.post("/dead-letters/replay", json={"job_id": first["job_id"]}).json()
    assert by_job["replayed"] == 2 and by_job["jobs"] == [first["job_id"]], by_job
    assert wait_job(client, first["job_id"], statuses=("completed",))["chunks_failed"] == 0
    gone = client.get("/dead-letters", params={"job_id": third["job_id"]}).json()["dead_letters"][0]["id"]
    deleted = client.delete(f"/dead-letters/{gone}")
    assert deleted.status_code == 200 and deleted.json() == {"discarded": gone}, deleted.text
    assert client.delete(f"/dead-letters/{gone}").status_code == 404
    assert client.get(f"/jobs/{third['job_id']}").json()["status"] == "failed", "a discard leaves the job failed"
    everything = client.post("/dead-letters/replay", json={"all": True}).json()
    assert everything["replayed"] == 1 and everything["jobs"] == [second["job_id"]], everything
    assert wait_job(client, second["job_id"], statuses=("completed",))["chunks_processed"] == 5
    assert redis_server.client().xlen(DLQ) == 0
    assert client.post("/dead-letters/replay", json={"all": True}).status_code == 404
    for body, field in (
        ({}, "body"),
        ({"ids": ["1-0"], "all": True}, "all"),
        ({"ids": ["nope"]}, "ids[0]"),
        ({"job_id": "x"}, "job_id"),
        ({"every": True}, "body"),
        ({"all": False}, "all"),
    ):
        response = client.post("/dead-letters/replay", json=body)
        assert response.status_code == 422 and field in response.json()["detail"], (body, response.text)
    assert client.post("/dead-letters/replay", json={"ids": ["1-0"]}).status_code == 404
    assert client.delete("/dead-letters/abc").status_code == 422
    assert client.get("/dead-letters", params={"limit": 0}).status_code == 422


def test_dlq_cli_lists_replays_and_discards(service_factory: ServiceFactory, redis_server: RedisServer) -> None:
    svc: ServiceProcess = service_factory(retry_attempts=1).start()
    client = svc.client()
    job = dead_lettered_job(svc, 6, [1, 4], "cli-dlq")
    code, listed, _ = cli_json(svc.env, "dlq", "list", "--job", job["job_id"])
    assert code == 0 and listed["count"] == 2, listed
    ids = sorted(listed["dead_letters"], key=lambda item: item["chunk_index"])
    code, discarded, _ = cli_json(svc.env, "dlq", "discard", ids[1]["id"], "9-9")
    assert code == 1 and discarded == {"discarded": [ids[1]["id"]], "missing": ["9-9"]}, discarded
    code, replayed, stderr = cli_json(svc.env, "dlq", "replay", "--ids", ids[0]["id"])
    assert code == 0 and replayed["replayed"] == 1 and replayed["jobs"] == [job["job_id"]], replayed
    assert "(asked by cli)" in stderr, stderr
    done = wait_until(
        lambda: (j := client.get(f"/jobs/{job['job_id']}").json())["chunks_processed"] == 5 and j, 60, "the replay"
    )
    assert done["chunks_failed"] == 1 and done["status"] == "failed", "the discarded chunk still counts as failed"
    code, empty, _ = cli_json(svc.env, "dlq", "list")
    assert code == 0 and empty["count"] == 0, empty
    code, nothing, _ = cli_json(svc.env, "dlq", "replay", "--all")
    assert code == 1 and nothing["replayed"] == 0, nothing


# --- priorities, /workers, /queue -----------------------------------------------------


def test_a_high_priority_job_is_read_before_a_normal_backlog(service_factory: ServiceFactory) -> None:
    svc: ServiceProcess = service_factory(pool_size=2, batch_size=5).start()
    client = svc.client()
    backlog = ingest(client, make_chunks(250, prefix="backlog"))["job_id"]
    urgent = ingest(client, make_chunks(3, prefix="urgent"), priority="high")
    assert client.get(f"/jobs/{urgent['job_id']}").json()["priority"] == "high"
    assert client.get(f"/jobs/{backlog}").json()["priority"] == "normal"
    done = wait_job(client, urgent["job_id"], timeout=120)
    assert done["status"] == "completed", done
    behind = client.get(f"/jobs/{backlog}").json()
    assert behind["chunks_processed"] < 150, f"the urgent job waited behind the backlog: {behind}"
    bad = client.post("/lightrag/ingest-async", json={"chunks": make_chunks(1), "priority": "urgent"})
    assert bad.status_code == 422 and "priority" in bad.json()["detail"], bad.text
    assert client.post(f"/jobs/{backlog}/cancel").status_code == 200


def test_workers_and_queue_shapes(service_factory: ServiceFactory) -> None:
    svc: ServiceProcess = service_factory(pool_size=3).start()
    client = svc.client()
    wait_job(client, ingest(client, make_chunks(6, prefix="shapes"))["job_id"])

    def three_live() -> dict[str, Any] | None:
        """Three live workers whose heartbeats (refreshed every 2 s) count the job's chunks."""
        body: dict[str, Any] = client.get("/workers").json()
        alive = body["count"] == 3 and all(w["alive"] for w in body["workers"])
        return body if alive and sum(w["tasks_done"] for w in body["workers"]) >= 6 else None

    workers = wait_until(three_live, 30, "three live workers")
    for worker in workers["workers"]:
        assert set(worker) == {"consumer", "host", "state", "tasks_done", "heartbeat_age_seconds", "alive", "pending"}
        assert worker["consumer"].startswith("testhost-worker-") and worker["host"] == "testhost", worker
        assert 0 <= worker["heartbeat_age_seconds"] < 30 and worker["state"] in ("idle", "processing"), worker
    queue = client.get("/queue").json()
    assert set(queue) == {"queue_depth", "high_priority_depth", "pending", "waiting", "dead_letters", "processing_rate"}
    assert queue["queue_depth"] == 0 and queue["dead_letters"] == 0 and queue["processing_rate"] >= 0, queue
    for path in ("/workers", "/queue", "/dead-letters"):
        assert httpx.get(f"{svc.url}{path}").status_code == 401, path


# --- migrations -----------------------------------------------------------------------

# The schema main's `init-db` made before migrations existed: SQLAlchemy's
# create_all of models.JobStatus (commit 4c92a25; now JobStatusRow), as PostgreSQL received it.
MAIN_SCHEMA = """
CREATE TABLE job_status (
    job_id VARCHAR(36) NOT NULL, job_type VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL,
    chunks_total INTEGER NOT NULL, chunks_processed INTEGER NOT NULL, chunks_failed INTEGER NOT NULL,
    job_metadata JSONB NOT NULL, error_message TEXT, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE, completed_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (job_id));
CREATE INDEX ix_job_status_status ON job_status (status);
CREATE INDEX ix_job_status_created_at ON job_status (created_at);
"""
COLUMNS = (
    "SELECT string_agg(column_name || ':' || data_type || ':' || is_nullable, ',' ORDER BY column_name) "
    "FROM information_schema.columns WHERE table_name = 'job_status'"
)
INDEXES = "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'job_status'"


def fill_main_rows(postgres: PostgresServer, n: int) -> None:
    postgres.psql(
        "INSERT INTO job_status SELECT md5(i::text)::uuid::text, 'text', "
        "(ARRAY['queued','processing','completed','failed'])[1 + i % 4], 10, i % 11, i % 2, "
        "jsonb_build_object('n', i), CASE WHEN i % 4 = 3 THEN 'boom ' || i END, "
        "now() - i * interval '1 minute', now(), NULL, now() FROM generate_series(1, "
        f"{n}) AS i"
    )


def mains_schema(pg: PostgresServer) -> tuple[str, str]:
    """An empty database with main's schema (no alembic_version); its columns and indexes."""
    pg.psql("DROP TABLE IF EXISTS job_duplicates, job_status, alembic_version")
    pg.psql(MAIN_SCHEMA)
    return pg_value(pg, COLUMNS), pg_value(pg, INDEXES)


def test_migrate_upgrades_mains_schema_keeping_every_row_and_downgrades(
    service_env: dict[str, str], postgres_server: PostgresServer
) -> None:
    pg = postgres_server
    main_columns, main_indexes = mains_schema(pg)
    fill_main_rows(pg, 500)
    before = pg_value(pg, "SELECT md5(string_agg(t::text, '|' ORDER BY job_id)) FROM job_status t")
    code, report, _ = cli_json(service_env, "migrate")
    assert code == 0 and report["before"] == "0001" and report["applied"] == ["0002", "0003", "0004"], report
    assert pg_value(pg, "SELECT count(*) FROM job_status") == "500"
    kept = (
        "SELECT md5(string_agg((job_id, job_type, status, chunks_total, chunks_processed, chunks_failed, "
        "job_metadata, error_message, created_at, started_at, completed_at, updated_at)::text, '|' "
        "ORDER BY job_id)) FROM job_status"
    )
    assert pg_value(pg, kept) == before, "a row changed in the upgrade"
    added = "SELECT DISTINCT priority || generation || documents_removed || chunks_duplicate FROM job_status"
    assert pg_value(pg, added) == "normal000"
    assert pg_value(pg, "SELECT count(*) FROM job_duplicates") == "0"
    assert pg_value(pg, "SELECT version_num FROM alembic_version") == "0004"
    code, again, _ = cli_json(service_env, "migrate")
    assert code == 0 and again["applied"] == [] and again["before"] == "0004", again
    code, down, _ = cli_json(service_env, "migrate", "--to", "0001")
    assert code == 0 and down["applied"] == ["0004", "0003", "0002"] and down["after"] == "0001", down
    assert pg_value(pg, COLUMNS) == main_columns and pg_value(pg, INDEXES) == main_indexes
    assert pg_value(pg, "SELECT count(*) FROM job_status") == "500"
    assert pg_value(pg, kept) == before, "a row changed in the downgrade"
    code, up, _ = cli_json(service_env, "migrate")
    assert code == 0 and up["applied"] == ["0002", "0003", "0004"], up


def test_revision_0001_is_mains_schema_and_the_cancelled_state_needs_0002(
    service_env: dict[str, str], postgres_server: PostgresServer
) -> None:
    pg = postgres_server
    main_columns, main_indexes = mains_schema(pg)
    pg.psql("DROP TABLE job_status")
    code, report, _ = cli_json(service_env, "migrate", "--to", "0001")
    assert code == 0 and report["before"] is None and report["applied"] == ["0001"], report
    assert (pg_value(pg, COLUMNS), pg_value(pg, INDEXES)) == (main_columns, main_indexes)
    cli_json(service_env, "migrate")
    insert = (
        "INSERT INTO job_status (job_id, job_type, status, chunks_total, chunks_processed, chunks_failed, "
        "job_metadata, created_at, updated_at) VALUES ('{id}', 'text', '{status}', 1, 0, 0, '{{}}', now(), now())"
    )
    pg.psql(insert.format(id=uuid.uuid4(), status="cancelled"))
    with pytest.raises(subprocess.CalledProcessError) as refused:
        pg.psql(insert.format(id=uuid.uuid4(), status="exploded"))
    assert "ck_job_status_status" in refused.value.stderr, refused.value.stderr
    code, base, _ = cli_json(service_env, "migrate", "--to", "base")
    assert code == 0 and base["applied"] == ["0004", "0003", "0002", "0001"], base
    assert pg_value(pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'job_status'") == "0"
    out = run_cli(service_env, "migrate", "--to", "0099")
    assert out.returncode != 0 and "0099" in out.stderr + out.stdout, (out.stdout, out.stderr)


def test_two_concurrent_migrates_take_turns_on_the_lock(
    service_env: dict[str, str], postgres_server: PostgresServer
) -> None:
    pg = postgres_server
    pg.psql("DROP TABLE IF EXISTS job_duplicates, job_status, alembic_version")
    # A third party holds the migrations' lock for 3 s: both migrates wait, then
    # one applies every revision and the other finds nothing left to do.
    holder = threading.Thread(
        target=pg.psql, args=("BEGIN; SELECT pg_advisory_xact_lock(740112201); SELECT pg_sleep(3); COMMIT;",)
    )
    holder.start()
    time.sleep(0.5)
    results: list[subprocess.CompletedProcess[str]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(run_cli(service_env, "migrate"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    waited = time.monotonic() - started
    holder.join(30)
    assert [out.returncode for out in results] == [0, 0], [out.stderr for out in results]
    applied = sorted(json.loads(out.stdout.strip().splitlines()[-1])["applied"] for out in results)
    assert applied == [[], ["0001", "0002", "0003", "0004"]], applied
    assert waited >= 2, f"the migrations did not wait for the lock ({waited:.1f}s)"
    assert pg_value(pg, "SELECT version_num FROM alembic_version") == "0004"
