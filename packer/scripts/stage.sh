#!/usr/bin/env bash
# Runs on the build host (shell-local): gathers what the image carries into one directory that
# the file provisioner uploads. Inputs (environment): STAGE, REPO, PYTHON, PIP_CERT_SRC,
# SUPERNODE_TAR.
set -euo pipefail

rm -rf "$STAGE"
mkdir -p "$STAGE/dist"
# The agent as a wheel; its dependencies come from the index inside the image's build.
"$PYTHON" -m pip wheel --no-deps --quiet --wheel-dir "$STAGE/dist" "$REPO"
cp -r "$REPO/systemd" "$STAGE/systemd"
cp -r "$REPO/context.d" "$STAGE/context.d"
cp -r "$REPO/udev" "$STAGE/udev"
if [ -n "$PIP_CERT_SRC" ]; then
  cp "$PIP_CERT_SRC" "$STAGE/pip-ca.crt"
fi
if [ -n "$SUPERNODE_TAR" ]; then
  ln "$SUPERNODE_TAR" "$STAGE/supernode-image.tar" 2>/dev/null \
    || cp "$SUPERNODE_TAR" "$STAGE/supernode-image.tar"
fi
ls -l "$STAGE" "$STAGE/dist"
