"""Verify the pg_tls_pool2 scenario: Debian 13, 2 workers, LightRAG in PostgreSQL over TLS."""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from pathlib import Path

import pytest
import yaml

SCENARIO_VARS = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "inventory" / "group_vars" / "all.yml").read_text()
)
SERVICE = "shield-orchestrator"
BASE = "http://127.0.0.1:8000"
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
POOL_SIZE = int(SCENARIO_VARS["orchestrator_workers_pool_size"])
REDIS_PASSWORD = SCENARIO_VARS["orchestrator_workers_redis_password"]
STREAM = "shield:ingestion_queue"
GROUP = "lightrag-workers"
USER = "orchestrator"
PG_DB = "shield_orchestrator"


def api(host, method: str, path: str, body: object | None = None, timeout: int = 30) -> tuple[int, object]:
    cmd = (
        f"curl -sS -m {timeout} -o - -w '\\n%{{http_code}}' -X {method} "
        f"-H {shlex.quote('Authorization: Bearer ' + TOKEN)} -H 'Content-Type: application/json' "
    )
    if body is not None:
        cmd += f"--data-binary {shlex.quote(json.dumps(body))} "
    result = host.run(cmd + shlex.quote(BASE + path))
    if result.rc != 0:
        return 0, result.stderr
    text, _, code = result.stdout.rpartition("\n")
    try:
        return int(code), json.loads(text)
    except ValueError:
        return int(code), text


def psql(host, sql: str) -> str:
    return host.check_output(f"runuser -u postgres -- psql -d {PG_DB} -tAX -c {shlex.quote(sql)}").strip()


def test_debian_13(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.split(".")[0] == "13"


def test_unit_active_and_enabled(host):
    svc = host.service(SERVICE)
    assert svc.is_running
    assert svc.is_enabled


def test_two_consumers(host):
    hostname = host.check_output("hostname").strip()
    consumers = host.check_output(
        f"redis-cli --raw --no-auth-warning -a {shlex.quote(REDIS_PASSWORD)} XINFO CONSUMERS {STREAM} {GROUP}"
    ).splitlines()
    mine = sorted(c for c in consumers if re.fullmatch(rf"{re.escape(hostname)}-worker-\d+", c))
    assert mine == [f"{hostname}-worker-{n}" for n in range(1, POOL_SIZE + 1)]


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
    status, body = api(
        host, "POST", "/lightrag/ingest-async", {"chunks": chunks, "source_type": "text", "metadata": {}}
    )
    assert status == 202, body
    job_id = body["job_id"]
    end = time.monotonic() + 240
    job: object = None
    while time.monotonic() < end:
        status, job = api(host, "GET", f"/jobs/{job_id}", timeout=10)
        if status == 200 and job["status"] in ("completed", "failed"):
            break
        time.sleep(1)
    return job


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
