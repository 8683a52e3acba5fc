"""Fixtures of the multi-host scenario: one testinfra host per role and the
docker CLI for the scenario's own containers (helpers in molecule/shared/cluster.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cluster
import pytest

# Figures the tests measure (take-over and failover times, rates), printed in
# the terminal summary and written to the scenario's ephemeral directory.
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="session")
def inventory_path(request: pytest.FixtureRequest) -> str:
    return cluster.inventory(request.config)


@pytest.fixture(scope="session")
def data_host(inventory_path: str) -> Any:
    """The data host: Redis master (at first), PostgreSQL, the LLM stand-in, a Sentinel."""
    (host,) = cluster.hosts_of(cluster.DATA_GROUP, inventory_path)
    return host


@pytest.fixture(scope="session")
def replica_host(inventory_path: str) -> Any:
    """The Redis replica (Debian 13, like its master) and a Sentinel: what a failover promotes."""
    (host,) = cluster.hosts_of(cluster.REPLICAS_GROUP, inventory_path)
    return host


@pytest.fixture(scope="session")
def workers(inventory_path: str) -> list[Any]:
    """The worker hosts, sorted by name (worker-1, worker-2)."""
    hosts = cluster.hosts_of(cluster.WORKERS_GROUP, inventory_path)
    assert len(hosts) == 2, [cluster.name(h) for h in hosts]
    return hosts


@pytest.fixture(scope="session")
def worker_1(workers: list[Any]) -> Any:
    """The first worker."""
    return workers[0]


@pytest.fixture(scope="session")
def worker_2(workers: list[Any]) -> Any:
    return workers[1]


@pytest.fixture(scope="session")
def docker(inventory_path: str) -> cluster.Docker:
    """docker on the controller, limited to this scenario's containers (by inventory name)."""
    names = [cluster.name(h) for h in cluster.hosts_of("all", inventory_path)]
    return cluster.Docker(names)


@pytest.fixture(scope="session")
def figures() -> dict[str, object]:
    """Name -> measured value; a test records what it measured here."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("cluster figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {value}")
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if ephemeral:
        (Path(ephemeral) / "figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
