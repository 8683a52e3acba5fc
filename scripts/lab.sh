#!/usr/bin/env bash
# The lab: one systemd container, "shield-lab", that stands in for a Debian
# host (inventory/lab, connection community.docker.docker, no SSH).
#
#   scripts/lab.sh up       create/start it and wait until systemd is up
#   scripts/lab.sh down     remove it (state inside is lost)
#   scripts/lab.sh status   print its state and systemd's
#
# Idempotent. The base image is built first when missing
# (scripts/build-base-image.sh). The service port is published on loopback
# only: 127.0.0.1:${LAB_PORT:-8000} -> 8000.
# Environment: LAB_NAME (shield-lab), LAB_SUITE (bookworm), LAB_IMAGE
#              (shield-systemd:$LAB_SUITE), LAB_PORT (8000; empty publishes
#              nothing), LAB_NETWORK (empty: Docker's default bridge; a
#              network of its own lets containers reach each other by name,
#              see scripts/cluster.sh), LAB_WAIT_SECONDS (90),
#              DOCKER (/usr/bin/docker).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"
LAB_NAME="${LAB_NAME:-shield-lab}"
LAB_SUITE="${LAB_SUITE:-bookworm}"
LAB_IMAGE="${LAB_IMAGE:-shield-systemd:${LAB_SUITE}}"
LAB_PORT="${LAB_PORT-8000}"
LAB_NETWORK="${LAB_NETWORK:-}"
LAB_WAIT_SECONDS="${LAB_WAIT_SECONDS:-90}"

log() { printf '[lab] %s\n' "$*" >&2; }

# Flags that let systemd run as PID 1 without --privileged (which fails on
# these machines: runc cannot apply the full capability set).
RUN_FLAGS=(
  --detach
  --name "${LAB_NAME}"
  --hostname "${LAB_NAME}"
  --label shield.lab=1
  --cap-add SYS_ADMIN
  --security-opt seccomp=unconfined
  --security-opt apparmor=unconfined
  --cgroupns host
  --volume /sys/fs/cgroup:/sys/fs/cgroup:rw
  --tmpfs /run
  --tmpfs /run/lock
  --stop-signal SIGRTMIN+3
)
if [[ -n ${LAB_PORT} ]]; then
  RUN_FLAGS+=(--publish "127.0.0.1:${LAB_PORT}:8000")
fi
if [[ -n ${LAB_NETWORK} ]]; then
  RUN_FLAGS+=(--network "${LAB_NETWORK}")
fi

container_state() {
  local state
  state="$("${DOCKER}" container inspect -f '{{ .State.Status }}' "${LAB_NAME}" 2>/dev/null)" \
    || state=absent
  printf '%s\n' "${state:-absent}"
}

systemd_state() {
  "${DOCKER}" exec "${LAB_NAME}" systemctl is-system-running 2>/dev/null || true
}

wait_for_systemd() {
  local state deadline=$(( SECONDS + LAB_WAIT_SECONDS ))
  while (( SECONDS < deadline )); do
    state="$(systemd_state)"
    case "${state}" in
      running) return 0 ;;
      degraded)
        log "systemd is degraded; failed units:"
        "${DOCKER}" exec "${LAB_NAME}" systemctl --failed --no-legend >&2 || true
        return 0 ;;
    esac
    sleep 1
  done
  log "systemd did not come up within ${LAB_WAIT_SECONDS} s (last state: ${state:-unknown})"
  "${DOCKER}" logs --tail 30 "${LAB_NAME}" >&2 || true
  return 1
}

cmd_up() {
  local start=${SECONDS}
  "${DOCKER}" image inspect "${LAB_IMAGE}" >/dev/null 2>&1 \
    || "${REPO_DIR}/scripts/build-base-image.sh" "${LAB_IMAGE##*:}"
  case "$(container_state)" in
    running) ;;
    absent)
      log "creating ${LAB_NAME} from ${LAB_IMAGE}"
      "${DOCKER}" run "${RUN_FLAGS[@]}" "${LAB_IMAGE}" /lib/systemd/systemd >/dev/null ;;
    *)
      log "starting ${LAB_NAME}"
      "${DOCKER}" start "${LAB_NAME}" >/dev/null ;;
  esac
  wait_for_systemd
  log "${LAB_NAME} is up ($(systemd_state)) in $(( SECONDS - start )) s${LAB_PORT:+; port 127.0.0.1:${LAB_PORT} -> 8000}"
}

cmd_down() {
  if [[ $(container_state) != absent ]]; then
    "${DOCKER}" rm --force --volumes "${LAB_NAME}" >/dev/null
    log "${LAB_NAME} removed"
  else
    log "${LAB_NAME} is not there"
  fi
}

cmd_status() {
  local state; state="$(container_state)"
  printf 'container: %s\n' "${state}"
  if [[ ${state} == running ]]; then
    printf 'systemd: %s\n' "$(systemd_state)"
    printf 'image: %s\n' "$("${DOCKER}" container inspect -f '{{ .Config.Image }}' "${LAB_NAME}")"
    printf 'ports: %s\n' "$("${DOCKER}" port "${LAB_NAME}" | tr '\n' ' ')"
  fi
  [[ ${state} == running ]]
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
