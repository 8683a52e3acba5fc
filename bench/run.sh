#!/usr/bin/env bash
# The shield-orchestrator benchmark in one command (make bench runs it).
#
#   bench/run.sh            full run: every workload, BENCH_ROUNDS rounds (default 3)
#   bench/run.sh --smoke    tiny sizes, 1 round (what bench/test_bench_smoke.py runs)
#   bench/run.sh --only w1,w4 --rounds 5
#
# Makes what it needs: .venv-bench-peers (harness + peer task queues, pinned in
# bench/requirements-peers.txt), .venv-bench-lightrag (lightrag-server, pinned in
# bench/requirements-lightrag-server.txt) and, if it is missing or incomplete, the
# service's .venv-service (role requirements + roles/orchestrator_workers/files/
# constraints.txt). Starts its own Redis and PostgreSQL on loopback ports, prints
# one table, writes bench/results/latest.json (smoke: bench/results/smoke.json).
# W6's graph fixtures are cached in .cache/bench-fixtures/ (built on first use).
# Environment: BENCH_ROUNDS, BENCH_REAL_ROUNDS, BENCH_ONLY, BENCH_SIZES, BENCH_PEERS,
# BENCH_CONTESTANTS, BENCH_LLM_CACHE, BENCH_CONCURRENCY, BENCH_SSE_RATE, BENCH_OUTPUT, BENCH_KEEP=1,
# BENCH_PYTHON, BENCH_SERVICE_PYTHON, BENCH_LIGHTRAG_PYTHON (see bench/README.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${BENCH_PYTHON:-/usr/bin/python3}"
[ -x "$python" ] || python="$(command -v python3)"
pip_quiet=(--disable-pip-version-check -q)

say() { echo "[bench/run.sh] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "must run as root: PostgreSQL is started as user postgres (runuser)"
  exit 2
fi
if ! command -v redis-server >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  say "installing redis-server and postgresql-15 (Debian packages)"
  apt-get update -q >/dev/null
  apt-get install -y -q redis-server postgresql-15 >/dev/null
fi

# --- the peers' (and harness') virtualenv --------------------------------------------
peers_venv="$repo/.venv-bench-peers"
peers_req="$repo/bench/requirements-peers.txt"
stamp="$(sha256sum "$peers_req" | cut -d' ' -f1)"
if [ ! -x "$peers_venv/bin/python" ] || [ "$(cat "$peers_venv/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
  say "building $peers_venv from bench/requirements-peers.txt"
  "$python" -m venv "$peers_venv"
  "$peers_venv/bin/pip" install "${pip_quiet[@]}" -r "$peers_req"
  echo "$stamp" >"$peers_venv/.requirements.sha256"
fi

# --- lightrag-server's virtualenv (W2, W3, W6) ------------------------------------------
if [ -z "${BENCH_LIGHTRAG_PYTHON:-}" ]; then
  lightrag_venv="$repo/.venv-bench-lightrag"
  lightrag_req="$repo/bench/requirements-lightrag-server.txt"
  stamp="$(sha256sum "$lightrag_req" | cut -d' ' -f1)"
  if [ ! -x "$lightrag_venv/bin/python" ] || [ "$(cat "$lightrag_venv/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
    say "building $lightrag_venv from bench/requirements-lightrag-server.txt"
    "$python" -m venv "$lightrag_venv"
    "$lightrag_venv/bin/pip" install "${pip_quiet[@]}" -r "$lightrag_req"
    echo "$stamp" >"$lightrag_venv/.requirements.sha256"
  fi
  export BENCH_LIGHTRAG_PYTHON="$lightrag_venv/bin/python"
fi

# --- the service's virtualenv ----------------------------------------------------------
service_python="${BENCH_SERVICE_PYTHON:-$repo/.venv-service/bin/python}"
service_imports="import fastapi, uvicorn, redis, sqlalchemy, asyncpg, prometheus_client, lightrag, tiktoken, openai, httpx"
if ! "$service_python" -c "$service_imports" 2>/dev/null; then
  if [ -n "${BENCH_SERVICE_PYTHON:-}" ]; then
    say "BENCH_SERVICE_PYTHON=$service_python cannot import the service's packages"
    exit 2
  fi
  say "building .venv-service from the role's requirements and constraints"
  requirements="$(mktemp)"
  # The role's pinned requirements, from the project's one reader of that list.
  "$peers_venv/bin/python" scripts/service-requirements.py >"$requirements"
  "$python" -m venv "$repo/.venv-service"
  "$repo/.venv-service/bin/pip" install "${pip_quiet[@]}" \
    -c roles/orchestrator_workers/files/constraints.txt -r "$requirements"
  rm -f "$requirements"
fi

export BENCH_SERVICE_PYTHON="$service_python"
exec "$peers_venv/bin/python" "$repo/bench/harness.py" "$@"
