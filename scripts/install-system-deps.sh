#!/usr/bin/env bash
# Install the Debian packages hpc-broker needs (Slurm 22.05 single-node cluster + accounting, and
# python3-venv for the project's virtual environments).
#   scripts/install-system-deps.sh [--with-browser]   (--with-browser: also chromium, for make test)
# Idempotent; must run as root. A second run with everything present returns in well under 1 s
# (no apt-get update). Package post-install scripts are kept from starting daemons via policy-rc.d.
set -euo pipefail
exec </dev/null

PACKAGES=(
  slurm-wlm slurmctld slurmd slurm-client   # controller, node daemon, client tools (sbatch, squeue, ...)
  munge                                     # authentication
  slurmdbd slurm-wlm-mysql-plugin           # accounting daemon + its MySQL/MariaDB storage plugin
  mariadb-server mariadb-client             # accounting database (started by scripts/slurm.sh, not by init)
  slurmrestd slurm-wlm-jwt-plugin           # Slurm REST API daemon and JWT auth (optional HTTP access to Slurm)
  procps                                    # ps (used by scripts/slurm.sh for zombie-aware liveness checks)
  python3-venv                              # Debian's python3 has no venv/ensurepip without it (make venv)
)

# make test also needs a real browser for the Swagger UI page test (Debian's Chromium, ~350 MB).
if [[ ${1:-} == --with-browser ]]; then
  PACKAGES+=(chromium)
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-system-deps: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $st == installed ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-system-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install-system-deps: installing: ${missing[*]}"

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
  if [[ $created_policy -eq 1 ]]; then rm -f "$POLICY"; fi
}
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# temporary: installed by hpc-broker install-system-deps.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=120)
apt-get "${APT_OPTS[@]}" update -q
apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}"

# Post-install scripts may still have spawned daemons on some setups (e.g. a policy-rc.d that was
# not honoured); scripts/slurm.sh runs its own instances, so nothing else is touched here.
echo "install-system-deps: done"
