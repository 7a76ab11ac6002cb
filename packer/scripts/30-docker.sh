#!/usr/bin/env bash
# The Docker engine from the distribution (Ubuntu 24.04 and Debian 12: docker.io), enabled at
# boot. The CI container installs it too but boots with the host's engine behind the mounted
# socket (docs/appliance.md); the agent's unit only Wants= docker.service.
set -euxo pipefail

apt-get install -y -q --no-install-recommends docker.io
systemctl enable docker.service
