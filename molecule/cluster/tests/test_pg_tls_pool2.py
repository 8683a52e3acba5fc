"""The checks of the former pg_tls_pool2 scenario, folded into the cluster:
a Debian 13 data host with PostgreSQL 17 (+ pgvector) over TLS, sslmode
verify-full with the client certificate from two Debian 12 workers, a pool of
two workers per host, LightRAG's storages in PostgreSQL, and PostgreSQL down
for 60 s in the middle of a job.

Each test names the hosts it needs (fixtures in conftest.py): commands run
inside that container (curl, psql, redis-cli, systemctl).
"""

from __future__ import annotations

import shlex
import time
import uuid
from typing import Any

import cluster
import helpers
import pytest
from helpers import GROUP, PG_DB, SERVICE, STREAM, USER, psql

SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
POOL_SIZE = int(SCENARIO_VARS["orchestrator_workers_pool_size"])
REDIS_PASSWORD = SCENARIO_VARS["redis_server_password"]
PG_PASSWORD = SCENARIO_VARS["orchestrator_workers_postgres_password"]
PG_HOST = SCENARIO_VARS["orchestrator_workers_postgres_host"]
VENV_PYTHON = "/opt/hx-citadel-shield/orchestrator/current/venv/bin/python"


def test_data_host_runs_debian_13_and_postgresql_17(data_host):
    assert data_host.system_info.distribution == "debian"
    assert data_host.system_info.release.split(".")[0] == "13"
    assert psql(data_host, "SHOW server_version").split(".")[0] == "17"


def test_workers_run_debian_12(workers):
    for worker in workers:
        assert worker.system_info.release.split(".")[0] == "12", cluster.name(worker)


def test_vector_extension_made_by_the_superuser(data_host):
    """pgvector exists in the service's database; the service's role stays unprivileged."""
    assert "vector" in psql(data_host, "SELECT extname FROM pg_extension").split()
    assert USER == "orchestrator"
    assert psql(data_host, "SELECT rolsuper FROM pg_roles WHERE rolname = 'orchestrator'") == "f"


def test_unit_active_and_enabled_on_every_worker(workers):
    for worker in workers:
        svc = worker.service(SERVICE)
        assert svc.is_running, cluster.name(worker)
        assert svc.is_enabled, cluster.name(worker)


def test_two_consumers_per_worker(data_host, workers):
    for worker in workers:
        expected = helpers.expected_consumers(worker, POOL_SIZE)
        assert cluster.consumers(data_host, REDIS_PASSWORD, STREAM, GROUP, worker) == expected


def test_client_key_private_to_service_user(workers):
    for worker in workers:
        key = worker.file(SCENARIO_VARS["orchestrator_workers_postgres_sslkey"])
        assert key.user == USER, cluster.name(worker)
        assert key.mode == 0o600, cluster.name(worker)
        assert worker.run(f"runuser -u {USER} -- head -c1 {key.path}").rc == 0, cluster.name(worker)


@pytest.fixture(scope="module")
def completed_job(worker_1, worker_2):
    """A job posted to worker-1 and followed on worker-2 (both read the same Redis and PostgreSQL)."""
    tag = uuid.uuid4().hex[:8]
    chunks = [
        {
            "text": f"Quillon Marsh supplies reeds to Brackenford. Report {tag}-{i} from Quillon Marsh.",
            "source_uri": f"molecule://pgtls/{tag}/{i}",
            "metadata": {},
        }
        for i in range(4)
    ]
    accepted = helpers.submit(worker_1, TOKEN, chunks)
    return helpers.wait_job(worker_2, TOKEN, accepted["job_id"])


def test_e2e_job_completes(completed_job):
    assert isinstance(completed_job, dict), completed_job
    assert completed_job["status"] == "completed", completed_job
    assert completed_job["chunks_processed"] == 4
    assert completed_job["chunks_failed"] == 0


def test_lightrag_documents_in_postgresql(data_host, completed_job):
    assert completed_job["status"] == "completed"
    processed = int(psql(data_host, "SELECT count(*) FROM lightrag_doc_status WHERE status = 'processed'"))
    assert processed >= 4


def worker_addresses(worker: Any) -> set[str]:
    return set(worker.check_output("hostname -I").split())


def test_service_connections_use_tls_from_every_worker(data_host, workers, completed_job):
    assert completed_job["status"] == "completed"
    rows = psql(
        data_host,
        "SELECT ssl, host(client_addr) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
        "WHERE usename = 'orchestrator'",
    ).splitlines()
    assert rows, "the service holds no PostgreSQL connection"
    assert {row.split("|")[0] for row in rows} == {"t"}, rows
    clients = {row.split("|")[1] for row in rows}
    for worker in workers:
        assert clients & worker_addresses(worker), f"no connection from {cluster.name(worker)}: {rows}"


def connect_from(worker: Any, ssl: str) -> Any:
    """Log in from a worker with the service's own asyncpg; the password through the environment."""
    script = (
        "import asyncio, ssl, sys, asyncpg\n"
        f"mode = {ssl!r}\n"
        "ctx = False\n"
        "if mode == 'tls-without-client-cert':\n"
        "    ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "async def main():\n"
        f"    conn = await asyncpg.connect(host={PG_HOST!r}, user={USER!r}, database={PG_DB!r}, ssl=ctx)\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    return worker.run(
        f"PGPASSWORD={shlex.quote(PG_PASSWORD)} {VENV_PYTHON} -c {shlex.quote(script)} "
        f"{SCENARIO_VARS['orchestrator_workers_postgres_sslrootcert']}"
    )


def test_plain_connection_refused(worker_1):
    """The application user must use TLS: a plain login from a worker fails at pg_hba."""
    result = connect_from(worker_1, "plain")
    assert result.rc != 0
    assert "rejects connection" in result.stderr or "no encryption" in result.stderr, result.stderr[-2000:]


def test_tls_without_client_certificate_refused(worker_1):
    """clientcert=verify-full: TLS with a valid server certificate but no client certificate fails."""
    result = connect_from(worker_1, "tls-without-client-cert")
    assert result.rc != 0
    assert "certificate" in result.stderr, result.stderr[-2000:]


def paused_dependencies(worker: Any) -> set[str]:
    _status, body = helpers.api(worker, TOKEN, "GET", "/health/detailed", timeout=10)
    if not isinstance(body, dict):
        return set()
    return {item.get("dependency", "") for item in body.get("worker_pool", {}).get("paused") or []}


def pause_report(paused: dict[str, set[str]], workers: list[Any]) -> str:
    """What the workers said while they did not pause: their pauses, /health/detailed
    and the last lines of their journals."""
    lines = [f"paused: {paused}"]
    for worker in workers:
        health = helpers.api(worker, TOKEN, "GET", "/health/detailed")
        lines.append(f"--- {cluster.name(worker)} /health/detailed: {health}")
        lines.append(worker.run(f"journalctl -u {SERVICE} --no-pager -o cat -n 40").stdout)
    return "\n".join(lines)


def test_postgresql_down_60s_mid_job_pauses_the_pool_and_loses_nothing(data_host, worker_1, workers):
    """LightRAG's storages are PostgreSQL on the data host: stopped for 60 s mid-job, the
    workers pause on them (no chunk spends an attempt), resume once PostgreSQL answers,
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
    job_id = helpers.submit(worker_1, TOKEN, chunks)["job_id"]
    for _ in range(240):
        status, body = helpers.api(worker_1, TOKEN, "GET", f"/jobs/{job_id}")
        if status == 200 and body["chunks_processed"] >= 5:
            break
        time.sleep(0.5)
    data_host.check_output("systemctl stop postgresql")
    try:
        paused: dict[str, set[str]] = {}
        for _ in range(60):
            paused = {cluster.name(w): paused_dependencies(w) for w in workers}
            if any("lightrag_storage" in deps for deps in paused.values()):
                break
            time.sleep(1)
        assert any("lightrag_storage" in deps for deps in paused.values()), pause_report(paused, workers)
        time.sleep(60)
    finally:
        data_host.check_output("systemctl start postgresql")
    job = helpers.wait_job(worker_1, TOKEN, job_id, deadline=420)
    assert job["status"] == "completed" and job["chunks_processed"] == 150 and job["chunks_failed"] == 0, job
    assert cluster.redis_cli(data_host, REDIS_PASSWORD, "XLEN", f"{STREAM}:dlq").strip() == "0"
    journals = {cluster.name(w): w.check_output(f"journalctl -u {SERVICE} --no-pager -o cat") for w in workers}
    assert any("worker pool paused: lightrag_storage" in text for text in journals.values())
    assert any("worker pool resumed: lightrag_storage" in text for text in journals.values())
    for name, text in journals.items():
        assert "chunk dead-lettered" not in text, name
