"""Backup and restore with the real playbooks (playbooks/backup.yml, playbooks/restore.yml).

A job is ingested; a second one is posted while the LLM stand-in is down, so
its chunks are queued (the pool pauses on the LLM) when the backup is taken.
The host's state is then wiped as a fresh deployment has it (the service
stopped, Redis flushed, the database dropped and created again as
postgresql_server creates it, migrated, LightRAG's working directory removed,
the service started) and the newest backup restored: the first job, its
verify-job answer and the whole graph (verify-graph's canonical dump) are as
before, and once the LLM answers again the queued job completes with every
chunk in the graph.

This file runs before test_default.py, which then checks the restored host.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import helpers
from helpers import PG_DB, SERVICE, USER

REPO = Path(__file__).resolve().parents[3]
SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
REDIS_PASSWORD = SCENARIO_VARS["redis_server_password"]
SECRETS = [str(value) for name, value in SCENARIO_VARS.items() if name.endswith(("_password", "_token")) and value]
CLI = helpers.CLI


def api(host, method: str, path: str, body: object | None = None, timeout: int = 30) -> tuple[int, Any]:
    return helpers.api(host, TOKEN, method, path, body, timeout)


def get(host, path: str, timeout: int = 60) -> Any:
    status, body = api(host, "GET", path, timeout=timeout)
    assert status == 200, (path, status, body)
    return body


def playbook(name: str, extra: dict[str, str], *options: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
    """The repository's playbook `name`; its exit status must be `rc`, and it prints no secret."""
    return helpers.playbook(REPO / "playbooks" / name, extra, *options, rc=rc, secrets=SECRETS)


def wipe(host) -> None:
    """The state of a fresh deployment: no job, no queue, no graph."""
    host.check_output(f"systemctl stop {SERVICE}")
    helpers.redis_cli(host, REDIS_PASSWORD, "FLUSHALL")
    helpers.psql(host, f"DROP DATABASE {PG_DB} WITH (FORCE)", db="postgres")
    helpers.psql(host, f"CREATE DATABASE {PG_DB} OWNER {USER} ENCODING 'UTF8' TEMPLATE template0", db="postgres")
    host.check_output("rm -rf /var/lib/shield-orchestrator/lightrag")
    host.check_output(
        f"runuser -u {USER} -- sh -c {shlex.quote('cd /var/lib/shield-orchestrator && ' + CLI + ' migrate')}"
    )
    host.check_output(f"systemctl start {SERVICE}")
    helpers.wait_health(host)


def test_a_backup_restored_onto_a_fresh_host_answers_as_before_and_its_queue_is_processed(host, tmp_path):
    tag = uuid.uuid4().hex[:8]
    first = helpers.people_chunks(f"done-{tag}", 4, "Backup Works")
    done = helpers.submit(host, TOKEN, first, {"case": "backup"})["job_id"]
    assert helpers.wait_job(host, TOKEN, done)["status"] == "completed"
    verify_before = get(host, f"/jobs/{done}/verify", timeout=120)
    assert verify_before["verified"] is True, verify_before
    before = (get(host, f"/jobs/{done}"), verify_before, helpers.consistent_graph(host, TOKEN, dump=True))

    try:
        # Queued at backup time: the LLM is down, so the pool pauses and the chunks wait.
        helpers.outage(host, 900)
        queued = helpers.submit(host, TOKEN, helpers.people_chunks(f"queued-{tag}", 3, "Backup Works"))["job_id"]
        time.sleep(2)
        assert get(host, f"/jobs/{queued}")["chunks_processed"] == 0

        backups = tmp_path / "backups"
        for name in ("backup.yml", "restore.yml"):  # both refuse check mode, touching nothing
            refused = playbook(name, {"orchestrator_workers_backup_dir": str(backups)}, "--check", rc=2)
            said = " ".join((refused.stdout + refused.stderr).split())  # a failed task is reported on stderr
            assert "does not run in check mode" in said, said[-3000:]
        assert not backups.exists()
        playbook("backup.yml", {"orchestrator_workers_backup_dir": str(backups)})
        [taken] = list(backups.iterdir())
        manifest = json.loads((taken / "manifest.json").read_text())
        assert sorted(manifest["files"]) == ["postgres.dump", "queue.json", "workspace.tar.gz"]
        assert manifest["queue"]["streams"]["normal"]["entries"] == 3, manifest["queue"]
        assert oct(taken.stat().st_mode & 0o777) == "0o700"
        assert host.service(SERVICE).is_running  # started again after the backup

        wipe(host)
        status, _ = api(host, "GET", f"/jobs/{done}")
        assert status == 404  # the job is gone: the restore has everything to bring back

        playbook("restore.yml", {"orchestrator_workers_backup_dir": str(backups)})  # the newest: `taken`

        helpers.assert_restored(host, TOKEN, done, before)
    finally:
        helpers.outage(host, 0)

    # The chunks queued at backup time are processed after the restore.
    helpers.assert_job_whole(host, TOKEN, queued, 3)
    listed = {job["job_id"] for job in get(host, "/jobs?limit=100")["jobs"]}  # the history in PostgreSQL
    assert {done, queued} <= listed
    processed = helpers.processed_documents(helpers.consistent_graph(host, TOKEN))
    assert processed == helpers.processed_documents(before[2]) + 3
