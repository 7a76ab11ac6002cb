#!/usr/bin/env bash
# Leave a clean image: services may start again, cloud-init is gone (one-apps purges it too: it
# conflicts with one-context), the build's SSH access is closed, caches and the staging
# directory are removed, and every clone gets its own machine-id.
set -euxo pipefail

rm -f /usr/sbin/policy-rc.d

for pkg in cloud-init cloud-init-base; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
  case "$status" in
    "" | un*) ;;
    *) apt-get purge -y -q "$pkg" ;;
  esac
done
rm -rf /etc/cloud /var/lib/cloud

if [ -f /etc/ssh/sshd_config.d/10-packer-build.conf ]; then
  rm -f /etc/ssh/sshd_config.d/10-packer-build.conf
  passwd -l root
fi

apt-get autoremove -y -q --purge
apt-get clean
rm -rf /var/lib/apt/lists/* "$FL_STAGE"
truncate -s 0 /etc/machine-id
