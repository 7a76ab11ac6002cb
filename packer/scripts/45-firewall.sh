#!/usr/bin/env bash
# The firewall: nftables and the agent's own table (systemd/fl-agent-firewall.nft), loaded at
# boot by fl-agent-firewall.service. Drop-ins in /etc/fl-agent/firewall.d/ open more ports
# (a SuperLink's Fleet API port).
set -euxo pipefail

apt-get install -y -q --no-install-recommends nftables
install -d -m 0755 /etc/fl-agent/firewall.d
install -m 0644 "$FL_STAGE"/systemd/fl-agent-firewall.nft /etc/fl-agent/firewall.nft
# The distribution's own nftables.service would flush the whole ruleset (Docker's rules too)
# when stopped: the agent's unit owns the firewall.
systemctl disable nftables.service || true
systemctl enable fl-agent-firewall.service
