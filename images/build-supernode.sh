#!/usr/bin/env bash
# Build the SuperNode images for one Flower release (no registry can be reached here):
#   flwr/supernode:VERSION      stand-in for the released image, from fl-agent/debian:bookworm
#                               (images/supernode/base/Dockerfile), flwr==VERSION from PyPI
#   fl-agent/supernode:VERSION  the image the agent starts: + CPU torch + agent/clientapp
#                               (images/supernode/Dockerfile)
# Idempotent: the base is kept when its tag exists; the derived image is rebuilt only when its
# inputs (Dockerfile, helpers, torch version) changed, recorded in the label fl-agent.inputs.
# Usage: images/build-supernode.sh VERSION     (e.g. 1.25.0, 1.42.0)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${1:?usage: $0 FLOWER_VERSION (X.Y.Z)}
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "not a version: $VERSION" >&2; exit 2; }
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
BASE=flwr/supernode:$VERSION
IMAGE=fl-agent/supernode:$VERSION
CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

exec 8>"/tmp/fl-agent-build-supernode-$VERSION.lock"
flock 8

have() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build, tried three times: a build container's DNS lookups of the index sometimes fail.
build() {
  local try
  for try in 1 2 3; do
    docker build -q "$@" >/dev/null && return 0
    echo "docker build failed (try $try of 3)" >&2
    sleep 5
  done
  return 1
}

# pip's index settings from this machine, so the build reaches the same index. Only http(s)
# URLs mean anything inside a container (file:// indexes stay on the host).
pip_setting() {
  local env_value=$1 key=$2
  if [ -n "$env_value" ]; then
    printf '%s' "$env_value"
  else
    python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.$key='\(.*\)'\$/\1/p" | head -1
  fi
}
http_only() { tr ' ' '\n' | grep -E '^https?://' | paste -sd' ' || true; }

build_args=(--build-arg "FLOWER_VERSION=$VERSION")
index=$(pip_setting "${PIP_INDEX_URL:-}" index-url | http_only)
extra=$(pip_setting "${PIP_EXTRA_INDEX_URL:-}" extra-index-url | http_only)
[ -z "$index" ] || build_args+=(--build-arg "PIP_INDEX_URL=$index")
[ -z "$extra" ] || build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$CA_BUNDLE" "$ctx/ca-bundle.crt"

inputs_hash() {
  { cat images/supernode/Dockerfile agent/__init__.py agent/clientapp/*.py; echo "$TORCH_VERSION"; } \
    | sha256sum | cut -c1-16
}

bash images/build-base.sh

if ! have "$BASE"; then
  cp images/supernode/base/Dockerfile "$ctx/Dockerfile"
  build -t "$BASE" "${build_args[@]}" "$ctx"
  echo "built $BASE"
fi

want=$(inputs_hash)
got=$(docker image inspect -f '{{index .Config.Labels "fl-agent.inputs"}}' "$IMAGE" 2>/dev/null || true)
if [ "$want" = "$got" ]; then
  exit 0
fi

# CPU torch: pip finds the wheel in its find-links (on disk here, ~190 MB) or on the index.
# Copied into the context for this build only; the trap removes it.
mkdir -p "$ctx/wheels" "$ctx/helpers/agent"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$ctx/wheels" "torch==$TORCH_VERSION"
cp agent/__init__.py "$ctx/helpers/agent/"
cp -r agent/clientapp "$ctx/helpers/agent/clientapp"
find "$ctx/helpers" -name __pycache__ -prune -exec rm -rf {} +
cp images/supernode/Dockerfile "$ctx/Dockerfile"
build -t "$IMAGE" --label "fl-agent.inputs=$want" "${build_args[@]}" "$ctx"
echo "built $IMAGE"
