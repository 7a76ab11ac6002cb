#!/usr/bin/env bash
# Build the local base images the tests and the demo use (no registry can be reached here).
#   fl-agent/debian:bookworm   debootstrapped Debian 12 with systemd and python3 (boots /sbin/init)
#   fl-agent/busybox:latest    a one-second busybox rootfs for tiny stand-in containers
# Idempotent: an image that already exists is kept. Serialised with a lock so parallel callers
# do not debootstrap twice.
set -euo pipefail

DEBIAN_IMAGE=fl-agent/debian:bookworm
BUSYBOX_IMAGE=fl-agent/busybox:latest
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

exec 9>/tmp/fl-agent-build-base.lock
flock 9

have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$BUSYBOX_IMAGE"; then
  bb=$(command -v busybox || true)
  [ -n "$bb" ] || { echo "busybox-static is not installed" >&2; exit 1; }
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp "$bb" "$root/bin/busybox"
  for applet in sh cat echo sleep env ls mkdir printf id true false trap kill; do
    ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$root"
  echo "built $BUSYBOX_IMAGE"
fi

if ! have "$DEBIAN_IMAGE"; then
  root=$(mktemp -d)
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,ca-certificates,iproute2,procps \
    bookworm "$root" "$MIRROR" >/tmp/fl-agent-debootstrap.log 2>&1 \
    || { tail -20 /tmp/fl-agent-debootstrap.log >&2; rm -rf "$root"; exit 1; }
  rm -rf "$root/var/cache/apt/archives/"*.deb
  tar -C "$root" -c . | docker import --change 'CMD ["/sbin/init"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$root"
  echo "built $DEBIAN_IMAGE"
fi
