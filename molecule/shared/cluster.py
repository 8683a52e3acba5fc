"""Helpers of the multi-host scenario's tests (molecule/cluster/tests/).

The scenario has four hosts: the data host (group orchestrator_data: Redis
master, PostgreSQL, the LLM stand-in, a Sentinel), the replica host (group
redis_replicas: a Redis replica, a Sentinel) and two workers (group
orchestrator_workers, sorted by name; each runs a Sentinel).
molecule/cluster/tests/conftest.py turns these into fixtures: `data_host`,
`replica_host`, `worker_1`, `worker_2`, `workers` (testinfra hosts,
commands run inside that container) and `docker` (the controller's docker
CLI, limited to the scenario's own containers).

Tests that take only these fixtures run once, not once per host (testinfra
parametrizes only tests that take its `host` fixture).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import pytest
import testinfra

DATA_GROUP = "orchestrator_data"
WORKERS_GROUP = "orchestrator_workers"
REDIS_GROUP = "orchestrator_redis"
REPLICAS_GROUP = "redis_replicas"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
DOCKER = "/usr/bin/docker"


def inventory(config: pytest.Config) -> str:
    """The scenario's inventory (Molecule passes --ansible-inventory; MOLECULE_INVENTORY_FILE otherwise)."""
    path = config.option.ansible_inventory or os.environ.get("MOLECULE_INVENTORY_FILE", "")
    assert path, "no Ansible inventory: run the tests through molecule verify"
    return str(path)


def hosts_of(group: str, inventory_path: str) -> list[Any]:
    """testinfra hosts of an inventory group, sorted by name."""
    hosts = testinfra.get_hosts([f"ansible://{group}"], ansible_inventory=inventory_path)
    assert hosts, f"group {group} has no host in {inventory_path}"
    return sorted(hosts, key=name)


def name(host: Any) -> str:
    """The inventory name of a testinfra host (= its container's name in this scenario)."""
    return str(host.backend.get_hostname())


class Docker:
    """The docker CLI on the controller, for this scenario's containers only.

    Every method takes the inventory name of a host (= the container name);
    names outside the scenario are refused, so a test cannot touch another
    run's containers.
    """

    def __init__(self, containers: Sequence[str], binary: str = DOCKER) -> None:
        self.containers = tuple(containers)
        self.binary = binary

    def container(self, host_name: str) -> str:
        assert host_name in self.containers, f"{host_name} is not a container of this scenario {self.containers}"
        return host_name

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`docker ARGS...` as given; name containers through container() or the methods below."""
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"docker {shlex.join(args)}: {result.stderr.strip()}"
        return result

    def kill(self, host_name: str, signal: str = "KILL") -> None:
        self.run("kill", "--signal", signal, self.container(host_name))

    def stop(self, host_name: str, timeout: int = 30) -> None:
        self.run("stop", "--time", str(timeout), self.container(host_name), timeout=timeout + 60)

    def start(self, host_name: str, wait_systemd: bool = True, deadline: float = 120) -> None:
        """Start a stopped or killed container; by default wait until its systemd has booted."""
        self.run("start", self.container(host_name))
        if wait_systemd:
            self.wait_booted(host_name, deadline)

    def pause(self, host_name: str) -> None:
        self.run("pause", self.container(host_name))

    def unpause(self, host_name: str) -> None:
        self.run("unpause", self.container(host_name))

    def state(self, host_name: str) -> str:
        """running, exited, paused, ... (docker's State.Status)."""
        return self.run("inspect", "--format", "{{.State.Status}}", self.container(host_name)).stdout.strip()

    def exec(self, host_name: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("exec", self.container(host_name), *command, check=check)

    def wait_booted(self, host_name: str, deadline: float = 120) -> str:
        """Wait until systemd in the container is running (or degraded); return its state."""
        end = time.monotonic() + deadline
        state = ""
        while time.monotonic() < end:
            result = self.exec(host_name, "systemctl", "is-system-running", check=False)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(1)
        pytest.fail(f"systemd in {host_name} did not boot within {deadline}s (last state: {state!r})")


def redis_cli(host: Any, password: str, *args: str, server: str = "127.0.0.1", port: int = REDIS_PORT) -> str:
    """redis-cli inside `host` against server:port (the password through the environment)."""
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    command = f"{env}redis-cli --raw --no-auth-warning -h {shlex.quote(server)} -p {port} "
    return str(host.check_output(command + " ".join(shlex.quote(a) for a in args)))


def sentinel(host: Any, password: str, *args: str) -> str:
    """A Sentinel command to the Sentinel on `host`."""
    return redis_cli(host, password, "SENTINEL", *args, port=SENTINEL_PORT)


def current_master(host: Any, password: str, master_name: str) -> tuple[str, int]:
    """The master the Sentinel on `host` reports: (name or address, port)."""
    lines = sentinel(host, password, "get-master-addr-by-name", master_name).split()
    assert len(lines) == 2, lines
    return lines[0], int(lines[1])


def hostname(host: Any) -> str:
    return str(host.check_output("hostname")).strip()


def consumers(redis_host: Any, password: str, stream: str, group: str, worker: Any) -> list[str]:
    """`worker`'s consumers in the group, read from Redis on `redis_host`, sorted: <hostname>-worker-<n>."""
    names = redis_cli(redis_host, password, "XINFO", "CONSUMERS", stream, group).splitlines()
    prefix = hostname(worker) + "-worker-"
    return sorted(n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit())
