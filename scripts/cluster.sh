#!/usr/bin/env bash
# The multi-host lab: four systemd containers on a Docker network of the
# project's own, reached by Ansible through the Docker CLI
# (inventory/cluster, connection community.docker.docker, no SSH):
#
#   shield-data      Debian 13: Redis master, PostgreSQL 17 + pgvector (TLS),
#                    the LLM stand-in, a Sentinel; publishes nothing
#   shield-replica   Debian 13: a Redis replica of shield-data (what the
#                    Sentinels promote on a failover), a Sentinel
#   shield-worker-1  Debian 12: shield-orchestrator, a Sentinel; API on
#                    127.0.0.1:8001
#   shield-worker-2  Debian 12: shield-orchestrator, a Sentinel; API on
#                    127.0.0.1:8002
#
#   scripts/cluster.sh up       create/start the network and the containers
#   scripts/cluster.sh down     remove the containers and the network
#   scripts/cluster.sh status   print each container's state
#
# Idempotent; each container is made by scripts/lab.sh (same flags as the
# single-host lab). On the network the containers reach each other by name.
# Environment: CLUSTER_NETWORK (shield-cluster), DOCKER (/usr/bin/docker).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"
CLUSTER_NETWORK="${CLUSTER_NETWORK:-shield-cluster}"
# name suite published-port (empty: none)
HOSTS=(
  "shield-data trixie -"
  "shield-replica trixie -"
  "shield-worker-1 bookworm 8001"
  "shield-worker-2 bookworm 8002"
)

log() { printf '[cluster] %s\n' "$*" >&2; }

each_host() {
  local action=$1 entry name suite port
  for entry in "${HOSTS[@]}"; do
    read -r name suite port <<<"${entry}"
    [[ ${port} == - ]] && port=""
    LAB_NAME="${name}" LAB_SUITE="${suite}" LAB_IMAGE="" LAB_PORT="${port}" \
      LAB_NETWORK="${CLUSTER_NETWORK}" DOCKER="${DOCKER}" \
      "${REPO_DIR}/scripts/lab.sh" "${action}" || return 1
  done
}

cmd_up() {
  if ! "${DOCKER}" network inspect "${CLUSTER_NETWORK}" >/dev/null 2>&1; then
    "${DOCKER}" network create --label shield.lab=1 "${CLUSTER_NETWORK}" >/dev/null
    log "network ${CLUSTER_NETWORK} created"
  fi
  each_host up
  log "ready: shield-data, shield-replica, shield-worker-1 (127.0.0.1:8001), shield-worker-2 (127.0.0.1:8002) on ${CLUSTER_NETWORK}"
}

cmd_down() {
  each_host down
  if "${DOCKER}" network inspect "${CLUSTER_NETWORK}" >/dev/null 2>&1; then
    "${DOCKER}" network rm "${CLUSTER_NETWORK}" >/dev/null
    log "network ${CLUSTER_NETWORK} removed"
  fi
}

cmd_status() {
  local entry name suite port rc=0
  for entry in "${HOSTS[@]}"; do
    read -r name suite port <<<"${entry}"
    printf -- '--- %s\n' "${name}"
    LAB_NAME="${name}" DOCKER="${DOCKER}" "${REPO_DIR}/scripts/lab.sh" status || rc=1
  done
  return "${rc}"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
