#!/usr/bin/env bash
# The main job on a fresh machine of this kind (Debian 12, root): a whole Flower federation from
# one appliance image and one agent, as a OneFlow service would form it.
#   setup (Docker engine, .venv, base images) -> the appliance's Flower images -> the OneGate
#   emulator holding a service: a superlink role VM (40) and two supernode role VMs (41, 42)
#   -> `fl-agent boot` of VM 40 (FL_ROLE=superlink: its CA and certificate, the SuperLink with
#   SuperNode authentication, FL_ENDPOINT/FL_CA_CERT/FL_VERSION/READY to OneGate) and its
#   `fl-agent watch` (registers the service's SuperNode keys) -> `fl-agent boot` of VMs 41 and
#   42 (the SuperLink, its CA and its Flower version found through OneGate; node keys made and
#   published; 42 with process isolation: a SuperNode and a ClientApp SuperExec) -> `flwr run`
#   of the reference app over TLS: two rounds on both SuperNodes -> what each VM reports.
# Each VM is an agent with a root of its own (a scratch directory whose sys/ and proc/ point at
# the real ones: GPU facts are this machine's); the SuperNode agents run as instances 1 and 2 so
# that their containers and local ports do not clash on one engine (agent/instance.py).
# Everything it starts is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

CONTEXTS=examples/context/federation
ONEGATE_PORT=5030
VERSION=$(sed -n "s/^FLOWER_VERSION='\(.*\)'\$/\1/p" "$CONTEXTS/vm40.sh")
SUPERLINK_VM=40
SUPERNODE_VMS=(41 42)
CONTAINERS=(flower-superlink flower-supernode-1 flower-superexec-1 flower-supernode-2 flower-superexec-2)

step() { printf '\n==> %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

work=$(mktemp -d /tmp/fl-agent-demo.XXXXXX)
pgids=()
created_containers=no
cleanup() {
  local rc=$?
  step "cleaning up"
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  if [ "$created_containers" = yes ]; then
    docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME LOG CMD...: in its own process group, remembered for cleanup
  local name=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  pgids+=("$!")
  echo "started $name (pid $!, log $log)"
}

wait_port() {
  .venv/bin/python -c "import sys; sys.path.insert(0, 'scripts'); import flower_local as f; f.wait_for_port($1)" \
    || { tail -20 "$2" >&2; die "nothing listens on 127.0.0.1:$1"; }
}

vm_dir() { echo "$work/vm$1"; }
agent() {  # agent VM ARGS...: fl-agent as VM's agent (its root, its instance)
  local vm=$1
  shift
  local instance=""
  [ "$vm" != "$SUPERLINK_VM" ] && instance=$((vm - SUPERLINK_VM))
  FL_AGENT_ROOT="$(vm_dir "$vm")/root" FL_AGENT_INSTANCE="$instance" .venv/bin/fl-agent "$@"
}

step "1/8 machine setup: Debian packages, Docker engine, .venv, base images"
bash scripts/setup.sh
# Container names are fixed: take turns with test runs on this machine (tests/conftest.py).
exec 7>/tmp/fl-agent-test-supernode.lock
flock 7
for name in "${CONTAINERS[@]}"; do
  docker container inspect "$name" >/dev/null 2>&1 \
    && die "a container $name exists already; remove it first (docker rm -f $name)"
done

step "2/8 the appliance's Flower $VERSION image; a host venv for the operator's flwr CLI"
bash images/build-supernode.sh "$VERSION"
python3 scripts/flower_local.py venv "$VERSION"

step "3/8 OneGate emulator on 127.0.0.1:$ONEGATE_PORT: service 'flower-federation' (superlink: VM $SUPERLINK_VM, supernode: VMs ${SUPERNODE_VMS[*]})"
.venv/bin/python -c 'import emulators.onegate' 2>/dev/null \
  || die "emulators.onegate is missing from this checkout"
vms=""
for vm in "$SUPERLINK_VM" "${SUPERNODE_VMS[@]}"; do
  dir=$(vm_dir "$vm")
  mkdir -p "$dir/cd" "$dir/root"
  ln -s /sys "$dir/root/sys"
  ln -s /proc "$dir/root/proc"
  cp "$CONTEXTS/vm$vm.sh" "$dir/cd/context.sh"
  token=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
  (umask 077 && printf '%s\n' "$token" >"$dir/cd/token.txt")  # as on the context CD
  vms+="${vms:+, }{\"id\": $vm, \"token\": \"$token\", \"name\": \"vm-$vm\", \"user_template\": {}, \"ips\": [\"127.0.0.1\"]}"
done
printf '{"vms": [%s], "services": [{"id": 1, "name": "flower-federation", "roles": [{"name": "superlink", "vm_ids": [%s]}, {"name": "supernode", "vm_ids": [%s]}]}]}\n' \
  "$vms" "$SUPERLINK_VM" "$(IFS=,; echo "${SUPERNODE_VMS[*]}")" >"$work/onegate.json"
start onegate "$work/onegate.log" .venv/bin/python -m emulators.onegate \
  --port "$ONEGATE_PORT" --state "$work/onegate.json"
wait_port "$ONEGATE_PORT" "$work/onegate.log"

step "4/8 VM $SUPERLINK_VM: fl-agent boot (FL_ROLE=superlink)"
created_containers=yes
agent "$SUPERLINK_VM" boot --context-file "$(vm_dir $SUPERLINK_VM)/cd/context.sh" \
  || die "the superlink role did not reach RUNNING"

step "5/8 VM $SUPERLINK_VM: fl-agent watch (registers the keys of the service's SuperNodes)"
start "watch (VM $SUPERLINK_VM)" "$work/watch-$SUPERLINK_VM.log" env \
  FL_AGENT_ROOT="$(vm_dir $SUPERLINK_VM)/root" .venv/bin/fl-agent watch \
  --context-file "$(vm_dir $SUPERLINK_VM)/cd/context.sh"

step "6/8 VMs ${SUPERNODE_VMS[*]}: fl-agent boot (SuperNodes; VM 42 with FL_ISOLATION=process)"
for vm in "${SUPERNODE_VMS[@]}"; do
  echo "--- VM $vm"
  agent "$vm" boot --context-file "$(vm_dir "$vm")/cd/context.sh" \
    || die "the SuperNode of VM $vm did not reach RUNNING"
done

step "7/8 flwr run over TLS (trusting the CA VM $SUPERLINK_VM published): two rounds on both SuperNodes"
ca="$work/published-ca.pem"
agent "$SUPERLINK_VM" status --remote --json --context-file "$(vm_dir $SUPERLINK_VM)/cd/context.sh" \
  | .venv/bin/python -c 'import base64, json, sys; print(base64.b64decode(json.load(sys.stdin)["remote"]["attributes"]["FL_CA_CERT"]).decode(), end="")' \
  >"$ca"
python3 scripts/flower_local.py run "$VERSION" "$work/flwr" --ca "$ca" --run-config min-nodes=2 \
  >"$work/run.log" 2>&1 || { tail -40 "$work/run.log" >&2; die "flwr run failed"; }

step "8/8 results"
for vm in "$SUPERLINK_VM" "${SUPERNODE_VMS[@]}"; do
  echo "--- VM $vm: what OneGate holds (fl-agent status --remote)"
  agent "$vm" status --remote --context-file "$(vm_dir "$vm")/cd/context.sh" || true
  echo
done
echo "--- the rounds (ServerApp log)"
grep -E "fl-demo (round|result)" "$work/run.log" | sed 's/^.*fl-demo/fl-demo/'
echo
echo "--- the containers"
docker ps --filter "name=flower-" --format '{{.Names}}\t{{.Image}}\t{{.Status}}'
