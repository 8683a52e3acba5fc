"""Scale-out on one graph (issue 9), against the real hosts: a worker host
killed mid-job, two hosts ingesting at once, a rolling upgrade under load, and
a Redis master failover through Sentinel mid-job.

Every job's chunks are unique texts, so LightRAG extracts each document once
when nothing goes wrong; the figures (take-over time, rates, failover time)
are printed at the end of the run (conftest.py's terminal summary).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cluster
import helpers

SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
REDIS_PASSWORD = SCENARIO_VARS["redis_server_password"]
MASTER_NAME = SCENARIO_VARS["redis_server_sentinel_master_name"]
STREAM = helpers.STREAM
SERVICE = helpers.SERVICE
STANDIN_STATS = "http://127.0.0.1:18080/stats"
REPO = Path(__file__).resolve().parents[3]
TAKEOVER_LIMIT = 60  # seconds from the kill to the other host's first claim (issue 9)


def make_chunks(tag: str, count: int) -> list[dict[str, Any]]:
    """`count` chunks with texts of their own (no content duplicate within or across jobs)."""
    return [
        {
            "text": (
                f"Corven Mill {tag} sells flour to Aldous Bakery {tag}-{i}. "
                f"Aldous Bakery {tag}-{i} delivers bread to Pellam School {tag}-{i % 7}."
            ),
            "source_uri": f"molecule://scale-out/{tag}/{i}",
            "metadata": {"tag": tag},
        }
        for i in range(count)
    ]


def job(worker: Any, job_id: str) -> dict[str, Any]:
    status, body = helpers.api(worker, TOKEN, "GET", f"/jobs/{job_id}", timeout=10)
    assert status == 200 and isinstance(body, dict), (cluster.name(worker), status, body)
    return body


def wait_processed(worker: Any, job_id: str, at_least: int, deadline: float = 600) -> dict[str, Any]:
    """Poll the job through `worker` until at least `at_least` chunks are processed."""
    end = time.monotonic() + deadline
    body = job(worker, job_id)
    while body["chunks_processed"] < at_least:
        assert time.monotonic() < end, f"job {job_id}: {body['chunks_processed']} processed after {deadline}s"
        time.sleep(0.5)
        body = job(worker, job_id)
    return body


def assert_complete(body: dict[str, Any], total: int) -> None:
    """Every chunk counted once: processed == total, nothing failed."""
    assert body["status"] == "completed", body
    assert (body["chunks_total"], body["chunks_processed"], body["chunks_failed"]) == (total, total, 0), body


def verify_job(worker: Any, job_id: str) -> dict[str, Any]:
    """`python -m shield_orchestrator verify-job` on `worker`, as the service user, from the graph in PostgreSQL."""
    result = worker.run(f"runuser -u {helpers.USER} -- env {helpers.CLI} verify-job {job_id}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.rc == (0 if report.get("verified") else 1), (result.rc, result.stderr[-2000:])
    return report


def assert_verified(report: dict[str, Any], total: int) -> None:
    """verify-job's answer: every chunk's document PROCESSED, its vectors present, entities extracted."""
    assert report["verified"] is True, report
    assert report["documents_processed"] == total, report
    assert report["chunk_vectors_found"] == report["chunk_vectors_expected"] >= total, report
    assert report["entities"] > 0, report


def extraction_calls(data_host: Any) -> int:
    """The stand-in's count of first-pass entity extractions (one per document LightRAG processes)."""
    stats = json.loads(data_host.check_output(f"curl -sS -m 10 {STANDIN_STATS}"))
    return int(stats["calls"].get("chat:extraction", 0))


def first_journal_line(host: Any, since: float, needle: str) -> float | None:
    """Time (unix) of the first line of the service's journal since `since` that contains `needle`."""
    out = host.check_output(f"journalctl -u {SERVICE} --no-pager -o short-unix --since @{int(since)}")
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        if needle in text:
            return float(stamp)
    return None


def wait_healthy(worker: Any, deadline: float = 240) -> None:
    end = time.monotonic() + deadline
    status, body = 0, None
    while time.monotonic() < end:
        status, body = helpers.api(worker, TOKEN, "GET", "/health", timeout=5)
        if status == 200:
            return
        time.sleep(1)
    raise AssertionError(f"{cluster.name(worker)} not healthy after {deadline}s: {status} {body}")


def test_killed_worker_host_hands_its_work_to_the_other(data_host, docker, worker_1, worker_2, figures):
    """Issue 9, test 1: 300 chunks posted to worker 1, its container killed once
    about a third are processed; the job completes through worker 2 (take-over
    within 60 s of the kill), every chunk counted once, and verify-job on worker
    2 finds every chunk in the graph, worker 1's included."""
    total = 300
    job_id = helpers.submit(worker_1, TOKEN, make_chunks(uuid.uuid4().hex[:8], total))["job_id"]
    started = time.monotonic()
    before_kill = wait_processed(worker_2, job_id, at_least=total // 3)
    rate = before_kill["chunks_processed"] / (time.monotonic() - started)
    killed_at = time.time()
    docker.kill(cluster.name(worker_1))
    try:
        remaining_seconds = (total - before_kill["chunks_processed"]) / rate
        done = helpers.wait_job(worker_2, TOKEN, job_id, deadline=TAKEOVER_LIMIT + 3 * remaining_seconds + 120)
        completed_after = time.time() - killed_at
    finally:
        docker.start(cluster.name(worker_1))
    assert_complete(done, total)
    took_over = first_journal_line(worker_2, killed_at - 1, "took over")
    assert took_over is not None, "worker 2 never took over worker 1's pending entries"
    takeover_seconds = took_over - killed_at
    assert takeover_seconds <= TAKEOVER_LIMIT, takeover_seconds
    assert cluster.redis_cli(data_host, REDIS_PASSWORD, "XLEN", f"{STREAM}:dlq").strip() == "0"
    assert_verified(verify_job(worker_2, job_id), total)
    figures["kill: chunks processed at the kill"] = before_kill["chunks_processed"]
    figures["kill: rate before the kill (chunks/s, both hosts)"] = round(rate, 2)
    figures["kill: kill -> worker 2's first take-over (s)"] = round(takeover_seconds, 1)
    figures["kill: kill -> job completed (s)"] = round(completed_after, 1)
    wait_healthy(worker_1)


def test_two_hosts_ingesting_at_once_process_each_document_once(data_host, worker_1, worker_2, figures):
    """Issue 9, test 2: a job of 200 on each host at once; both complete and
    LightRAG's extraction calls match one pass over the 400 documents (no host
    reset and re-extracted the other's in-flight documents)."""
    extractions_before = extraction_calls(data_host)
    started = time.monotonic()
    jobs = {
        cluster.name(worker): helpers.submit(worker, TOKEN, make_chunks(uuid.uuid4().hex[:8], 200))["job_id"]
        for worker in (worker_1, worker_2)
    }
    finished = {
        name: helpers.wait_job(worker, TOKEN, jobs[name], deadline=900)
        for name, worker in ((cluster.name(worker_1), worker_1), (cluster.name(worker_2), worker_2))
    }
    elapsed = time.monotonic() - started
    for body in finished.values():
        assert_complete(body, 200)
    assert extraction_calls(data_host) - extractions_before == 400
    for job_id in jobs.values():
        assert_verified(verify_job(worker_1, job_id), 200)
    figures["concurrent: 2 x 200 chunks on two hosts (chunks/s)"] = round(400 / elapsed, 2)


class HealthWatch(threading.Thread):
    """Polls every worker's /health while a rollout runs; records when each answered and when not."""

    def __init__(self, workers: list[Any]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.samples: list[tuple[float, dict[str, bool]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            healthy = {
                cluster.name(w): helpers.api(w, TOKEN, "GET", "/health", timeout=3)[0] == 200 for w in self.workers
            }
            self.samples.append((now, healthy))
            self.stop.wait(0.5)


def unit_times(worker: Any) -> tuple[float, float]:
    """(last stop, last start) of the service as unix seconds (systemd's ActiveExit/ActiveEnter
    timestamps; the containers share the controller's clock)."""
    out = worker.check_output(
        f"systemctl show {SERVICE} --timestamp=unix -p ActiveExitTimestamp -p ActiveEnterTimestamp"
    )
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return float(values["ActiveExitTimestamp"].lstrip("@")), float(values["ActiveEnterTimestamp"].lstrip("@"))


def test_rolling_upgrade_under_load_restarts_one_host_at_a_time(inventory_path, worker_1, worker_2, workers, figures):
    """Issue 9, test 3: the deploy playbook with new code while a 300-chunk job
    runs (a changed deploy-time value: deployed.py, so the code's tree hash,
    changes): the hosts restart one at a time (never both down), each comes back
    running the new code, and the job completes whole."""
    total = 300
    before = {helpers.api(w, TOKEN, "GET", "/health")[1]["tree_sha256"] for w in workers}
    assert len(before) == 1, before
    job_id = helpers.submit(worker_1, TOKEN, make_chunks(uuid.uuid4().hex[:8], total))["job_id"]
    wait_processed(worker_2, job_id, at_least=10)
    watch = HealthWatch(workers)
    watch.start()
    rollout_started = time.time()
    try:
        env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_FORCE_COLOR": "0"}
        result = subprocess.run(
            [
                "ansible-playbook",
                "-i",
                inventory_path,
                str(REPO / "playbooks" / "deploy-orchestrator-workers.yml"),
                "-e",
                "orchestrator_workers_sse_keepalive_seconds=16",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        watch.stop.set()
        watch.join()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    rollout_seconds = time.time() - rollout_started
    done = helpers.wait_job(worker_2, TOKEN, job_id, deadline=900)
    assert_complete(done, total)
    assert_verified(verify_job(worker_2, job_id), total)
    after = set()
    for worker in workers:
        status, body = helpers.api(worker, TOKEN, "GET", "/health")
        assert status == 200, (cluster.name(worker), body)
        after.add(body["tree_sha256"])
    assert len(after) == 1 and after != before, (before, after)
    # Both restarted during the rollout, one after the other: the second host
    # stopped only after the first was running again.
    times = sorted(unit_times(w) for w in workers)
    assert all(stop >= rollout_started for stop, _start in times), times
    (_first_stop, first_start), (second_stop, _second_start) = times
    assert first_start <= second_stop, times
    never_both_down = [t for t, healthy in watch.samples if not any(healthy.values())]
    assert not never_both_down, f"no worker answered /health at {never_both_down}"
    down = {name: sum(1 for _t, h in watch.samples if not h[name]) for name in watch.samples[0][1]}
    assert all(count > 0 for count in down.values()), down  # the watch saw each restart
    figures["rolling upgrade: playbook, two hosts one at a time (s)"] = round(rollout_seconds, 1)


def test_redis_master_failover_through_sentinel_mid_job(data_host, replica_host, worker_2, workers, figures):
    """Issue 9, test 4: the Redis master killed (SIGKILL, then kept down) while a
    200-chunk job runs: the Sentinels promote the replica, the workers follow
    it, and the job completes whole; the old master rejoins as a replica."""
    total = 200
    assert cluster.current_master(worker_2, REDIS_PASSWORD, MASTER_NAME)[0] == cluster.name(data_host)
    job_id = helpers.submit(worker_2, TOKEN, make_chunks(uuid.uuid4().hex[:8], total))["job_id"]
    wait_processed(worker_2, job_id, at_least=40)
    killed_at = time.time()
    # SIGKILL: no shutdown handshake with the replica, what a crash does; the
    # stop keeps systemd from restarting it before the Sentinels act.
    data_host.check_output("systemctl kill --signal=SIGKILL redis-server; systemctl stop redis-server")
    end = time.monotonic() + 120
    while cluster.current_master(worker_2, REDIS_PASSWORD, MASTER_NAME)[0] != cluster.name(replica_host):
        assert time.monotonic() < end, "the Sentinels did not promote the replica within 120 s"
        time.sleep(0.5)
    promoted_after = time.time() - killed_at
    try:
        done = helpers.wait_job(worker_2, TOKEN, job_id, deadline=900)
    finally:
        data_host.check_output("systemctl start redis-server")
    completed_after = time.time() - killed_at
    assert_complete(done, total)
    new_master = cluster.name(replica_host)
    assert cluster.redis_cli(replica_host, REDIS_PASSWORD, "XLEN", f"{STREAM}:dlq").strip() == "0"
    groups = cluster.redis_cli(replica_host, REDIS_PASSWORD, "XINFO", "GROUPS", STREAM).splitlines()
    assert helpers.GROUP in groups, groups
    pending = cluster.redis_cli(replica_host, REDIS_PASSWORD, "XPENDING", STREAM, helpers.GROUP).splitlines()
    assert pending[0] == "0", pending
    for worker in workers:
        wait_healthy(worker)
    assert_verified(verify_job(worker_2, job_id), total)
    # The old master comes back as a replica of the promoted one.
    end = time.monotonic() + 120
    replication = ""
    while time.monotonic() < end:
        replication = cluster.redis_cli(data_host, REDIS_PASSWORD, "INFO", "replication")
        if "role:slave" in replication and f"master_host:{new_master}" in replication:
            break
        time.sleep(1)
    assert "role:slave" in replication and f"master_host:{new_master}" in replication, replication
    journals = "\n".join(w.check_output(f"journalctl -u {SERVICE} --no-pager -o cat") for w in workers)
    assert "chunk dead-lettered" not in journals
    figures["failover: Redis master killed -> replica promoted (s)"] = round(promoted_after, 1)
    figures["failover: Redis master killed -> job completed (s)"] = round(completed_after, 1)
