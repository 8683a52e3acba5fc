"""What the playbooks set up across the four hosts: who listens where, the
replica in sync with the master, the four Sentinels agreeing on the master and
requiring the password, and the API on each worker."""

from __future__ import annotations

import ipaddress
import time

import cluster
import helpers

SCENARIO_VARS = helpers.scenario_vars(__file__)
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
REDIS_PASSWORD = SCENARIO_VARS["redis_server_password"]
MASTER_NAME = SCENARIO_VARS["redis_server_sentinel_master_name"]
SENTINEL_WAIT = 60  # seconds the Sentinels may need to find each other after a deploy


def test_data_host_listens_for_the_workers(data_host):
    """Redis, its Sentinel, PostgreSQL and the stand-in listen on the network, not loopback only."""
    for port in (6379, 26379, 5432, 18080):
        sockets = [s for s in data_host.socket.get_listening_sockets() if s.endswith(f":{port}")]
        assert any(not s.startswith(("tcp://127.", "tcp://::1")) for s in sockets), (port, sockets)


def test_api_answers_on_every_worker(workers):
    for worker in workers:
        status, body = helpers.api(worker, TOKEN, "GET", "/health")
        assert status == 200, (cluster.name(worker), body)


CODE_RECORD = "/opt/hx-citadel-shield/orchestrator/current/src/shield_orchestrator.sha256"


def test_every_worker_runs_the_same_code_the_role_recorded(workers):
    """Issue 18: each worker host reports the package's version and the hash of its
    code tree; the hosts agree, and each host's files are those the role rendered."""
    builds = {}
    for worker in workers:
        status, body = helpers.api(worker, TOKEN, "GET", "/health/detailed", timeout=10)
        assert status == 200, (cluster.name(worker), body)
        build = body["build"]
        assert build["intact"] is True, (cluster.name(worker), build)
        recorded = worker.file(CODE_RECORD).content_string.strip()
        assert build["tree_sha256"] == build["recorded_sha256"] == recorded, (cluster.name(worker), build)
        builds[cluster.name(worker)] = (build["version"], build["tree_sha256"])
    assert len(set(builds.values())) == 1, builds


def test_workers_run_no_redis_server(workers):
    """Debian 12's Redis 7.0 cannot replicate the data host's Redis 8.0: the workers hold Sentinels only."""
    for worker in workers:
        assert not worker.package("redis-server").is_installed, cluster.name(worker)
        assert worker.service("redis-sentinel").is_running, cluster.name(worker)


def test_replica_is_in_sync_with_the_master(data_host, replica_host):
    replication = cluster.redis_cli(replica_host, REDIS_PASSWORD, "INFO", "replication")
    assert "role:slave" in replication, replication
    assert f"master_host:{cluster.name(data_host)}" in replication, replication
    assert "master_link_status:up" in replication, replication


def test_sentinels_agree_on_the_master_and_see_each_other(data_host, replica_host, workers):
    sentinel_hosts = [data_host, replica_host, *workers]
    end = time.monotonic() + SENTINEL_WAIT
    while True:
        views = {}
        for host in sentinel_hosts:
            master = cluster.current_master(host, REDIS_PASSWORD, MASTER_NAME)
            # --raw flattens each entry into field/value lines, one "name" field per entry.
            others = cluster.sentinel(host, REDIS_PASSWORD, "sentinels", MASTER_NAME).splitlines().count("name")
            replicas = cluster.sentinel(host, REDIS_PASSWORD, "replicas", MASTER_NAME).splitlines().count("name")
            views[cluster.name(host)] = (master, others, replicas)
        if all(view == ((cluster.name(data_host), 6379), 3, 1) for view in views.values()):
            break
        assert time.monotonic() < end, views
        time.sleep(2)
    for host in sentinel_hosts:
        assert cluster.sentinel(host, REDIS_PASSWORD, "ckquorum", MASTER_NAME).startswith("OK"), cluster.name(host)


def test_sentinels_require_the_password(workers):
    for worker in workers:
        result = worker.run(f"redis-cli --raw -p {cluster.SENTINEL_PORT} SENTINEL masters")
        assert "NOAUTH" in result.stdout + result.stderr, (cluster.name(worker), result.stdout)


# --- least privilege across hosts ----------------------------------------------

APP_REDIS_USER = SCENARIO_VARS["redis_server_app_user"]


def test_service_acl_user_exists_on_master_and_replica(data_host, replica_host):
    """The replica holds the user too, so the service keeps its rights after a failover."""
    for host in (data_host, replica_host):
        acl = cluster.redis_cli(host, REDIS_PASSWORD, "ACL", "LIST")
        user = [line for line in acl.splitlines() if line.startswith(f"user {APP_REDIS_USER} ")]
        assert user and " on " in user[0] and "~shield:*" in user[0], (cluster.name(host), acl)


def test_service_user_from_a_worker(data_host, workers):
    """With the credentials of its environment file, a worker may use its keys on the
    master and ask every Sentinel for it, and nothing else."""
    master = cluster.name(data_host)
    worker = workers[0]
    used = helpers.service_redis(worker, APP_REDIS_USER, "EXISTS", "shield:acl-test", server=master)
    assert used.stdout.strip() == "0", (used.stdout, used.stderr)
    for command in (["FLUSHALL"], ["CONFIG", "GET", "*"], ["KEYS", "*"], ["DEBUG", "SLEEP", "0"]):
        result = helpers.service_redis(worker, APP_REDIS_USER, *command, server=master)
        out = result.stdout + result.stderr
        # DEBUG is refused before the ACL check while enable-debug-command is off (the default).
        assert "NOPERM" in out or "DEBUG command not allowed" in out, (command, out)
        dry = cluster.redis_cli(data_host, REDIS_PASSWORD, "ACL", "DRYRUN", APP_REDIS_USER, *command)
        assert "no permissions" in dry, (command, dry)
    for name in SCENARIO_VARS["orchestrator_workers_redis_sentinels"]:
        server, _, port = name.rpartition(":")
        asked = helpers.service_redis(
            worker, APP_REDIS_USER, "SENTINEL", "get-master-addr-by-name", MASTER_NAME, server=server, port=int(port)
        )
        assert len(asked.stdout.split()) == 2, (name, asked.stdout, asked.stderr)
        refused = helpers.service_redis(
            worker, APP_REDIS_USER, "SENTINEL", "ckquorum", MASTER_NAME, server=server, port=int(port)
        )
        assert "NOPERM" in refused.stdout + refused.stderr, (name, refused.stdout, refused.stderr)


def test_worker_units_allow_the_cluster_network(workers):
    """IPAddressDeny=any; the derived allow list holds the Docker network the hosts share."""
    for worker in workers:
        props = helpers.show(worker, "IPAddressDeny", "IPAddressAllow")
        assert set(props["IPAddressDeny"].split()) == {"0.0.0.0/0", "::/0"}, cluster.name(worker)
        # "2: eth0    inet 172.18.0.3/16 brd ..." -> 172.18.0.0/16
        address = worker.check_output("ip -o -4 addr show scope global").split()[3]
        network = str(ipaddress.ip_interface(address).network)
        assert network in props["IPAddressAllow"].split(), (cluster.name(worker), network, props)
