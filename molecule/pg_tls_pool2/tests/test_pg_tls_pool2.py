"""Verify the pg_tls_pool2 scenario: Debian 13, 2 workers, LightRAG in PostgreSQL over TLS."""

from __future__ import annotations

import time
import uuid

import helpers
import pytest
from helpers import PG_DB, SERVICE, USER, psql

SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
POOL_SIZE = int(SCENARIO_VARS["orchestrator_workers_pool_size"])
REDIS_PASSWORD = SCENARIO_VARS["orchestrator_workers_redis_password"]


def test_debian_13(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.split(".")[0] == "13"


def test_unit_active_and_enabled(host):
    svc = host.service(SERVICE)
    assert svc.is_running
    assert svc.is_enabled


def test_two_consumers(host):
    assert helpers.my_consumers(host, REDIS_PASSWORD) == helpers.expected_consumers(host, POOL_SIZE)


def test_client_key_private_to_service_user(host):
    key = host.file(SCENARIO_VARS["orchestrator_workers_postgres_sslkey"])
    assert key.user == USER
    assert key.mode == 0o600
    assert host.run(f"runuser -u {USER} -- head -c1 {key.path}").rc == 0


@pytest.fixture(scope="module")
def completed_job(host):
    tag = uuid.uuid4().hex[:8]
    chunks = [
        {
            "text": f"Quillon Marsh supplies reeds to Brackenford. Report {tag}-{i} from Quillon Marsh.",
            "source_uri": f"molecule://pgtls/{tag}/{i}",
            "metadata": {},
        }
        for i in range(4)
    ]
    accepted = helpers.submit(host, TOKEN, chunks)
    return helpers.wait_job(host, TOKEN, accepted["job_id"])


def test_e2e_job_completes(completed_job):
    assert isinstance(completed_job, dict), completed_job
    assert completed_job["status"] == "completed", completed_job
    assert completed_job["chunks_processed"] == 4
    assert completed_job["chunks_failed"] == 0


def test_lightrag_documents_in_postgresql(host, completed_job):
    assert completed_job["status"] == "completed"
    processed = int(psql(host, "SELECT count(*) FROM lightrag_doc_status WHERE status = 'processed'"))
    assert processed >= 4


def test_service_connections_use_tls(host, completed_job):
    assert completed_job["status"] == "completed"
    rows = psql(
        host,
        "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'orchestrator'",
    ).split()
    assert rows, "the service holds no PostgreSQL connection"
    assert set(rows) == {"t"}, rows


def test_plain_connection_refused(host):
    """TLS is required for the application user: a non-TLS login fails."""
    result = host.run(
        "PGPASSWORD=%s psql 'host=127.0.0.1 dbname=%s user=%s sslmode=disable' -tAc 'SELECT 1'",
        SCENARIO_VARS["orchestrator_workers_postgres_password"],
        PG_DB,
        USER,
    )
    assert result.rc != 0


def test_postgresql_down_60s_mid_job_pauses_the_pool_and_loses_nothing(host):
    """LightRAG's storages are PostgreSQL here: stopped for 60 s mid-job, the pool
    pauses on them (no chunk spends an attempt), resumes once PostgreSQL answers,
    and the job completes with every chunk."""
    tag = uuid.uuid4().hex[:8]
    chunks = [
        {
            "text": f"Harlow Tannery ships leather to Wickmere. Ledger {tag}-{i} notes Harlow Tannery.",
            "source_uri": f"molecule://pgdown/{tag}/{i}",
            "metadata": {},
        }
        for i in range(150)
    ]
    job_id = helpers.submit(host, TOKEN, chunks)["job_id"]
    for _ in range(120):
        status, body = helpers.api(host, TOKEN, "GET", f"/jobs/{job_id}")
        if status == 200 and body["chunks_processed"] >= 5:
            break
        time.sleep(0.5)
    host.check_output("systemctl stop postgresql")
    try:
        paused = None
        for _ in range(60):
            status, body = helpers.api(host, TOKEN, "GET", "/health/detailed")
            if isinstance(body, dict) and body.get("worker_pool", {}).get("paused"):
                paused = body["worker_pool"]["paused"]
                break
            time.sleep(1)
        assert paused and "lightrag_storage" in {item["dependency"] for item in paused}, body
        time.sleep(60)
    finally:
        host.check_output("systemctl start postgresql")
    job = helpers.wait_job(host, TOKEN, job_id, deadline=300)
    assert job["status"] == "completed" and job["chunks_processed"] == 150 and job["chunks_failed"] == 0, job
    assert helpers.redis_cli(host, REDIS_PASSWORD, "XLEN", "shield:ingestion_queue:dlq").strip() == "0"
    journal = host.check_output(f"journalctl -u {SERVICE} --no-pager -o cat")
    assert "worker pool paused: lightrag_storage" in journal
    assert "worker pool resumed: lightrag_storage" in journal
    assert "chunk dead-lettered" not in journal
