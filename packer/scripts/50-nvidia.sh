#!/usr/bin/env bash
# NVIDIA, optional. FL_NVIDIA_TOOLKIT:
#   none     nothing;
#   keyring  NVIDIA's apt keyring, so the agent can install the Container Toolkit at boot online;
#   bake     the keyring plus the toolkit's .debs in /opt/fl-agent/nvidia-toolkit, which the
#            agent installs offline with dpkg when a GPU is present (agent/toolkit.py).
# FL_NVIDIA_DRIVER_PACKAGES: driver packages to bake (a GPU image); empty: none.
# Every NVIDIA package the image then has is held (apt-mark hold): unattended upgrades would
# otherwise replace the driver's userspace under the loaded kernel module (NVML: driver/library
# version mismatch) or the toolkit under running containers (its upgrade reloads systemd, which
# takes the GPUs away from them: docs/gpu-health.md).
set -euxo pipefail

# Where the agent looks for the keyring and the baked packages, and which packages it installs:
# asked from the agent installed by 40-agent.sh (agent/toolkit.py), the one source of truth.
agent_py=${FL_AGENT_PYTHON:-/opt/fl-agent/venv/bin/python}
read -r keyring baked repo_url < <("$agent_py" -c \
  'from agent import toolkit as t; print(t.KEYRING, t.BAKED_DIR, t.NVIDIA_REPO_URL)')
mapfile -t packages < <("$agent_py" -c \
  'from agent import toolkit as t; print(*t.TOOLKIT_PACKAGES, sep="\n")')
gpgkey_url='https://nvidia.github.io/libnvidia-container/gpgkey'

case "${FL_NVIDIA_TOOLKIT:-none}" in
  none) ;;
  keyring | bake)
    curl -fsSL --retry 3 "$gpgkey_url" | gpg --dearmor --yes -o "$keyring"
    if [ "$FL_NVIDIA_TOOLKIT" = bake ]; then
      list=$(mktemp)
      echo "deb [signed-by=$keyring] $repo_url /" >"$list"
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

# Installed (ii) packages of NVIDIA's driver and container stacks: the driver's many libnvidia-*,
# nvidia-* (and Ubuntu's linux-modules-nvidia-*) packages move together with the kernel module,
# so all of them are held.
mapfile -t held < <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' |
  awk '$1 == "ii" && $2 ~ /nvidia|^cuda-drivers/ { print $2 }')
if [ "${#held[@]}" -gt 0 ]; then
  apt-mark hold "${held[@]}"
fi
