"""The data services' preflights refuse what cannot work, naming the variable.

Runs the real playbooks/data-services.yml against localhost (connection local,
no become), limited to the roles' preflights: no container, no network. The
Debian release is given as a fact override, so the controller stands in for
a Debian 12 or 13 host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.role.test_preflight import PYTHON, REPO, ansible_playbook

PLAYBOOK = REPO / "playbooks" / "data-services.yml"


def run(tmp_path: Path, release: str, tags: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    host = {"ansible_connection": "local", "ansible_python_interpreter": PYTHON}
    inventory = {"all": {"children": {"orchestrator_data": {"hosts": {"localhost": host}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    values = {
        "ansible_become": False,
        "ansible_service_mgr": "systemd",
        "ansible_distribution": "Debian",
        "ansible_distribution_major_version": release,
        "postgresql_server_db_password": "test-only-password",
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
    return subprocess.run(
        [
            ansible_playbook(),
            "--inventory",
            str(tmp_path / "hosts.yml"),
            "--tags",
            tags,
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


def outcome(result: subprocess.CompletedProcess[str]) -> tuple[str, dict[str, int]]:
    output = " ".join((result.stdout + result.stderr).split())
    counts: dict[str, int] = {}
    for line in re.findall(r"^localhost\s*:\s*(.+)$", result.stdout, re.M):
        for key, value in re.findall(r"(\w+)=(\d+)", line):
            counts[key] = counts.get(key, 0) + int(value)
    return output, counts


def test_vector_refused_on_debian_12(tmp_path: Path) -> None:
    result = run(tmp_path, "12", "postgresql_server_preflight", postgresql_server_extensions=["vector"])
    output, counts = outcome(result)
    assert result.returncode != 0, output[-3000:]
    assert "postgresql_server_extensions lists 'vector', which Debian 12 does not provide" in output, output[-3000:]
    assert counts["changed"] == 0


def test_unknown_extension_refused(tmp_path: Path) -> None:
    result = run(tmp_path, "13", "postgresql_server_preflight", postgresql_server_extensions=["no_such_ext"])
    output, _ = outcome(result)
    assert result.returncode != 0, output[-3000:]
    assert "postgresql_server_extensions lists 'no_such_ext', which the role does not know" in output


def test_default_extensions_follow_the_release(tmp_path: Path) -> None:
    """Debian 12 defaults to no extension (no pgvector there), Debian 13 to vector: both pass."""
    for release in ("12", "13"):
        result = run(tmp_path, release, "postgresql_server_preflight")
        output, counts = outcome(result)
        assert result.returncode == 0, output[-3000:]
        assert counts["failed"] == 0 and counts["changed"] == 0


def test_redis_on_a_network_address_needs_the_password(tmp_path: Path) -> None:
    result = run(tmp_path, "12", "redis_server_preflight", redis_server_bind=["0.0.0.0"])
    output, counts = outcome(result)
    assert result.returncode != 0, output[-3000:]
    assert "include addresses other hosts reach (0.0.0.0) but redis_server_password is empty" in output
    assert counts["changed"] == 0


def test_sentinel_needs_its_master(tmp_path: Path) -> None:
    result = run(tmp_path, "12", "redis_server_preflight", redis_server_sentinel_enabled=True)
    output, _ = outcome(result)
    assert result.returncode != 0, output[-3000:]
    assert "redis_server_sentinel_enabled needs redis_server_sentinel_master_host" in output
