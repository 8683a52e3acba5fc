"""Backup and restore of the cluster, LightRAG on its PostgreSQL storages (issue 22, item 1).

The default scenario proves the playbooks on one host with the local storages;
here the graph lives in PostgreSQL on the data host, two workers share it and the
queue, and the backup is pg_dump's (no working directory is archived). A job is
ingested; a second is posted while the LLM stand-in is down, so its chunks are
queued when playbooks/backup.yml stops both workers and takes the backup. The
cluster is then wiped as a fresh deployment has it (both services stopped, Redis
flushed, the database dropped and created again with pgvector as
postgresql_server creates it, migrated, the services started) and
playbooks/restore.yml puts the backup back: the first job, its verify-job answer
and the graph's canonical dump are as before, and the queued job completes with
every chunk in the graph.

This file runs first in the scenario (by name); the others then run on the
restored cluster.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import cluster
import helpers
from helpers import PG_DB, SERVICE, USER

REPO = Path(__file__).resolve().parents[3]
SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
REDIS_PASSWORD = SCENARIO_VARS["redis_server_password"]
MASTER_NAME = SCENARIO_VARS["redis_server_sentinel_master_name"]
SECRETS = [str(value) for name, value in SCENARIO_VARS.items() if name.endswith(("_password", "_token")) and value]


def get(worker: Any, path: str, timeout: int = 60) -> Any:
    status, body = helpers.api(worker, TOKEN, "GET", path, timeout=timeout)
    assert status == 200, (cluster.name(worker), path, status, body)
    return body


def playbook(name: str, backups: Path) -> None:
    """The repository's playbook `name` with the backups in `backups`; it succeeds and prints no secret."""
    helpers.playbook(REPO / "playbooks" / name, {"orchestrator_workers_backup_dir": str(backups)}, secrets=SECRETS)


def wipe(data_host: Any, workers: list[Any]) -> None:
    """The state of a fresh deployment: no job, no queue, no graph, on every host."""
    for worker in workers:
        worker.check_output(f"systemctl stop {SERVICE}")
    master, port = cluster.current_master(data_host, REDIS_PASSWORD, MASTER_NAME)
    cluster.redis_cli(data_host, REDIS_PASSWORD, "FLUSHALL", server=master, port=port)
    helpers.psql(data_host, f"DROP DATABASE {PG_DB} WITH (FORCE)", db="postgres")
    helpers.psql(data_host, f"CREATE DATABASE {PG_DB} OWNER {USER} ENCODING 'UTF8' TEMPLATE template0", db="postgres")
    helpers.psql(data_host, "CREATE EXTENSION IF NOT EXISTS vector")  # as postgresql_server does, as the superuser
    migrate = f"cd /var/lib/shield-orchestrator && {helpers.CLI} migrate"
    workers[0].check_output(f"runuser -u {USER} -- sh -c {shlex.quote(migrate)}")
    for worker in workers:
        worker.check_output(f"systemctl start {SERVICE}")
    for worker in workers:
        helpers.wait_health(worker)


def test_a_cluster_backup_restored_onto_a_wiped_cluster_answers_as_before(data_host, workers, tmp_path):
    worker_1, worker_2 = workers
    tag = uuid.uuid4().hex[:8]
    done = helpers.submit(worker_1, TOKEN, helpers.people_chunks(f"done-{tag}", 4, "Porto Archive"))["job_id"]
    assert helpers.wait_job(worker_1, TOKEN, done)["status"] == "completed"
    verify_before = get(worker_1, f"/jobs/{done}/verify", timeout=120)
    assert verify_before["verified"] is True, verify_before
    before = (get(worker_1, f"/jobs/{done}"), verify_before, helpers.consistent_graph(worker_2, TOKEN, dump=True))
    backups = tmp_path / "backups"
    try:
        helpers.outage(data_host, 900)  # the stand-in runs on the data host
        queued = helpers.submit(worker_2, TOKEN, helpers.people_chunks(f"queued-{tag}", 3, "Porto Archive"))["job_id"]
        time.sleep(2)
        assert get(worker_1, f"/jobs/{queued}")["chunks_processed"] == 0

        playbook("backup.yml", backups)
        [taken] = list(backups.iterdir())
        manifest = json.loads((taken / "manifest.json").read_text())
        assert sorted(manifest["files"]) == ["postgres.dump", "queue.json"]  # the graph is in the dump
        assert manifest["queue"]["streams"]["normal"]["entries"] == 3, manifest["queue"]
        for worker in workers:
            assert worker.service(SERVICE).is_running, cluster.name(worker)  # started again after the backup

        wipe(data_host, workers)
        status, _ = helpers.api(worker_1, TOKEN, "GET", f"/jobs/{done}")
        assert status == 404  # gone: the restore has everything to bring back
        assert helpers.processed_documents(helpers.consistent_graph(worker_1, TOKEN)) == 0

        playbook("restore.yml", backups)

        helpers.assert_restored(worker_2, TOKEN, done, before)
    finally:
        helpers.outage(data_host, 0)

    helpers.assert_job_whole(worker_1, TOKEN, queued, 3)
    processed = helpers.processed_documents(helpers.consistent_graph(worker_1, TOKEN))
    assert processed == helpers.processed_documents(before[2]) + 3
