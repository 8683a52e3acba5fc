"""End to end: chunks POSTed to the API end up PROCESSED in LightRAG, tracked in
Redis and PostgreSQL, with SSE progress in order."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from tests.support.helpers import ORGS, PEOPLE, SSECollector, ingest, lightrag_files, make_chunks, wait_job
from tests.support.servers import PostgresServer, RedisServer, wait_until
from tests.support.service import API_TOKEN, PG_PASSWORD, ServiceProcess, run_cli


def test_twenty_chunks_reach_lightrag_and_every_view_agrees(
    service_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    sse = SSECollector(
        f"{svc.url}/events/stream?event_types=ingestion.queued,ingestion.started,ingestion.progress,"
        "ingestion.completed,ingestion.failed",
        {"Authorization": f"Bearer {API_TOKEN}"},
        stop_when=lambda event: event.type in ("ingestion.completed", "ingestion.failed"),
    ).start()
    assert sse.status_code == 200

    chunks = make_chunks(20)
    accepted = ingest(client, chunks, metadata={"batch": "e2e"})
    assert accepted["status"] == "queued"
    assert accepted["chunks_total"] == 20
    assert accepted["status_url"] == f"/jobs/{accepted['job_id']}"
    job_id = accepted["job_id"]

    job = wait_job(client, job_id, timeout=180)
    assert job["status"] == "completed", job
    assert job["chunks_processed"] == 20
    assert job["chunks_failed"] == 0
    assert job["percent_complete"] == 100.0
    assert job["error_message"] is None
    assert job["started_at"] and job["completed_at"] and job["created_at"]

    # SSE: queued -> started -> progress... -> completed, for this job, in order.
    events = [event for event in sse.wait(60) if event.data.get("job_id") == job_id]
    types = [event.type for event in events]
    assert types[0] == "ingestion.queued", types
    assert types[1] == "ingestion.started", types
    assert types[-1] == "ingestion.completed", types
    progress = [event.data for event in events if event.type == "ingestion.progress"]
    assert progress, types
    done_counts = [item["chunks_processed"] for item in progress]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 20
    assert all(event.id for event in events)

    # PostgreSQL row (the sync runs every 0.2 s in tests).
    def pg_row() -> str:
        return postgres_server.psql(
            f"SELECT status, chunks_total, chunks_processed, chunks_failed, job_metadata->>'batch' "
            f"FROM job_status WHERE job_id = '{job_id}'"
        )

    row = wait_until(lambda: pg_row() == "completed|20|20|0|e2e" and pg_row(), 30, "the PostgreSQL row")
    assert row == "completed|20|20|0|e2e"

    listed = client.get("/jobs", params={"limit": 10}).json()
    assert listed["source"] == "postgresql"
    assert listed["jobs"][0]["job_id"] == job_id
    assert listed["jobs"][0]["status"] == "completed"
    assert client.get("/jobs", params={"status": "completed"}).json()["count"] == 1
    assert client.get("/jobs", params={"status": "failed"}).json()["count"] == 0

    # The job's Redis hash got its TTL once PostgreSQL held the final row.
    ttl = wait_until(
        lambda: (
            redis_server.client().ttl(f"shield:job:{job_id}") > 0 and redis_server.client().ttl(f"shield:job:{job_id}")
        ),
        10,
        "the job hash TTL",
    )
    assert 0 < ttl <= 3600

    # Nothing left in the stream, nothing pending, nothing dead-lettered.
    r = redis_server.client()
    assert r.xlen("shield:ingestion_queue") == 0
    assert r.xpending("shield:ingestion_queue", "lightrag-workers")["pending"] == 0
    assert r.xlen("shield:ingestion_queue:dlq") == 0

    # Read back from LightRAG's own storages: the endpoint, and the CLI (which
    # asks this host's service: one writer per local storage).
    verified = client.get(f"/jobs/{job_id}/verify").json()
    assert verified["verified"] is True, verified
    assert verified["documents_processed"] == 20 and verified["chunks_total"] == 20
    assert verified["chunk_vectors_found"] == verified["chunk_vectors_expected"] >= 20
    assert verified["entities"] >= len(PEOPLE)
    cli = run_cli(svc.env, "verify-job", job_id)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.splitlines()[-1])["verified"] is True
    assert client.get(f"/jobs/{uuid.uuid4()}/verify").status_code == 404

    # Stop the service (one writer per LightRAG working dir) and read its storage.
    assert svc.terminate() == 0
    state = Path(svc.env["ORCHESTRATOR_STATE_DIR"])
    files = lightrag_files(state)
    statuses = json.loads(files["doc_status"].read_text())
    for index in range(20):
        doc = statuses[f"chunk-{job_id}-{index}"]
        assert doc["status"] == "processed", doc
    graph = files["graph"].read_text()
    for name in [*PEOPLE, *ORGS]:
        assert re.search(re.escape(name), graph, re.IGNORECASE), f"entity {name!r} missing from the graph"

    log = svc.log_text()
    assert "worker pool started workers=4" in log
    assert "worker started consumer=testhost-worker-1" in log
    assert "worker pool stopped workers=4" in log
    assert PG_PASSWORD not in log and API_TOKEN not in log
