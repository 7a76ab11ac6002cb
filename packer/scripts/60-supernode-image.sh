#!/usr/bin/env bash
# Pre-load the SuperNode image of the baked Flower version into the image's engine, so the first
# boot needs no registry. Only when a tarball was staged (qemu: `docker save` output given as
# supernode_image_tar). The CI container uses the host's engine, which already has it.
set -euxo pipefail

tarball="$FL_STAGE/supernode-image.tar"
if [ ! -f "$tarball" ]; then
  echo "no SuperNode image tarball staged: not pre-loaded"
  exit 0
fi

image="fl-agent/supernode:$(cat /etc/fl-agent/flower-version)"
systemctl start docker.service
docker load -i "$tarball"
docker image inspect "$image" >/dev/null || {
  echo "the tarball does not hold $image" >&2
  exit 1
}
systemctl stop docker.service docker.socket
