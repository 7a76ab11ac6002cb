#!/usr/bin/env bash
# NVIDIA, optional. FL_NVIDIA_TOOLKIT:
#   none     nothing;
#   keyring  NVIDIA's apt keyring, so the agent can install the Container Toolkit at boot online;
#   bake     the keyring plus the toolkit's .debs in /opt/fl-agent/nvidia-toolkit, which the
#            agent installs offline with dpkg when a GPU is present (agent/toolkit.py).
# FL_NVIDIA_DRIVER_PACKAGES: driver packages to bake (a GPU image); empty: none.
set -euxo pipefail

keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
repo='https://nvidia.github.io/libnvidia-container'
baked=/opt/fl-agent/nvidia-toolkit
packages=(nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools
  libnvidia-container1)

case "${FL_NVIDIA_TOOLKIT:-none}" in
  none) ;;
  keyring | bake)
    curl -fsSL --retry 3 "$repo/gpgkey" | gpg --dearmor --yes -o "$keyring"
    if [ "$FL_NVIDIA_TOOLKIT" = bake ]; then
      list=$(mktemp)
      echo "deb [signed-by=$keyring] $repo/stable/deb/\$(ARCH) /" >"$list"
      apt_one=(-o "Dir::Etc::sourcelist=$list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0)
      apt-get "${apt_one[@]}" update -q
      install -d -m 0755 "$baked"
      (cd "$baked" && apt-get "${apt_one[@]}" download "${packages[@]}")
      rm -f "$list"
      ls -l "$baked"
    fi
    ;;
  *)
    echo "FL_NVIDIA_TOOLKIT must be none, keyring or bake, not '$FL_NVIDIA_TOOLKIT'" >&2
    exit 2
    ;;
esac

if [ -n "${FL_NVIDIA_DRIVER_PACKAGES:-}" ]; then
  read -r -a drivers <<<"$FL_NVIDIA_DRIVER_PACKAGES"
  apt-get install -y -q --no-install-recommends "${drivers[@]}"
fi
