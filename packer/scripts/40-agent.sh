#!/usr/bin/env bash
# The agent: its wheel in its own venv under /opt/fl-agent, the units (enabled), the
# one-context scripts (context.d/) and the baked Flower version.
set -euxo pipefail

venv=/opt/fl-agent/venv
if [ -f "$FL_STAGE/pip-ca.crt" ]; then
  install -D -m 0644 "$FL_STAGE/pip-ca.crt" /tmp/fl-agent-pip-ca.crt
  export PIP_CERT=/tmp/fl-agent-pip-ca.crt
fi
if [ -n "${FL_PIP_INDEX_URL:-}" ]; then
  export PIP_INDEX_URL="$FL_PIP_INDEX_URL"
fi

python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "$FL_STAGE"/dist/*.whl
rm -f /tmp/fl-agent-pip-ca.crt
ln -sf "$venv/bin/fl-agent" /usr/local/bin/fl-agent
"$venv/bin/fl-agent" --version

install -m 0644 "$FL_STAGE"/systemd/*.service "$FL_STAGE"/systemd/*.timer /usr/lib/systemd/system/
install -D -m 0644 -t /usr/lib/systemd/system/fl-agent.service.d \
  "$FL_STAGE"/systemd/fl-agent.service.d/*.conf
# The /dev/char links of the NVIDIA device nodes, made again whenever the driver binds.
install -D -m 0644 -t /usr/lib/udev/rules.d "$FL_STAGE"/udev/*.rules
install -d -m 0755 /etc/one-context.d
# The hook, and the net-99-report-ready that leaves READY to the agent (replacing one-context's).
install -m 0755 "$FL_STAGE"/context.d/* /etc/one-context.d/
systemctl enable fl-agent.service fl-agent-revalidate.timer fl-agent-onegate-resend.timer

# The Flower version the node runs unless the context says otherwise. The agent's own table
# supplies the default and checks a given one.
version=${FL_FLOWER_VERSION:-$("$venv/bin/python" -c \
  'from agent.flower import DEFAULT_FLOWER_VERSION as v; print(v)')}
"$venv/bin/python" -c \
  'import sys; from agent.flower import release_for; sys.exit(release_for(sys.argv[1]) is None)' \
  "$version"
install -d -m 0755 /etc/fl-agent /etc/one-appliance
printf '%s\n' "$version" >/etc/fl-agent/flower-version
