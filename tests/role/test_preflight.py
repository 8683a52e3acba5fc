"""The role's preflight refuses bad settings before it changes anything.

Runs the real playbook with ansible-playbook against localhost (connection
local, no become), limited to the preflight (--tags
orchestrator_workers_preflight): no container, no network. Each bad value must
fail the run with a message that names the variable (and the bound), and the
run must change nothing.

ansible-playbook is taken from $ANSIBLE_PLAYBOOK, else from PATH, else from
the controller virtualenv (.venv, or /work/main/.venv).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "deploy-orchestrator-workers.yml"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")
# The preflight also checks the host (systemd on Debian 12/13); Molecule proves
# that part. Here the controller stands in for a host, whatever it runs.
HOST_FACTS = {
    "ansible_service_mgr": "systemd",
    "ansible_distribution": "Debian",
    "ansible_distribution_major_version": "12",
}


def ansible_playbook() -> str:
    candidates = [
        os.environ.get("ANSIBLE_PLAYBOOK", ""),
        shutil.which("ansible-playbook") or "",
        str(REPO / ".venv" / "bin" / "ansible-playbook"),
        "/work/main/.venv/bin/ansible-playbook",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("ansible-playbook not found: set ANSIBLE_PLAYBOOK or put the controller venv (make bootstrap) on PATH")


def run_preflight(
    tmp_path: Path, hosts: tuple[str, ...] = ("localhost",), **settings: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The preflight against localhost (or several names for it) with valid values overridden by `settings`."""
    app_dir = tmp_path / "app"
    local = {"ansible_connection": "local", "ansible_python_interpreter": PYTHON}
    inventory = {"all": {"children": {"orchestrator_workers": {"hosts": {name: dict(local) for name in hosts}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    values = {
        "ansible_become": False,
        "orchestrator_workers_postgres_password": "test-only-password",
        "orchestrator_workers_app_dir": str(app_dir),
        "orchestrator_workers_config_dir": str(tmp_path / "etc"),
        **HOST_FACTS,
        **settings,
    }
    (tmp_path / "extra.json").write_text(json.dumps(values))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"),
    }
    result = subprocess.run(
        [
            ansible_playbook(),
            "--inventory",
            str(tmp_path / "hosts.yml"),
            "--tags",
            "orchestrator_workers_preflight",
            "--extra-vars",
            f"@{tmp_path / 'extra.json'}",
            str(PLAYBOOK),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, app_dir


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    match = re.search(r"^localhost\s*:\s*(.+)$", result.stdout, re.M)
    assert match, result.stdout[-3000:] + result.stderr[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_valid_settings_pass(tmp_path: Path) -> None:
    result, app_dir = run_preflight(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = recap(result)
    assert counts["failed"] == 0
    assert counts["changed"] == 0
    assert not app_dir.exists()


BAD = {
    "pool size 0": (
        {"orchestrator_workers_pool_size": 0},
        "orchestrator_workers_pool_size must be a number from 1 to 256, not 0",
    ),
    "port above 65535": (
        {"orchestrator_workers_listen_port": 70000},
        "orchestrator_workers_listen_port must be a number from 1 to 65535, not 70000",
    ),
    "batch size 0": (
        {"orchestrator_workers_batch_size": 0},
        "orchestrator_workers_batch_size must be a number of at least 1, not 0",
    ),
    "negative backoff": (
        {"orchestrator_workers_retry_backoff_seconds": -1.0},
        "orchestrator_workers_retry_backoff_seconds must be a number of at least 0, not -1.0",
    ),
    "verify-full without CA": (
        {"orchestrator_workers_postgres_sslmode": "verify-full"},
        "needs orchestrator_workers_postgres_sslrootcert",
    ),
    "client certificate without key": (
        {"orchestrator_workers_postgres_sslcert": "/etc/ssl/client.crt"},
        "orchestrator_workers_postgres_sslcert and orchestrator_workers_postgres_sslkey go together",
    ),
    "events stream is the dead-letter stream": (
        {"orchestrator_workers_events_stream": "shield:ingestion_queue:dlq"},
        "must be three distinct streams",
    ),
    "empty key prefix": (
        {"orchestrator_workers_key_prefix": ""},
        "These must not be empty: orchestrator_workers_key_prefix.",
    ),
    "sentinels without a master name": (
        {"orchestrator_workers_redis_sentinels": ["redis-a:26379"]},
        "orchestrator_workers_redis_sentinels and orchestrator_workers_redis_sentinel_master go together",
    ),
    "sentinel without a port": (
        {"orchestrator_workers_redis_sentinels": ["redis-a"], "orchestrator_workers_redis_sentinel_master": "shield"},
        "every sentinel must be host:port",
    ),
    "rolling batch of 0 hosts": (
        {"orchestrator_workers_serial": 0},
        "orchestrator_workers_serial (hosts the playbook upgrades at a time) must be a number of at least 1",
    ),
    "endpoint host that does not resolve": (
        {"orchestrator_workers_redis_host": "no-such-redis.invalid"},
        "These endpoint hosts do not resolve on localhost: no-such-redis.invalid.",
    ),
    "renamed variable still set": (
        {"orchestrator_workers_health_check_interval": 30},
        "orchestrator_workers_health_check_interval was renamed to orchestrator_workers_reclaim_interval_seconds",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_setting_fails_naming_it_and_changes_nothing(tmp_path: Path, case: str) -> None:
    settings, message = BAD[case]
    result, app_dir = run_preflight(tmp_path, **settings)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    counts = recap(result)
    assert counts["failed"] == 1
    assert counts["changed"] == 0
    assert not app_dir.exists()


def test_local_storage_refused_on_two_hosts(tmp_path: Path) -> None:
    """LightRAG's local storages allow one writer: a play of two worker hosts on them fails
    naming the variable, before anything changes; on PostgreSQL storages it passes."""
    result, app_dir = run_preflight(tmp_path, hosts=("localhost", "second-worker"))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    assert "orchestrator_workers_lightrag_storage is 'local' but this play deploys 2 worker hosts" in output
    assert recap(result)["changed"] == 0
    assert not app_dir.exists()

    result, _ = run_preflight(
        tmp_path, hosts=("localhost", "second-worker"), orchestrator_workers_lightrag_storage="postgres"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_valid_sentinels_pass(tmp_path: Path) -> None:
    """Names, IPv4 and bracketed IPv6 sentinels pass (each must resolve on the host)."""
    result, _ = run_preflight(
        tmp_path,
        orchestrator_workers_redis_sentinels=["localhost:26379", "10.0.0.2:26379", "[fd00::3]:26379"],
        orchestrator_workers_redis_sentinel_master="shield",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
