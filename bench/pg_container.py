"""PostgreSQL 17 with pgvector, in a container, for W6 on LightRAG's PostgreSQL storages.

This host runs Debian 12, which packages no pgvector; Debian 13 packages
postgresql-17-pgvector (the version the role postgresql_server installs on the
cluster's data host). The image is built once from the project's own Debian 13
base image (`scripts/build-base-image.sh trixie`, `make images`) by installing
those two packages from the Debian mirror, and kept as IMAGE. Each benchmark
starts one container of it: a fresh cluster (initdb, SCRAM passwords) on a port
published to 127.0.0.1 only, removed by its name when the benchmark ends.

Fixtures are databases: a graph is built once in `w6_build`, copied to
`w6_docs_<n>` after each size, and every run gets its own copy of one of them
(CREATE DATABASE ... TEMPLATE, a file copy).

Not named pgvector.py: bench/ is the first entry of sys.path for the scripts in it,
and LightRAG imports the `pgvector` package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass

from infra import PG_PASSWORD, BenchError, free_port, log

IMAGE = "shield-bench-pgvector:17"
BASE_IMAGE = "shield-systemd:trixie"
PACKAGES = ("postgresql-17", "postgresql-17-pgvector")
BIN = "/usr/lib/postgresql/17/bin"
DATA = "/var/lib/postgresql/bench"
EMPTY = "w6_docs_0"  # the vector extension and nothing else: the template of a run on an empty graph

# Runs as root in the container: a new cluster, then the server as user postgres.
START = f"""set -eu
install -d -o postgres -g postgres -m 700 {DATA}
printf '%s\\n' "$BENCH_PG_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
setpriv --reuid=postgres --regid=postgres --init-groups \\
  {BIN}/initdb -D {DATA} -U postgres -A scram-sha-256 --pwfile=/tmp/pw >/dev/null
rm -f /tmp/pw
echo 'host all all 0.0.0.0/0 scram-sha-256' >> {DATA}/pg_hba.conf
exec setpriv --reuid=postgres --regid=postgres --init-groups \\
  {BIN}/postgres -D {DATA} -c listen_addresses='*' -c max_connections=200
"""


def _name(value: str) -> str:
    """A database or workspace name as the harness makes them; anything else is refused
    (they are spliced into SQL, which psql -c cannot bind)."""
    if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
        raise BenchError(f"not a plain SQL name: {value!r}")
    return value


def docker() -> str:
    path = shutil.which("docker")
    if path is None:
        raise BenchError("W6 on PostgreSQL needs Docker (make images installs and starts it)")
    return path


def _run(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([docker(), *argv], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise BenchError(f"docker {' '.join(argv[:2])}: {done.stderr.strip()[-600:]}")
    return done


def ensure_image() -> None:
    """IMAGE, built from BASE_IMAGE when it is not there yet (about a minute, once)."""
    if _run("image", "inspect", IMAGE, check=False).returncode == 0:
        return
    if _run("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        raise BenchError(f"{BASE_IMAGE} is missing: build it with `make images` (scripts/build-base-image.sh trixie)")
    name = f"shield-bench-pgvector-build-{uuid.uuid4().hex[:8]}"
    log(f"W6 on PostgreSQL: building {IMAGE} from {BASE_IMAGE} ({', '.join(PACKAGES)} from the Debian mirror)")
    install = (
        "set -eu; export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null; "
        f"apt-get install -y -q --no-install-recommends {' '.join(PACKAGES)} >/dev/null; "
        "apt-get clean; rm -rf /var/lib/apt/lists/*"
    )
    try:
        _run("run", "--name", name, "--entrypoint", "/bin/sh", BASE_IMAGE, "-c", install, timeout=900)
        _run("commit", "--change", 'CMD ["/bin/sh"]', name, IMAGE)
    finally:
        _run("rm", "-f", name, check=False)


@dataclass
class PgvectorServer:
    """One container of IMAGE: PostgreSQL 17 + pgvector on 127.0.0.1:port, superuser postgres."""

    name: str
    port: int
    user: str = "postgres"
    password: str = PG_PASSWORD

    @classmethod
    def start(cls) -> PgvectorServer:
        ensure_image()
        name = f"shield-bench-pgvector-{uuid.uuid4().hex[:8]}"
        port = free_port()
        _run(
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            f"127.0.0.1:{port}:5432",
            "--env",
            f"BENCH_PG_PASSWORD={PG_PASSWORD}",
            "--shm-size",
            "256m",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            START,
        )
        server = cls(name, port)
        try:
            server._wait_ready()
            server.sql(f"CREATE DATABASE {EMPTY}")
            server.sql("CREATE EXTENSION vector", database=EMPTY)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            probe = _run("exec", self.name, f"{BIN}/pg_isready", "-h", "127.0.0.1", "-U", "postgres", check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = _run("logs", "--tail", "20", self.name, check=False)
                raise BenchError(f"{self.name}: PostgreSQL not ready in {within:.0f}s: {logs.stdout}{logs.stderr}")
            time.sleep(0.5)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql in the container (TCP, the password: what a client does)."""
        done = _run(
            "exec",
            "--env",
            f"PGPASSWORD={self.password}",
            self.name,
            f"{BIN}/psql",
            "-h",
            "127.0.0.1",
            "-U",
            self.user,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            statement,
            timeout=600,
        )
        return done.stdout.strip()

    def copy(self, template: str, database: str) -> None:
        """A new database, a file copy of `template` (which nobody may be connected to)."""
        for name in (template, database):
            _name(name)
        self.sql(f"DROP DATABASE IF EXISTS {database}")
        self.sql(f"CREATE DATABASE {database} TEMPLATE {template} STRATEGY FILE_COPY")

    def doc_count(self, database: str, workspace: str) -> int:
        """Documents in a LightRAG workspace's doc-status table (0 when LightRAG never ran there)."""
        table = self.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'lightrag_doc_status'", _name(database))
        if table != "1":
            return 0
        query = f"SELECT count(*) FROM lightrag_doc_status WHERE workspace = '{_name(workspace)}'"  # noqa: S608 - _name
        return int(self.sql(query, database))

    def lightrag_env(self, database: str, workspace: str) -> dict[str, str]:
        """LightRAG's PostgreSQL storages read their connection from the environment."""
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DATABASE": database,
            "POSTGRES_WORKSPACE": workspace,
            "POSTGRES_MAX_CONNECTIONS": "10",  # what the service gives LightRAG
        }

    def stop(self) -> None:
        _run("rm", "--force", self.name, check=False)
