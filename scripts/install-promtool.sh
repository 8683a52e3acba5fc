#!/usr/bin/env bash
# promtool for the unit tests (tests/unit/test_monitoring.py checks and
# unit-tests monitoring/prometheus/*.rules.yml with it), without a Prometheus
# server: Debian's `prometheus` package is downloaded (apt-get download,
# checked against the signed archive index like any apt download), and only
# its usr/bin/promtool is extracted into .cache/promtool/bin. Installing the
# package instead would also install, enable and start a Prometheus server.
#
# Idempotent: a no-op when .cache/promtool/bin/promtool runs. Needs root only
# when the apt lists do not know the package yet (apt-get update).
#
# Environment: PROMTOOL_DIR (default <repo>/.cache/promtool), APT_RETRIES (default 3).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${PROMTOOL_DIR:-${REPO_DIR}/.cache/promtool}"
BIN="${DEST}/bin/promtool"
PACKAGE=prometheus
APT_RETRIES="${APT_RETRIES:-3}"

log() { printf '[promtool] %s\n' "$*" >&2; }

retry() {
  local n=1
  until "$@"; do
    if (( n >= APT_RETRIES )); then log "failed after ${n} tries: $*"; return 1; fi
    log "retry ${n}/${APT_RETRIES}: $*"; sleep $(( n * 5 )); n=$(( n + 1 ))
  done
}

if [[ -x ${BIN} ]] && "${BIN}" --version >/dev/null 2>&1; then
  exit 0
fi

if ! apt-cache show "${PACKAGE}" >/dev/null 2>&1; then
  if [[ ${EUID} -ne 0 ]]; then
    log "apt does not know the package '${PACKAGE}': run 'apt-get update' as root, then this script again"
    exit 1
  fi
  log "apt-get update"
  retry apt-get update -qq
fi

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
# apt downloads as the unprivileged _apt user when it can write the directory.
if [[ ${EUID} -eq 0 ]] && id _apt >/dev/null 2>&1; then
  chown _apt "${WORK}"
fi
log "downloading Debian's ${PACKAGE} package (promtool only is kept)"
(cd "${WORK}" && retry apt-get download -qq "${PACKAGE}")
DEB="$(find "${WORK}" -maxdepth 1 -name "${PACKAGE}_*.deb" | head -n 1)"
[[ -n ${DEB} ]] || { log "apt-get download left no ${PACKAGE}_*.deb"; exit 1; }

mkdir -p "${WORK}/root"
dpkg-deb --fsys-tarfile "${DEB}" | tar -x -C "${WORK}/root" ./usr/bin/promtool
mkdir -p "${DEST}/bin"
install -m 0755 "${WORK}/root/usr/bin/promtool" "${BIN}.new"
"${BIN}.new" --version >/dev/null
mv "${BIN}.new" "${BIN}"
dpkg-deb -f "${DEB}" Version > "${DEST}/VERSION"
log "$("${BIN}" --version 2>&1 | head -n 1) in ${BIN}"
