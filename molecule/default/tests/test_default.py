"""Verify the default scenario: shield-orchestrator deployed by the real playbook.

Everything runs inside the container (curl, redis-cli, psql, systemctl) through
testinfra's host fixture; the test never talks to the network itself.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

import helpers
import pytest
from helpers import BASE, GROUP, PORT, SERVICE, STREAM, USER, main_pid, psql, show

# The package's tree as the repository holds it (build_info needs nothing but the standard library).
TEMPLATE_ROOT = Path(__file__).resolve().parents[3] / "roles" / "orchestrator_workers" / "templates"
sys.path.insert(0, str(TEMPLATE_ROOT))
from shield_orchestrator import __version__ as PACKAGE_VERSION  # noqa: E402
from shield_orchestrator.build_info import tree_files  # noqa: E402

TEMPLATE_TREE = TEMPLATE_ROOT / "shield_orchestrator"

SCENARIO_VARS = helpers.scenario_vars(__file__)
UNIT_FILE = f"/etc/systemd/system/{SERVICE}.service"
TOKEN = SCENARIO_VARS["orchestrator_workers_api_token"]
# The default (admin) user, for the tests' own look-ups.
REDIS_PASSWORD = SCENARIO_VARS.get("redis_server_password") or ""
POOL_SIZE = int(SCENARIO_VARS["orchestrator_workers_pool_size"])
STATE_DIR = "/var/lib/shield-orchestrator"
RELEASES, CURRENT = helpers.RELEASES, helpers.CURRENT

# Hardening the unit must carry, as `systemctl show` prints it.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictNamespaces": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0027",
    "KillMode": "mixed",
    "KillSignal": "15",
    "Restart": "on-failure",
    "RestartUSec": "5s",
    "RestartPreventExitStatus": "2",
    "TimeoutStopUSec": "1min 30s",
    "User": USER,
    "Group": USER,
    "StateDirectory": "shield-orchestrator",
    "WorkingDirectory": STATE_DIR,
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RemoveIPC": "yes",
    "PrivateMounts": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "PrivateUsers": "no",  # the containers refuse it (orchestrator_workers_unit_private_users)
}
# The highest `systemd-analyze security` exposure the unit may have (issue 12).
MAX_EXPOSURE = 2.0

# Entity names the deterministic LLM stand-in extracts from the test texts
# (capitalised names), checked afterwards in LightRAG's graph.
ENTITIES = [
    "Aldermere",
    "Brightwater",
    "Corvane",
    "Dunmore",
    "Elsworth",
    "Fairhaven",
    "Glenrock",
    "Harrowgate",
    "Ivydale",
    "Juniper",
    "Kestrel",
    "Larkspur",
]


# --- helpers ------------------------------------------------------------------


def api(host, method: str, path: str, body: object | None = None, timeout: int = 30) -> tuple[int, object]:
    return helpers.api(host, TOKEN, method, path, body, timeout)


def chunks_for(tag: str, count: int) -> list[dict[str, object]]:
    """`count` chunks, each naming two entities; unique per call (LightRAG skips duplicates)."""
    chunks = []
    for i in range(count):
        a, b = ENTITIES[i % len(ENTITIES)], ENTITIES[(i + 1) % len(ENTITIES)]
        text = (
            f"{a} is a harbour town that trades timber with {b}. "
            f"The council of {a} met the guild of {b} in the year {1800 + i}. "
            f"Reference {tag}-{i}."
        )
        chunks.append({"text": text, "source_uri": f"molecule://{tag}/{i}", "metadata": {"index": i}})
    return chunks


def submit(host, tag: str, count: int) -> dict:
    return helpers.submit(host, TOKEN, chunks_for(tag, count), {"test": tag})


def wait_job(host, job_id: str) -> dict:
    return helpers.wait_job(host, TOKEN, job_id)


def redis_cli(host, *args: str) -> str:
    return helpers.redis_cli(host, REDIS_PASSWORD, *args)


# --- the unit -------------------------------------------------------------------


def test_unit_active_and_enabled(host):
    svc = host.service(SERVICE)
    assert svc.is_running
    assert svc.is_enabled


def test_main_process_runs_as_service_user(host):
    pid = main_pid(host)
    assert pid > 0
    assert host.check_output(f"ps -o user= -p {pid}").strip() == USER


@pytest.mark.parametrize(("prop", "expected"), sorted(HARDENING.items()))
def test_unit_property(host, prop, expected):
    assert show(host, prop)[prop] == expected


def test_unit_address_families(host):
    families = set(show(host, "RestrictAddressFamilies")["RestrictAddressFamilies"].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_hardening_applies_to_the_process(host):
    """The kernel view of the running process: no capabilities, no_new_privs, seccomp."""
    status = host.file(f"/proc/{main_pid(host)}/status").content_string
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapBnd"].strip(), 16) == 0
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["Seccomp"].strip() == "2"  # filter mode: SystemCallArchitectures etc.


def test_unit_exposure_at_most_2(host):
    """`systemd-analyze security` rates the running unit; above MAX_EXPOSURE fails."""
    result = host.run(f"systemd-analyze security {SERVICE} --no-pager")
    assert result.rc == 0, result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(SERVICE)}\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_system_call_filter(host):
    props = show(host, "SystemCallFilter", "SystemCallErrorNumber")
    allowed = set(props["SystemCallFilter"].split())
    # An allow list (@system-service) without the privileged and resource calls.
    assert "read" in allowed and "openat" in allowed
    for name in ("mount", "reboot", "setuid", "setrlimit", "sched_setaffinity", "kexec_load", "swapon"):
        assert name not in allowed, name
    assert props["SystemCallErrorNumber"] in ("1", "EPERM")


def test_unit_ip_allow_list(host):
    """IP traffic denied but for loopback and the configured endpoints (all on loopback here)."""
    props = show(host, "IPAddressDeny", "IPAddressAllow")
    assert set(props["IPAddressDeny"].split()) == {"0.0.0.0/0", "::/0"}
    allow = props["IPAddressAllow"].split()
    assert "127.0.0.0/8" in allow and "::1/128" in allow
    unit = host.file(UNIT_FILE).content_string
    assert re.search(r"^IPAddressDeny=any$", unit, re.M)


def test_ip_filtering_is_enforced_on_this_host(host):
    """systemd's IP filter (cgroup BPF) works in these containers: a transient unit with
    IPAddressDeny=any cannot reach /health on loopback, the same with localhost allowed can."""
    probe = f"curl -sS -m 3 -o /dev/null {BASE}/health"
    denied = host.run(f"systemd-run --wait --pipe --quiet -p IPAddressDeny=any {probe}")
    assert denied.rc != 0, denied.stdout
    allowed = host.run(f"systemd-run --wait --pipe --quiet -p IPAddressDeny=any -p IPAddressAllow=localhost {probe}")
    assert allowed.rc == 0, allowed.stdout + allowed.stderr


def test_unit_proc_is_private_to_the_service(host):
    """ProtectProc=invisible + ProcSubset=pid as the process sees /proc."""
    mounts = host.file(f"/proc/{main_pid(host)}/mountinfo").content_string
    proc = [line for line in mounts.splitlines() if " /proc " in line and " - proc " in line]
    assert proc, mounts
    assert "hidepid=invisible" in proc[-1] and "subset=pid" in proc[-1], proc


def test_unit_timeout_stop_is_graceful_timeout_plus_30(host):
    unit = host.file(UNIT_FILE).content_string
    assert re.search(r"^TimeoutStopSec=90$", unit, re.M)
    # The release's own paths, never the `current` link: a running process keeps
    # importing from the release it started with (issue 22).
    release = host.file(CURRENT).linked_to.rsplit("/", 1)[-1]
    assert f"ExecStart={RELEASES}/{release}/venv/bin/python -m shield_orchestrator serve" in unit
    assert "EnvironmentFile=/etc/shield-orchestrator/orchestrator.env" in unit
    assert f"Environment=PYTHONPATH={RELEASES}/{release}/src" in unit


def test_systemd_analyze_verify_clean(host):
    result = host.run(f"systemd-analyze verify {UNIT_FILE}")
    assert result.rc == 0, result.stderr
    ours = [line for line in (result.stdout + result.stderr).splitlines() if SERVICE in line]
    assert ours == []


def test_environment_file_holds_only_secrets(host):
    env = host.file("/etc/shield-orchestrator/orchestrator.env")
    # root's file, readable by the service's group: the service cannot rewrite its secrets.
    assert env.user == "root"
    assert env.group == USER
    assert env.mode == 0o640
    names = {
        line.split("=", 1)[0]
        for line in host.check_output("cat /etc/shield-orchestrator/orchestrator.env").splitlines()
        if line and not line.startswith("#")
    }
    assert names == {
        "ORCHESTRATOR_API_TOKEN",
        "ORCHESTRATOR_REDIS_PASSWORD",
        "ORCHESTRATOR_POSTGRES_PASSWORD",
        "ORCHESTRATOR_LLM_API_KEY",
        "ORCHESTRATOR_EMBEDDING_API_KEY",
    }


def test_no_secret_value_in_the_journal_or_the_auth_log(host):
    """After a deploy, its idempotence run, a check run and the validate phase
    (inspect-queue as the service user through sudo): no secret value was logged."""
    secrets = {
        name: SCENARIO_VARS[name]
        for name in (
            "orchestrator_workers_api_token",
            "orchestrator_workers_redis_password",
            "orchestrator_workers_postgres_password",
        )
    }
    journal = host.check_output("journalctl --no-pager -o cat")
    assert "COMMAND=" in journal, "sudo's log lines reach the journal (or this test proves nothing)"
    auth = host.run("cat /var/log/auth.log 2>/dev/null").stdout
    for name, value in secrets.items():
        assert value and value not in journal, f"{name}'s value is in the journal"
        assert value not in auth, f"{name}'s value is in the auth log"


def test_service_user_has_no_login(host):
    user = host.user(USER)
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert user.home in (STATE_DIR, "/opt/hx-citadel-shield/orchestrator")


def test_code_is_root_owned_and_read_only(host):
    pkg = f"{CURRENT}/src/shield_orchestrator"
    files = host.check_output(f"find {pkg} -type f -not -path '*/__pycache__/*' -printf '%u %m %P\\n'").splitlines()
    assert any(line.endswith(" workers/outcome.py") for line in files), files
    assert all(line.startswith("root 644 ") for line in files), files
    dirs = host.check_output(f"find {pkg} -type d -not -name __pycache__ -printf '%u %m %P\\n'").splitlines()
    assert all(line.startswith("root 755 ") for line in dirs), dirs


def test_the_deployed_tree_is_the_repository_tree(host):
    """Issue 18: the host holds every file of the template tree at the same path
    (deployed.py rendered), nothing else, and the service reports its hash."""
    pkg = f"{CURRENT}/src/shield_orchestrator"
    on_host = sorted(
        host.check_output(
            f"find {pkg} -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -printf '%P\\n'"
        ).splitlines()
    )
    assert on_host == tree_files(TEMPLATE_TREE)
    recorded = host.file(f"{pkg}.sha256").content_string.strip()
    body = json.loads(host.check_output(f"curl -sS -m 10 {BASE}/health"))
    assert body["tree_sha256"] == recorded
    assert body["version"] == PACKAGE_VERSION
    assert body["release"] == host.file(CURRENT).linked_to.rsplit("/", 1)[-1]


# --- least privilege: the service's own credentials ---------------------------------

APP_REDIS_USER = SCENARIO_VARS["orchestrator_workers_redis_username"]
PG_USER = SCENARIO_VARS["orchestrator_workers_postgres_user"]


def service_redis(host, *args: str):
    return helpers.service_redis(host, APP_REDIS_USER, *args)


def service_psql(host, sql: str):
    """psql as the service's PostgreSQL role over TCP; the password through PGPASSWORD."""
    return helpers.as_service(
        host,
        f'PGPASSWORD="$ORCHESTRATOR_POSTGRES_PASSWORD" psql -h 127.0.0.1 -U {PG_USER} -d {helpers.PG_DB} '
        f"-tAX -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -c {shlex.quote(sql)}",
    )


def test_service_connects_to_redis_as_its_acl_user(host):
    """Every connection but this test's own (CLIENT LIST) is the ACL user's, not the default user's."""
    clients = [line for line in redis_cli(host, "CLIENT", "LIST").splitlines() if "cmd=client|list" not in line]
    users = {match.group(1) for line in clients if (match := re.search(r"\buser=(\S+)", line))}
    assert users == {APP_REDIS_USER}, clients


def test_service_redis_user_may_use_its_keys(host):
    key = f"shield:acl-test:{uuid.uuid4().hex[:8]}"
    result = service_redis(host, "SET", key, "1", "EX", "60")
    assert result.stdout.strip() == "OK", result.stdout + result.stderr
    assert service_redis(host, "DEL", key).stdout.strip() == "1"
    assert service_redis(host, "XLEN", STREAM).rc == 0


@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "GET", "*"],
        ["KEYS", "*"],
        ["DEBUG", "SLEEP", "0"],
        ["INFO"],
        ["SHUTDOWN", "NOSAVE"],
        ["ACL", "LIST"],
        ["SET", "other:acl-test", "1"],
        ["GET", "other:acl-test"],
    ],
    ids=lambda c: " ".join(c),
)
def test_service_redis_user_is_refused(host, command):
    """Commands and keys outside the service's own are refused to its user: tried with
    its credentials (DEBUG is refused before the ACL check while enable-debug-command
    is off, the default), and ACL DRYRUN names the missing permission."""
    dry = redis_cli(host, "ACL", "DRYRUN", APP_REDIS_USER, *command)
    assert "no permissions" in dry, (command, dry)
    if command[0] != "SHUTDOWN":  # not tried for real: were it allowed, Redis would be gone
        result = service_redis(host, *command)
        out = result.stdout + result.stderr
        assert "NOPERM" in out or "DEBUG command not allowed" in out, (command, out)
    assert redis_cli(host, "PING").strip() == "PONG"  # and Redis still runs


def test_service_postgresql_role_attributes(host):
    row = psql(
        host,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "  # noqa: S608
        f"FROM pg_roles WHERE rolname = '{PG_USER}'",
    )
    assert row == "f|f|f|f|f"


def test_service_postgresql_role_owns_its_tables_only(host):
    owners = psql(host, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").split()
    assert owners == [PG_USER]
    # Its tables live in public (their TOAST tables in pg_toast); nothing of it elsewhere.
    owned_elsewhere = psql(
        host,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "  # noqa: S608
        f"WHERE pg_get_userbyid(c.relowner) = '{PG_USER}' AND n.nspname NOT IN ('public', 'pg_toast')",
    )
    assert owned_elsewhere == "0"
    assert service_psql(host, "SELECT count(*) FROM job_status").rc == 0


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE DATABASE acl_test",
        "CREATE ROLE acl_test",
        f"ALTER ROLE {PG_USER} SUPERUSER",
        f"ALTER ROLE {PG_USER} CREATEDB",
        "SELECT rolpassword FROM pg_authid",
        "CREATE EXTENSION IF NOT EXISTS pageinspect",
        "COPY job_status TO PROGRAM 'true'",
    ],
)
def test_service_postgresql_role_is_refused(host, sql):
    """Refused with SQLSTATE 42501 (insufficient_privilege), PostgreSQL 15 and 17 alike."""
    result = service_psql(host, sql)
    assert result.rc != 0, result.stdout
    assert "ERROR:  42501:" in result.stderr, result.stderr


# --- the running service ----------------------------------------------------------


def test_port_listening(host):
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_pool_start_logged(host):
    journal = host.check_output(f"journalctl -u {SERVICE} --no-pager -o cat")
    started = [line for line in journal.splitlines() if "worker pool started" in line]
    assert started, journal[-3000:]
    assert f"workers={POOL_SIZE}" in started[-1]


def test_health(host):
    out = host.check_output(f"curl -sS -m 10 {BASE}/health")
    body = json.loads(out)
    assert body["status"] == "healthy"


def test_api_requires_token(host):
    out = host.check_output(f"curl -sS -m 10 -o /dev/null -w '%{{http_code}}' {BASE}/jobs")
    assert out.strip() == "401"


def test_consumer_group_and_consumers(host):
    groups = redis_cli(host, "XINFO", "GROUPS", STREAM).splitlines()
    assert GROUP in groups
    assert helpers.my_consumers(host, REDIS_PASSWORD) == helpers.expected_consumers(host, POOL_SIZE)


# --- end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def completed_job(host):
    tag = f"e2e-{uuid.uuid4().hex[:8]}"
    accepted = submit(host, tag, 12)
    job = wait_job(host, accepted["job_id"])
    return {"tag": tag, "accepted": accepted, "job": job}


def test_job_completes(completed_job):
    job = completed_job["job"]
    assert job["status"] == "completed", job
    assert job["chunks_total"] == 12
    assert job["chunks_processed"] == 12
    assert job["chunks_failed"] == 0
    assert job["percent_complete"] == 100


def test_job_listed(host, completed_job):
    job_id = completed_job["accepted"]["job_id"]
    status, body = api(host, "GET", "/jobs?limit=100")
    assert status == 200, body
    assert job_id in [j["job_id"] for j in body["jobs"]]


def test_job_row_in_postgresql(host, completed_job):
    job_id = str(uuid.UUID(completed_job["accepted"]["job_id"]))  # validated: safe in SQL below
    # The Redis -> PostgreSQL sync runs every pg_sync_interval; allow a moment.
    for _ in range(30):
        row = psql(host, f"SELECT status, chunks_processed FROM job_status WHERE job_id = '{job_id}'")  # noqa: S608
        if row == "completed|12":
            break
        time.sleep(1)
    assert row == "completed|12"


def test_entities_in_lightrag_graph(host, completed_job):
    graphs = host.check_output(f"find {STATE_DIR}/lightrag -name '*.graphml'").split()
    assert graphs, "no graphml file under the LightRAG working directory"
    quoted = " ".join(shlex.quote(g) for g in graphs)
    for name in ENTITIES[:4]:
        assert host.run(f"grep -qi {shlex.quote(name)} {quoted}").rc == 0, name


def test_sse_events_in_order(host):
    """queued -> started -> completed for a job, as an SSE client sees them."""
    out = host.check_output("mktemp").strip()  # inside the container
    auth = shlex.quote("Authorization: Bearer " + TOKEN)
    pid = host.check_output(
        f"nohup timeout 120 curl -sN -H {auth} '{BASE}/events/stream?event_types="
        f"ingestion.queued,ingestion.started,ingestion.completed,ingestion.failed' > {out} 2>&1 < /dev/null & echo $!"
    ).strip()
    # The client is connected when the stream's first comment arrived.
    for _ in range(30):
        if host.run(f"grep -q 'connected' {out}").rc == 0:
            break
        time.sleep(0.5)
    accepted = submit(host, f"sse-{uuid.uuid4().hex[:8]}", 3)
    job = wait_job(host, accepted["job_id"])
    assert job["status"] == "completed", job
    seen: list[str] = []
    for _ in range(20):
        seen = []
        for block in host.check_output(f"cat {out}").split("\n\n"):
            event = re.search(r"^event: (.+)$", block, re.M)
            data = re.search(r"^data: (.+)$", block, re.M)
            if event and data and json.loads(data.group(1)).get("job_id") == accepted["job_id"]:
                seen.append(event.group(1))
        if "ingestion.completed" in seen:
            break
        time.sleep(0.5)
    host.run(f"kill {int(pid)}; rm -f {out}")
    assert seen and seen[0] == "ingestion.queued", seen
    assert "ingestion.started" in seen, seen
    assert seen.index("ingestion.queued") < seen.index("ingestion.started") < seen.index("ingestion.completed")


def test_restart_mid_job_loses_no_chunk(host):
    """systemctl restart while a job runs: the job still completes with every chunk."""
    total = 120
    accepted = submit(host, f"restart-{uuid.uuid4().hex[:8]}", total)
    job_id = accepted["job_id"]
    # Restart once the workers have started on the job.
    for _ in range(100):
        status, body = api(host, "GET", f"/jobs/{job_id}", timeout=10)
        if status == 200 and body["status"] != "queued":
            break
        time.sleep(0.2)
    before = body if status == 200 else {}
    host.check_output(f"systemctl restart {SERVICE}")
    job = wait_job(host, job_id)
    assert job["status"] == "completed", job
    assert job["chunks_total"] == total
    assert job["chunks_processed"] == total, job
    assert job["chunks_failed"] == 0, job
    # The restart must have hit the job while it ran, or the test proved nothing.
    assert before.get("status") != "completed", (before, "job finished before the restart: raise `total`")
    assert host.service(SERVICE).is_running
