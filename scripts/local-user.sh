#!/usr/bin/env bash
# Create the non-root Linux users the local stack runs jobs as (idempotent; as root).
#   scripts/local-user.sh              -> hpcb-dev (make up maps the local caller to it)
#   scripts/local-user.sh NAME [NAME]  -> those users (the tests' hpcbtest-a, hpcbtest-b)
# Normal users (uid >= 1000, from useradd's UID_MIN), home under /home, no password (login only
# through su/setpriv by root), no extra groups, a home only they can enter. An existing user is left as it is.
set -euo pipefail

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(hpcb-dev)

for name in "${names[@]}"; do
  if [[ ! $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]]; then
    echo "local-user.sh: not a POSIX user name: $name" >&2
    exit 2
  fi
  if getent passwd "$name" >/dev/null; then
    continue
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "local-user.sh: user $name is missing and only root can create it" >&2
    exit 1
  fi
  # Several processes may run this at once (parallel test sessions): useradd locks /etc/passwd
  # itself; a concurrent creation of the same name is fine if the user exists afterwards.
  useradd --create-home --home-dir "/home/$name" --shell /bin/bash --user-group "$name" \
    || getent passwd "$name" >/dev/null
  chmod 700 "/home/$name"   # other users (and their jobs) see nothing in it
  echo "local-user.sh: created $name (uid $(id -u "$name"))"
done
