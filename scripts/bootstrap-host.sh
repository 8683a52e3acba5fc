#!/usr/bin/env bash
# Prepare a Debian 12 controller (run as root) for this repository:
#   - apt packages: Docker engine, debootstrap, Python build tools, PyYAML
#     for the controller's python3 (python3-yaml), and the
#     redis-server / postgresql binaries the service's test suite uses
#     (their Debian services are stopped and disabled, so 6379/5432 stay free),
#     and chromium, the headless browser of the console's test (Playwright
#     drives /usr/bin/chromium; it never downloads a browser);
#   - a running Docker daemon, reachable through /usr/bin/docker;
#   - the controller virtualenv .venv from requirements-dev.txt, rebuilt only
#     when that file changes (hash kept in .venv/.requirements-dev.sha256).
# Idempotent; a quick no-op when everything is in place.
#
# Environment: PYTHON (interpreter for .venv, default /usr/bin/python3),
#              VENV (default <repo>/.venv), APT_RETRIES (default 3).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
VENV="${VENV:-${REPO_DIR}/.venv}"
APT_RETRIES="${APT_RETRIES:-3}"   # also used for pip
DOCKERD_LOG=/var/log/dockerd-bootstrap.log
DOCKER=/usr/bin/docker

# python3-yaml: scripts/service-requirements.py and scripts/role-docs.py run on
# the controller's /usr/bin/python3 before any virtualenv exists.
# chromium: the browser tests/service/test_console_ui.py drives.
APT_PACKAGES=(docker.io debootstrap python3-venv python3-dev python3-yaml gcc make
              redis-server postgresql chromium)
# Services the packages above enable by default; they must not squat the
# ports the tests (and the lab) use.
HOST_SERVICES=(redis-server postgresql)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [[ ${EUID} -ne 0 ]]; then
  log "must run as root"; exit 1
fi

have_systemd() { [[ -d /run/systemd/system ]]; }

# --- apt packages -------------------------------------------------------------
missing_packages() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' \
      || printf '%s\n' "$p"
  done
}

retry() {
  local n=1
  until "$@"; do
    if (( n >= APT_RETRIES )); then log "failed after ${n} tries: $*"; return 1; fi
    log "retry ${n}/${APT_RETRIES}: $*"; sleep $(( n * 5 )); n=$(( n + 1 ))
  done
}

disable_host_services() {
  local s
  for s in "${HOST_SERVICES[@]}"; do
    if have_systemd; then
      if systemctl is-enabled --quiet "$s" 2>/dev/null || systemctl is-active --quiet "$s" 2>/dev/null; then
        log "disabling and stopping host service $s"
        systemctl disable --now "$s" >/dev/null 2>&1 \
          || log "WARNING: could not disable $s: it may hold its default port (the tests use their own ports)"
      fi
    else
      if [[ -x /etc/init.d/$s ]]; then
        if /etc/init.d/"$s" status >/dev/null 2>&1; then
          log "stopping host service $s"
          /etc/init.d/"$s" stop >/dev/null 2>&1 \
            || log "WARNING: could not stop $s: it may hold its default port (the tests use their own ports)"
        fi
        if ls /etc/rc[2-5].d/S??"$s" >/dev/null 2>&1; then
          log "disabling host service $s"
          update-rc.d "$s" disable >/dev/null 2>&1 \
            || log "WARNING: could not disable $s at boot"
        fi
      fi
    fi
  done
}

mapfile -t MISSING < <(missing_packages)
if (( ${#MISSING[@]} )); then
  log "installing: ${MISSING[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting redis/postgresql during install
  # (policy-rc.d exit 101 = action forbidden); removed again on exit.
  POLICY=/usr/sbin/policy-rc.d
  if [[ ! -e ${POLICY} ]]; then
    printf '#!/bin/sh\nexit 101\n' > "${POLICY}"; chmod 0755 "${POLICY}"
    trap 'rm -f "${POLICY}"' EXIT
  fi
  # apt's chatter goes to a log; its tail is shown when a step fails.
  APT_LOG=/var/log/bootstrap-apt.log
  apt_quiet() { "$@" >>"${APT_LOG}" 2>&1 || { tail -n 20 "${APT_LOG}" >&2; return 1; }; }
  retry apt_quiet apt-get update
  retry apt_quiet apt-get install -y --no-install-recommends "${MISSING[@]}"
  rm -f "${POLICY}"; trap - EXIT
fi
disable_host_services

# --- Docker daemon ------------------------------------------------------------
if ! "${DOCKER}" info >/dev/null 2>&1; then
  if have_systemd; then
    log "starting docker.service"
    systemctl enable --now docker.service >/dev/null 2>&1 \
      || log "docker.service did not start; trying dockerd directly"
  fi
  if ! "${DOCKER}" info >/dev/null 2>&1 && ! pgrep -x dockerd >/dev/null; then
    log "starting dockerd in the background (log: ${DOCKERD_LOG})"
    nohup /usr/sbin/dockerd >>"${DOCKERD_LOG}" 2>&1 </dev/null &
    disown || true
  fi
  for _ in $(seq 1 60); do
    "${DOCKER}" info >/dev/null 2>&1 && break
    sleep 1
  done
  "${DOCKER}" info >/dev/null 2>&1 || { log "dockerd did not answer; see ${DOCKERD_LOG}"; exit 1; }
  log "docker daemon is up"
fi
# The first docker on PATH may be a bare client; it must reach the same daemon.
PATH_DOCKER="$(command -v docker || true)"
if [[ -n ${PATH_DOCKER} && ${PATH_DOCKER} != "${DOCKER}" ]] \
   && ! "${PATH_DOCKER}" info >/dev/null 2>&1; then
  log "warning: ${PATH_DOCKER} (first on PATH) cannot reach the daemon; use ${DOCKER}"
fi

# --- Controller virtualenv ----------------------------------------------------
REQ="${REPO_DIR}/requirements-dev.txt"
STAMP="${VENV}/.requirements-dev.sha256"
want="$(sha256sum "${REQ}" | cut -d' ' -f1)"
have="$(cat "${STAMP}" 2>/dev/null || true)"
if [[ ${want} != "${have}" || ! -x ${VENV}/bin/python ]]; then
  log "building ${VENV} from requirements-dev.txt"
  [[ -x ${VENV}/bin/python ]] || "${PYTHON}" -m venv "${VENV}"
  retry "${VENV}/bin/python" -m pip install -q -r "${REQ}"
  printf '%s\n' "${want}" > "${STAMP}"
  log "venv ready: ${VENV}"
fi
log "host ready"
