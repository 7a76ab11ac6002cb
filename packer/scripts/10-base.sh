#!/usr/bin/env bash
# Base packages both images need. Services installed during the build must not start (the docker
# source has no init, and nothing half-configured should run in the VM): policy-rc.d says no
# until 90-cleanup.sh removes it.
set -euxo pipefail

printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends \
  ca-certificates curl gnupg python3 python3-venv iproute2 procps
