"""Verify the pg_tls_pool2 scenario: Debian 13, 2 workers, LightRAG in PostgreSQL over TLS."""

from __future__ import annotations

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
