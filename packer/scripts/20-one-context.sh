#!/usr/bin/env bash
# The one-context package (OpenNebula's contextualization), like one-apps' 80-install-context.sh:
# it conflicts with cloud-init, so dpkg leaves it half-installed and apt resolves by removing
# cloud-init (purged for good by 90-cleanup.sh). The CI image has no such package: its boot
# test plays one-context's part.
set -euxo pipefail

if [ -z "${FL_ONE_CONTEXT_DEB_URL:-}" ]; then
  echo "one-context: no package requested"
  exit 0
fi

deb=/tmp/one-context.deb
curl -fsSL --retry 3 -o "$deb" "$FL_ONE_CONTEXT_DEB_URL"
dpkg -i --auto-deconfigure "$deb" || apt-get install -y -q -f
rm -f "$deb"
dpkg-query -W -f='${Status}\n' one-context | grep -q 'install ok installed'
