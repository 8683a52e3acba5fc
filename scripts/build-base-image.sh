#!/usr/bin/env bash
# Build the systemd base image shield-systemd:SUITE (SUITE: bookworm | trixie)
# offline: debootstrap (minbase) from the Debian mirror this machine already
# uses, then `docker import`. No container registry is involved.
#
#   scripts/build-base-image.sh bookworm
#
# - Skipped when the image exists and carries the current recipe hash
#   (label shield.recipe); FORCE=1 rebuilds.
# - The rootfs tarball is cached under
#   ${XDG_CACHE_HOME:-/root/.cache}/shield-orchestrator/, so a removed image is
#   re-imported in seconds. The name carries the recipe hash (package list,
#   mirror, controller CA bundle), so a changed recipe bootstraps afresh.
# - The controller's CA bundle is trusted inside the image (certificates the
#   image lacks are added under /usr/local/share/ca-certificates).
# Environment: MIRROR, SECURITY_MIRROR (default: read from /etc/apt),
#              IMAGE_REPO (default shield-systemd), FORCE, DOCKER.
# Measured on 2 cores: debootstrap + import 95-175 s (mirror speed), re-import
# from the cached tarball ~5 s,
# skip ~0.1 s.
set -euo pipefail

SUITE="${1:-}"
case "${SUITE}" in
  bookworm|trixie) ;;
  *) echo "usage: $0 bookworm|trixie" >&2; exit 2 ;;
esac

DOCKER="${DOCKER:-/usr/bin/docker}"
IMAGE_REPO="${IMAGE_REPO:-shield-systemd}"
IMAGE="${IMAGE_REPO}:${SUITE}"
CACHE_DIR="${XDG_CACHE_HOME:-/root/.cache}/shield-orchestrator"
CTL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
RECIPE_VERSION=2

# Everything an Ansible-managed systemd host needs: systemd as PID 1, python3
# (+ venv, + apt bindings for ansible.builtin.apt), sudo for become, and the
# network tools the roles and tests use.
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,iproute2,sudo,ca-certificates,curl,procps,gnupg,less

log() { printf '[build-base-image] %s\n' "$*" >&2; }
[[ ${EUID} -eq 0 ]] || { log "must run as root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: run scripts/bootstrap-host.sh"; exit 1; }

# --- Mirror: the one this machine's apt uses ----------------------------------
# Prints the URI of the first apt source for suite $1 (deb822 .sources files
# or one-line .list / sources.list entries).
find_mirror() {
  local suite="$1" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v want="${suite}" '
      function flush() { if (uri != "" && types ~ /(^| )deb( |$)/) {
          n = split(suites, s, " "); for (i = 1; i <= n; i++) if (s[i] == want) { print uri; exit } }
        uri = ""; suites = ""; types = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/  { sub(/^Types:[[:space:]]*/, ""); types = $0 }
      /^URIs:/   { sub(/^URIs:[[:space:]]*/, ""); split($0, u, " "); uri = u[1] }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      END { flush() }' "$f"
  done | head -n1 | grep . && return 0
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v want="${suite}" '$1 == "deb" && $3 == want { print $2; exit }'
  done | head -n1 | grep .
}
# shellcheck source=/dev/null
HOST_SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
MIRROR="${MIRROR:-$(find_mirror "${HOST_SUITE}" || echo http://deb.debian.org/debian)}"
SECURITY_MIRROR="${SECURITY_MIRROR:-$(find_mirror "${HOST_SUITE}-security" || true)}"
MIRROR="${MIRROR%/}"; SECURITY_MIRROR="${SECURITY_MIRROR%/}"

CA_HASH="$( [[ -f ${CTL_CA_BUNDLE} ]] && sha256sum "${CTL_CA_BUNDLE}" | cut -c1-64 || echo none)"
RECIPE="$(printf '%s\n' "${RECIPE_VERSION}" "${SUITE}" "${INCLUDE}" "${MIRROR}" "${SECURITY_MIRROR}" "${CA_HASH}" \
          | sha256sum | cut -c1-12)"
TARBALL="${CACHE_DIR}/rootfs-${SUITE}-${RECIPE}.tar"

# --- Skip when done -------------------------------------------------------------
if [[ -z ${FORCE:-} ]] \
   && [[ "$("${DOCKER}" image inspect -f '{{ index .Config.Labels "shield.recipe" }}' "${IMAGE}" 2>/dev/null)" == "${RECIPE}" ]]; then
  log "${IMAGE} exists (recipe ${RECIPE}); nothing to do"
  exit 0
fi

start=${SECONDS}
mkdir -p "${CACHE_DIR}"

# --- Root filesystem --------------------------------------------------------------
if [[ -n ${FORCE:-} || ! -s ${TARBALL} ]]; then
  ROOTFS="$(mktemp -d "${CACHE_DIR}/rootfs-${SUITE}.XXXXXX")"
  trap 'rm -rf "${ROOTFS}" "${TARBALL}.part"' EXIT
  log "debootstrap ${SUITE} from ${MIRROR} (minbase + ${INCLUDE})"
  debootstrap --variant=minbase --include="${INCLUDE}" "${SUITE}" "${ROOTFS}" "${MIRROR}" \
    > "${CACHE_DIR}/debootstrap-${SUITE}.log" 2>&1 \
    || { tail -n 30 "${CACHE_DIR}/debootstrap-${SUITE}.log" >&2; exit 1; }

  # apt sources for the container: the same mirror, with updates and security.
  rm -f "${ROOTFS}/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "${MIRROR}" "${SUITE}" "${SUITE}"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [[ -n ${SECURITY_MIRROR} ]]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "${SECURITY_MIRROR}" "${SUITE}"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } > "${ROOTFS}/etc/apt/sources.list.d/debian.sources"

  # Trust the controller's CA bundle: add the certificates the image lacks.
  if [[ -f ${CTL_CA_BUNDLE} ]]; then
    python3 - "${CTL_CA_BUNDLE}" "${ROOTFS}/etc/ssl/certs/ca-certificates.crt" \
              "${ROOTFS}/usr/local/share/ca-certificates" <<'PY'
import pathlib, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
norm = lambda c: "".join(c.split())
ctl = pem.findall(pathlib.Path(sys.argv[1]).read_text())
img = {norm(c) for c in pem.findall(pathlib.Path(sys.argv[2]).read_text())}
out = pathlib.Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
extra = [c for c in ctl if norm(c) not in img]
for i, c in enumerate(extra):
    (out / f"controller-ca-{i:03d}.crt").write_text(c + "\n")
print(f"[build-base-image] controller CA certificates added: {len(extra)}", file=sys.stderr)
PY
    chroot "${ROOTFS}" update-ca-certificates >/dev/null 2>&1 || { log "update-ca-certificates failed"; exit 1; }
  fi

  # Container hygiene: a machine-id per container, no leftover package files,
  # no units that cannot work in a container.
  : > "${ROOTFS}/etc/machine-id"
  rm -f "${ROOTFS}/var/lib/dbus/machine-id"
  chroot "${ROOTFS}" apt-get clean
  rm -rf "${ROOTFS}"/var/lib/apt/lists/* "${ROOTFS}"/var/log/*.log "${ROOTFS}/var/cache/apt/"*.bin
  mkdir -p "${ROOTFS}/var/lib/apt/lists/partial"
  # No package lists in the image: date the directory in the past so that
  # apt's cache_valid_time (Ansible) sees them as stale and updates.
  touch -d @0 "${ROOTFS}/var/lib/apt/lists" "${ROOTFS}/var/lib/apt/lists/partial"
  for unit in getty.target systemd-remount-fs.service systemd-firstboot.service \
              sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount; do
    ln -sf /dev/null "${ROOTFS}/etc/systemd/system/${unit}"
  done

  rm -f "${CACHE_DIR}"/rootfs-"${SUITE}"-*.tar   # older recipes
  tar -C "${ROOTFS}" --numeric-owner -cf "${TARBALL}.part" .
  mv "${TARBALL}.part" "${TARBALL}"
  rm -rf "${ROOTFS}"; trap - EXIT
  log "rootfs cached: ${TARBALL} ($(du -h "${TARBALL}" | cut -f1))"
else
  log "using cached rootfs ${TARBALL}"
fi

# --- Image ------------------------------------------------------------------------
"${DOCKER}" import \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'ENV container=docker' \
  --change "LABEL shield.recipe=${RECIPE} shield.suite=${SUITE}" \
  "${TARBALL}" "${IMAGE}" >/dev/null
log "built ${IMAGE} in $(( SECONDS - start )) s"
