"""Helpers of the Molecule scenarios' testinfra tests.

Everything runs inside the container (curl, redis-cli, psql, systemctl)
through testinfra's `host` fixture; the tests never talk to the network
themselves. molecule/conftest.py puts this directory on sys.path, so a
scenario's test file does `import helpers`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

SERVICE = "shield-orchestrator"
PORT = 8000
BASE = f"http://127.0.0.1:{PORT}"
STREAM = "shield:ingestion_queue"
GROUP = "lightrag-workers"
USER = "orchestrator"
PG_DB = "shield_orchestrator"
ENV_FILE = "/etc/shield-orchestrator/orchestrator.env"  # the service's secrets
APP_DIR = "/opt/hx-citadel-shield/orchestrator"
RELEASES = f"{APP_DIR}/releases"  # one directory per release (issue 22)
CURRENT = f"{APP_DIR}/current"  # the link to the release the host runs
# The service's CLI of the release the host runs (run it as the service user).
CLI = f"PYTHONPATH={CURRENT}/src {CURRENT}/venv/bin/python -m shield_orchestrator --env-file {ENV_FILE}"
JOB_DEADLINE = 240  # seconds a test job may take to complete


def scenario_vars(test_file: str) -> dict[str, Any]:
    """The scenario's inventory values (<scenario>/inventory/group_vars/all.yml) of a test file."""
    scenario = Path(test_file).resolve().parent.parent
    return yaml.safe_load((scenario / "inventory" / "group_vars" / "all.yml").read_text())


def api(host, token: str, method: str, path: str, body: object | None = None, timeout: int = 30) -> tuple[int, Any]:
    """One HTTP request with curl inside the container: (status, parsed JSON or text); 0 when curl failed."""
    cmd = (
        f"curl -sS -m {timeout} -o - -w '\\n%{{http_code}}' -X {method} "
        f"-H {shlex.quote('Authorization: Bearer ' + token)} -H 'Content-Type: application/json' "
    )
    if body is not None:
        cmd += f"--data-binary {shlex.quote(json.dumps(body))} "
    result = host.run(cmd + shlex.quote(BASE + path))
    if result.rc != 0:
        return 0, result.stderr
    text, _, code = result.stdout.rpartition("\n")
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = text
    return int(code), payload


def submit(host, token: str, chunks: list[dict[str, Any]], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a job; assert it is accepted (202) and return the answer."""
    status, body = api(
        host,
        token,
        "POST",
        "/lightrag/ingest-async",
        {"chunks": chunks, "source_type": "text", "metadata": metadata or {}},
    )
    assert status == 202, body
    assert isinstance(body, dict)
    assert body["job_id"]
    assert body["status_url"] == f"/jobs/{body['job_id']}"
    return body


PEOPLE = ("Ada Moreau", "Bilal Khan", "Chiara Rossi", "Dmitri Ivanov", "Elif Aksoy")


def people_chunks(tag: str, count: int, place: str) -> list[dict[str, Any]]:
    """`count` chunks whose people recur (LightRAG merges them), unique to `tag`."""
    return [
        {
            "text": f"{PEOPLE[i % 5]} met {PEOPLE[(i + 1) % 5]} at {place} {tag} {i}.",
            "source_uri": f"{place.lower().replace(' ', '-')}/{tag}/{i}.txt",
        }
        for i in range(count)
    ]


def assert_job_whole(host, token: str, job_id: str, count: int) -> None:
    """The job completes with its `count` chunks processed, none failed, and verify-job finds them all."""
    job = wait_job(host, token, job_id)
    assert (job["status"], job["chunks_processed"], job["chunks_failed"]) == ("completed", count, 0), job
    status, verified = api(host, token, "GET", f"/jobs/{job_id}/verify", timeout=120)
    assert status == 200 and verified["verified"] is True, (status, verified)


def consistent_graph(host, token: str, dump: bool = False) -> dict[str, Any]:
    """GET /graph/verify (with the canonical dump when asked); asserts the graph is consistent."""
    status, body = api(host, token, "GET", "/graph/verify?dump=true" if dump else "/graph/verify", timeout=300)
    assert status == 200 and isinstance(body, dict), (status, body)
    assert body["consistent"] is True, body["problems"]
    return body


def processed_documents(graph: dict[str, Any]) -> int:
    return int(graph["counts"]["documents"].get("processed", 0))


def assert_restored(host, token: str, job_id: str, before: tuple[Any, Any, dict[str, Any]]) -> None:
    """After a restore: the job's answer, its verify-job answer and the graph's canonical
    dump are `before`'s (taken the same way before the backup)."""
    job_before, verify_before, graph_before = before
    for path, expected in ((f"/jobs/{job_id}", job_before), (f"/jobs/{job_id}/verify", verify_before)):
        status, body = api(host, token, "GET", path, timeout=120)
        assert (status, body) == (200, expected), path
    assert consistent_graph(host, token, dump=True)["dump"] == graph_before["dump"]


def wait_health(host, within: float = 120) -> None:
    """Until the host's /health answers 200."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if host.run(f"curl -sf -m 5 {BASE}/health").rc == 0:
            return
        time.sleep(1)
    pytest.fail(f"/health of {host.backend.get_hostname()} did not answer 200 within {within}s")


def wait_job(host, token: str, job_id: str, deadline: float = JOB_DEADLINE) -> dict[str, Any]:
    """Poll GET /jobs/{id} until the job is final; tolerate a restarting service."""
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        status, body = api(host, token, "GET", f"/jobs/{job_id}", timeout=10)
        if status == 200 and isinstance(body, dict):
            last = body
            if body["status"] in ("completed", "failed"):
                return body
        else:
            last = (status, body)
        time.sleep(1)
    pytest.fail(f"job {job_id} not final after {deadline}s; last answer: {last}")


def show(host, *props: str) -> dict[str, str]:
    """`systemctl show` properties of the service."""
    out = host.check_output(f"systemctl show {SERVICE} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(host) -> int:
    return int(show(host, "MainPID")["MainPID"])


def redis_cli(host, password: str, *args: str) -> str:
    auth = f"--no-auth-warning -a {shlex.quote(password)} " if password else ""
    return host.check_output(f"redis-cli --raw {auth}" + " ".join(shlex.quote(a) for a in args))


def psql(host, sql: str, db: str = PG_DB) -> str:
    return host.check_output(f"runuser -u postgres -- psql -d {db} -tAX -c {shlex.quote(sql)}").strip()


def my_consumers(host, password: str) -> list[str]:
    """This host's consumers in the workers' group, sorted: <hostname>-worker-<n>."""
    consumers = redis_cli(host, password, "XINFO", "CONSUMERS", STREAM, GROUP).splitlines()
    hostname = host.check_output("hostname").strip()
    return sorted(c for c in consumers if re.fullmatch(rf"{re.escape(hostname)}-worker-\d+", c))


def expected_consumers(host, pool_size: int) -> list[str]:
    hostname = host.check_output("hostname").strip()
    return sorted(f"{hostname}-worker-{n}" for n in range(1, pool_size + 1))


def as_service(host, command: str):
    """Run `command` in the container with the service's secrets read from its
    environment file into the shell's environment: no secret on a command line."""
    return host.run("sh -c " + shlex.quote(f"set -a; . {ENV_FILE}; set +a; {command}"))


def service_redis(host, user: str, *args: str, server: str = "127.0.0.1", port: int = 6379):
    """redis-cli as the service's ACL user (its password through REDISCLI_AUTH)."""
    words = " ".join(shlex.quote(a) for a in args)
    return as_service(
        host,
        f'REDISCLI_AUTH="$ORCHESTRATOR_REDIS_PASSWORD" redis-cli --no-auth-warning --user {shlex.quote(user)} '
        f"-h {shlex.quote(server)} -p {port} {words}",
    )


REPO = Path(__file__).resolve().parents[2]
STANDIN = "http://127.0.0.1:18080"  # the lab's LLM stand-in (a deterministic fake, not a language model)


def outage(host, seconds: float) -> None:
    """The stand-in answers 503 on its LLM and embedding routes for `seconds` (0 ends it)."""
    body = json.dumps({"status": 503, "seconds": seconds})
    host.check_output(
        f"curl -sS -f -X POST -H 'Content-Type: application/json' --data {shlex.quote(body)} {STANDIN}/admin/outage"
    )


def playbook(
    path: Path,
    extra: dict[str, str],
    *options: str,
    rc: int = 0,
    secrets: Sequence[str] = (),
    repo: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """A real playbook against the scenario's inventory, from the controller, with
    the roles and the configuration of checkout `repo` (another checkout is another
    release); its exit status must be `rc`, and its output holds none of `secrets`."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert inventory, "MOLECULE_INVENTORY_FILE is not set: run this through molecule verify"
    executable = shutil.which("ansible-playbook")
    assert executable, "ansible-playbook is not on PATH"
    env = dict(os.environ, ANSIBLE_CONFIG=str(repo / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(repo / "roles"))
    run = subprocess.run(
        [executable, "-i", inventory, *options, str(path), "--extra-vars", json.dumps(extra)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=repo,
        env=env,
        check=False,
    )
    said = f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert run.returncode == rc, f"{path.name} {options} (rc {run.returncode}):\n{said}"
    leaked = [secret for secret in secrets if secret in run.stdout + run.stderr]
    assert not leaked, f"{path.name} printed {len(leaked)} secret value(s)"
    return run
