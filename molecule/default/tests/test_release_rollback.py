"""Versioned releases and rollback with the real playbooks (issue 22, item 2).

The host runs release A, the converge's. Release B is another checkout of the
repository: its version bumped and one more schema revision (a table, so the
way back is a real downgrade). With the LLM stand-in down, a job is accepted
by A and B is deployed with playbooks/deploy-orchestrator-workers.yml (serial,
a graceful restart): B is installed beside A, sharing A's virtualenv (same
requirements), migrates the database and runs; the job completes on B. A second
job is accepted by B and playbooks/rollback.yml switches back to A: the host
runs A again and the database is back at A's revision; that job completes on
A. Neither job loses a chunk and verify-job finds both in the graph.

This file runs after test_default.py, on release A, and leaves the host on A.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helpers
from helpers import SERVICE

REPO = Path(__file__).resolve().parents[3]
SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
SECRETS = [str(value) for name, value in SCENARIO_VARS.items() if name.endswith(("_password", "_token")) and value]
PACKAGE = Path("roles/orchestrator_workers/templates/shield_orchestrator")
# B's extra revision: a table of its own, dropped on the way back.
PROBE_REVISION = """    Revision(
        "9001",
        "0004",
        "release B's probe table (tests/test_release_rollback.py)",
        lambda op: op.create_table("release_probe", sa.Column("id", sa.Integer, primary_key=True)),
        lambda op: op.drop_table("release_probe"),
    ),
)
HEAD = REVISIONS[-1].id"""


def get(host, path: str, timeout: int = 60) -> Any:
    status, body = helpers.api(host, TOKEN, "GET", path, timeout=timeout)
    assert status == 200, (path, status, body)
    return body


def checkout_b(root: Path) -> Path:
    """A copy of the repository's roles, playbooks and configuration: release B."""
    for name in ("roles", "playbooks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*_cache"))
    shutil.copy2(REPO / "ansible.cfg", root / "ansible.cfg")
    init = root / PACKAGE / "__init__.py"
    text = init.read_text()
    version = re.search(r'__version__ = "([^"]+)"', text)
    assert version, text
    init.write_text(text.replace(version.group(0), f'__version__ = "{version.group(1)}+b"'))
    migrations = root / PACKAGE / "jobs" / "migrations.py"
    text = migrations.read_text()
    tail = ")\nHEAD = REVISIONS[-1].id"
    assert text.count(tail) == 1 and '"0004", "0003",' in text, "migrations.py changed shape: update B's probe"
    migrations.write_text(text.replace(tail, PROBE_REVISION))
    return root


def schema(host) -> tuple[str, bool]:
    """The database's revision, and whether B's probe table exists."""
    revision = helpers.psql(host, "SELECT version_num FROM alembic_version")
    probe = helpers.psql(host, "SELECT to_regclass('public.release_probe') IS NOT NULL")
    return revision, probe == "t"


def release_of(host) -> str:
    body = json.loads(host.check_output(f"curl -sS -m 10 {helpers.BASE}/health"))
    assert body["release"] == host.file(helpers.CURRENT).linked_to.rsplit("/", 1)[-1], body
    unit = host.file(f"/etc/systemd/system/{SERVICE}.service").content_string
    assert f"ExecStart={helpers.RELEASES}/{body['release']}/venv/bin/python " in unit
    return body["release"]


def test_deploy_b_mid_job_then_roll_back_to_a_mid_job_loses_nothing(host, tmp_path):
    release_a = release_of(host)
    version_a = get(host, "/health")["version"]
    assert schema(host) == ("0004", False)
    venvs = host.check_output(f"ls {helpers.APP_DIR}/venvs").split()
    b = checkout_b(tmp_path / "b")
    deploy = b / "playbooks" / "deploy-orchestrator-workers.yml"
    rollback = REPO / "playbooks" / "rollback.yml"

    # Refused in check mode, touching nothing; an unknown release is named with those on the host.
    said = helpers.playbook(rollback, {}, "--check", rc=2, secrets=SECRETS)
    assert "does not run in check mode" in " ".join((said.stdout + said.stderr).split())
    said = helpers.playbook(rollback, {"orchestrator_workers_rollback_to": "0.0.0-nothing"}, rc=2, secrets=SECRETS)
    assert "No release 0.0.0-nothing on" in said.stdout + said.stderr and release_a in said.stdout + said.stderr
    assert release_of(host) == release_a

    try:
        helpers.outage(host, 900)  # the pool pauses: the job's chunks wait through the upgrade
        first = helpers.submit(host, TOKEN, helpers.people_chunks("one", 5, "Release Yard"))["job_id"]
        helpers.playbook(deploy, {}, secrets=SECRETS, repo=b)
        release_b = release_of(host)
        assert release_b != release_a and release_b.startswith(f"{version_a}+b-"), (release_a, release_b)
        assert get(host, "/health")["version"] == f"{version_a}+b"
        assert schema(host) == ("9001", True)
        # Beside A, sharing its virtualenv (same requirements: pip did not run again).
        assert sorted(host.check_output(f"ls {helpers.RELEASES}").split()) == sorted([release_a, release_b])
        assert host.check_output(f"ls {helpers.APP_DIR}/venvs").split() == venvs
        assert get(host, f"/jobs/{first}")["chunks_processed"] == 0
        helpers.outage(host, 0)
        helpers.assert_job_whole(host, TOKEN, first, 5)  # accepted by A, processed by B

        helpers.outage(host, 900)
        second = helpers.submit(host, TOKEN, helpers.people_chunks("two", 5, "Release Yard"))["job_id"]
        run = helpers.playbook(rollback, {}, secrets=SECRETS)
        assert re.search(r"Migrate the database to the release's schema revision[^\n]*\n[^\n]*\nchanged: ", run.stdout)
        assert release_of(host) == release_a
        assert get(host, "/health")["version"] == version_a
        assert schema(host) == ("0004", False)  # B's revision undone by B's code
        assert get(host, f"/jobs/{second}")["chunks_processed"] == 0
    finally:
        helpers.outage(host, 0)
    helpers.assert_job_whole(host, TOKEN, second, 5)  # accepted by B, processed by A
    helpers.consistent_graph(host, TOKEN)
    # Both releases stay for the next rollback, which would go to B.
    assert sorted(host.check_output(f"ls {helpers.RELEASES}").split()) == sorted([release_a, release_b])
