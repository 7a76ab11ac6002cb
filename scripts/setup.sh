#!/usr/bin/env bash
# Prepare a fresh machine of this kind (Debian 12, root) for the tests and the demo:
# Debian packages, a running Docker engine, the project venv in .venv, the local base images.
# Idempotent: quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(docker.io packer shellcheck debootstrap genisoimage busybox-static dpkg-dev systemd gcc nftables)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker version >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then
    setsid dockerd --storage-driver=overlay2 >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'
# CPU torch for the ClientApp helper tests only (the agent itself never imports it).
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/pip install -q torch==2.13.0

bash images/build-base.sh
