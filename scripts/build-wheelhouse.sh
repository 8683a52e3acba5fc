#!/usr/bin/env bash
# Fill a controller-side wheelhouse with every wheel shield-orchestrator needs,
# for the role's option orchestrator_workers_wheelhouse_enabled (hosts then
# install with pip --no-index --find-links, without reaching an index).
#
#   scripts/build-wheelhouse.sh            # for Debian 12 hosts (bookworm)
#   scripts/build-wheelhouse.sh trixie     # for Debian 13 hosts
#
# The wheels are resolved by the hosts' own Python: dependency markers depend
# on its exact version (redis pulls async-timeout only below 3.11.3: Debian
# 12 has 3.11.2, a pyenv 3.11.7 would leave it out), and `pip download
# --python-version` does not apply to markers. So the build runs
#   - with the controller's /usr/bin/python3 when the controller runs the
#     same Debian release (the same Python package), else
#   - inside a throwaway container of the base image shield-systemd:SUITE
#     (scripts/build-base-image.sh SUITE), which reaches PyPI like the hosts.
# `pip wheel` also turns any sdist-only package into a wheel.
#
# Output: ${XDG_CACHE_HOME:-/root/.cache}/shield-orchestrator/wheelhouse
#         (bookworm) or .../wheelhouse-SUITE; its path is printed on stdout.
# Inputs: orchestrator_workers_pip_requirements of the role's defaults/main.yml
#         (read by scripts/service-requirements.py) and
#         roles/orchestrator_workers/files/constraints.txt. Rebuilt only
#         when they (or the suite or this recipe) change: the file .stamp in the
#         wheelhouse holds their hash. FORCE=1 rebuilds.
#
# Environment: WHEELHOUSE (output directory), FORCE, PIP_RETRIES (3),
#              BUILDER (auto | local | docker), IMAGE_REPO (shield-systemd),
#              DOCKER (/usr/bin/docker), PYTHON (/usr/bin/python3, with PyYAML:
#              it runs scripts/service-requirements.py).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROLE_DIR="${REPO_DIR}/roles/orchestrator_workers"
DEFAULTS="${ROLE_DIR}/defaults/main.yml"
CONSTRAINTS="${ROLE_DIR}/files/constraints.txt"
PIP_RETRIES="${PIP_RETRIES:-3}"
BUILDER="${BUILDER:-auto}"
DOCKER="${DOCKER:-/usr/bin/docker}"
PYTHON="${PYTHON:-/usr/bin/python3}"
IMAGE_REPO="${IMAGE_REPO:-shield-systemd}"
RECIPE_VERSION=3
SUITE="${1:-bookworm}"

log() { printf '[build-wheelhouse] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case "${SUITE}" in
  bookworm|trixie) ;;
  *) die "usage: $0 [bookworm|trixie]" ;;
esac
[[ -f ${DEFAULTS} ]] || die "missing ${DEFAULTS}"
[[ -f ${CONSTRAINTS} ]] || die "missing ${CONSTRAINTS}"

CACHE_DIR="${XDG_CACHE_HOME:-/root/.cache}/shield-orchestrator"
if [[ ${SUITE} == bookworm ]]; then
  WHEELHOUSE="${WHEELHOUSE:-${CACHE_DIR}/wheelhouse}"
else
  WHEELHOUSE="${WHEELHOUSE:-${CACHE_DIR}/wheelhouse-${SUITE}}"
fi

# The requirements, exactly as the role renders them (one per line), read by
# the project's one reader of that list (PyYAML from Debian's python3-yaml).
REQUIREMENTS="$("${PYTHON}" "${REPO_DIR}/scripts/service-requirements.py")" \
  || die "cannot read orchestrator_workers_pip_requirements (scripts/service-requirements.py)"
[[ -n ${REQUIREMENTS} ]] || die "no orchestrator_workers_pip_requirements in ${DEFAULTS}"

WANT="$( { printf 'recipe %s\nsuite %s\n' "${RECIPE_VERSION}" "${SUITE}"
           printf '%s\n' "${REQUIREMENTS}"; cat "${CONSTRAINTS}"; } | sha256sum | cut -c1-64)"
if [[ -z ${FORCE:-} && -f ${WHEELHOUSE}/.stamp && "$(cat "${WHEELHOUSE}/.stamp")" == "${WANT}" ]]; then
  log "up to date: ${WHEELHOUSE} ($(find "${WHEELHOUSE}" -name '*.whl' | wc -l) wheels for ${SUITE})"
  printf '%s\n' "${WHEELHOUSE}"
  exit 0
fi

if [[ ${BUILDER} == auto ]]; then
  ctl_suite="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  if [[ ${ctl_suite} == "${SUITE}" ]] && /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
    BUILDER=local
  else
    BUILDER=docker
  fi
fi

retry() {
  local n=1
  until "$@"; do
    (( n >= PIP_RETRIES )) && { log "failed after ${n} tries: $*"; return 1; }
    log "retry ${n}/${PIP_RETRIES}"; sleep $(( n * 5 )); n=$(( n + 1 ))
  done
}

start=${SECONDS}
mkdir -p "${CACHE_DIR}"
WORK="$(mktemp -d "${CACHE_DIR}/wheelhouse-build.XXXXXX")"
CONTAINER=""
cleanup() {
  [[ -n ${CONTAINER} ]] && "${DOCKER}" rm -f "${CONTAINER}" >/dev/null 2>&1
  rm -rf "${WORK}"
}
trap cleanup EXIT
printf '%s\n' "${REQUIREMENTS}" > "${WORK}/requirements.txt"
cp "${CONSTRAINTS}" "${WORK}/constraints.txt"
mkdir -p "${WORK}/out"

# The noise of this controller's pip.conf (file:// indexes lacking most
# projects) is filtered out.
PIP_ARGS=(wheel --disable-pip-version-check --no-input -q -w /work/out
          -r /work/requirements.txt -c /work/constraints.txt)
case "${BUILDER}" in
  local)
    log "building wheels for ${SUITE} with $(/usr/bin/python3 --version) on the controller"
    build() {
      /usr/bin/python3 -m pip "${PIP_ARGS[@]//\/work/${WORK}}" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
    }
    ;;
  docker)
    IMAGE="${IMAGE_REPO}:${SUITE}"
    "${DOCKER}" image inspect "${IMAGE}" >/dev/null 2>&1 \
      || die "image ${IMAGE} missing: run scripts/build-base-image.sh ${SUITE}"
    log "building wheels for ${SUITE} inside a throwaway ${IMAGE} container"
    CONTAINER="build-wheelhouse-${SUITE}-$$"
    "${DOCKER}" run -d --name "${CONTAINER}" -v "${WORK}:/work" "${IMAGE}" sleep infinity >/dev/null
    "${DOCKER}" exec "${CONTAINER}" python3 -m venv /opt/pip-venv
    build() { "${DOCKER}" exec "${CONTAINER}" /opt/pip-venv/bin/python -m pip "${PIP_ARGS[@]}"; }
    ;;
  *) die "BUILDER must be auto, local or docker" ;;
esac
retry build
if [[ ${BUILDER} == docker ]]; then
  # Files written by root in the container: hand them to the caller.
  "${DOCKER}" exec "${CONTAINER}" chown -R "$(id -u):$(id -g)" /work/out
fi

printf '%s\n' "${WANT}" > "${WORK}/out/.stamp"
rm -rf "${WHEELHOUSE}.old"
if [[ -e ${WHEELHOUSE} ]]; then mv "${WHEELHOUSE}" "${WHEELHOUSE}.old"; fi
mv "${WORK}/out" "${WHEELHOUSE}"
rm -rf "${WHEELHOUSE}.old"
log "built ${WHEELHOUSE}: $(find "${WHEELHOUSE}" -name '*.whl' | wc -l) wheels," \
    "$(du -sh "${WHEELHOUSE}" | cut -f1), in $(( SECONDS - start )) s (${BUILDER})"
printf '%s\n' "${WHEELHOUSE}"
