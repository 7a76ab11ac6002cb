#!/usr/bin/env bash
# The full local boot, on a fresh machine of this kind (Debian 12, root):
#   setup (Docker engine, .venv, base images) -> SuperNode images -> a SuperLink and the OneGate
#   emulator on 127.0.0.1 -> `fl-agent boot` with examples/context/demo.sh -> one federated
#   round of the reference app -> the validation table, what OneGate holds, the round's result.
# Everything it starts is stopped and removed on exit. The agent's root is a scratch directory
# whose sys/ and proc/ point at the real ones: GPU facts are this machine's, while the agent's
# files (/etc, /var/lib, /run) land in the scratch directory, not in the system.
set -euo pipefail
cd "$(dirname "$0")/.."

CONTEXT=examples/context/demo.sh
ONEGATE_PORT=5030
VERSION=$(sed -n "s/^FLOWER_VERSION='\(.*\)'\$/\1/p" "$CONTEXT")
VMID=$(sed -n "s/^VMID='\(.*\)'\$/\1/p" "$CONTEXT")

step() { printf '\n==> %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

work=$(mktemp -d /tmp/fl-agent-demo.XXXXXX)
pgids=()
created_container=no
cleanup() {
  local rc=$?
  step "cleaning up"
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  if [ "$created_container" = yes ]; then
    docker rm -f flower-supernode >/dev/null 2>&1 || true
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

step "1/7 machine setup: Debian packages, Docker engine, .venv, base images"
bash scripts/setup.sh
# The container name is fixed: take turns with test runs on this machine (tests/conftest.py).
exec 7>/tmp/fl-agent-test-supernode.lock
flock 7
docker container inspect flower-supernode >/dev/null 2>&1 \
  && die "a flower-supernode container exists already; remove it first (docker rm -f flower-supernode)"

step "2/7 images for Flower $VERSION: flwr/supernode (stand-in), fl-agent/supernode; host venv for SuperLink and flwr"
bash images/build-supernode.sh "$VERSION"
python3 scripts/flower_local.py venv "$VERSION"

step "3/7 SuperLink $VERSION on 127.0.0.1"
start superlink "$work/superlink.log" python3 scripts/flower_local.py superlink "$VERSION" "$work/flwr"
fleet=$(.venv/bin/python -c "from agent import flower; print(flower.release_for('$VERSION').fleet_port)")
wait_port "$fleet" "$work/superlink.log"

step "4/7 OneGate emulator on 127.0.0.1:$ONEGATE_PORT (VM $VMID)"
token=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
printf '{"vms": [{"id": %s, "token": "%s", "name": "fl-node-0", "user_template": {}, "ips": ["127.0.0.1"]}], "services": []}\n' \
  "$VMID" "$token" >"$work/onegate.json"
.venv/bin/python -c 'import emulators.onegate' 2>/dev/null \
  || die "emulators.onegate is missing from this checkout"
start onegate "$work/onegate.log" .venv/bin/python -m emulators.onegate \
  --port "$ONEGATE_PORT" --state "$work/onegate.json"
wait_port "$ONEGATE_PORT" "$work/onegate.log"

step "5/7 fl-agent boot --context-file $CONTEXT"
mkdir -p "$work/context" "$work/root"
cp "$CONTEXT" "$work/context/context.sh"
(umask 077 && printf '%s\n' "$token" >"$work/context/token.txt")  # as on the context CD
ln -s /sys "$work/root/sys"
ln -s /proc "$work/root/proc"
export FL_AGENT_ROOT=$work/root
created_container=yes
.venv/bin/fl-agent boot --context-file "$work/context/context.sh" || die "boot did not reach RUNNING"

step "6/7 one federated round (flwr run, streamed)"
python3 scripts/flower_local.py run "$VERSION" "$work/flwr" --run-config num-server-rounds=1 \
  >"$work/run.log" 2>&1 || { tail -40 "$work/run.log" >&2; die "flwr run failed"; }

step "7/7 results"
echo "--- validation (fl-agent validate)"
.venv/bin/fl-agent validate --context-file "$work/context/context.sh" || true
echo
echo "--- what OneGate holds for VM $VMID (fl-agent status --remote)"
.venv/bin/fl-agent status --remote --context-file "$work/context/context.sh" || true
echo
echo "--- the round (ServerApp log)"
grep -E "fl-demo (round|result)" "$work/run.log" | sed 's/^.*fl-demo/fl-demo/'
echo
echo "--- the ClientApp inside the SuperNode container (docker logs flower-supernode)"
docker logs flower-supernode 2>&1 | grep -E "device selected|gpu memory" | tail -2 | sed 's/^.*:      //'
