#!/usr/bin/env bash
# Record the real --help texts of one Flower release's commands, run inside its image, as test
# fixtures (tests/fixtures/flower-help/VERSION/). Fixed width and no colours, so reruns compare.
# Usage: scripts/record_flower_help.sh VERSION   (the image flwr/supernode:VERSION must exist)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: $0 FLOWER_VERSION}
OUT=tests/fixtures/flower-help/$VERSION
mkdir -p "$OUT"
help() {
  local name=$1; shift
  docker run --rm --network none -e COLUMNS=100 -e NO_COLOR=1 -e TERM=dumb \
    -e FLWR_TELEMETRY_ENABLED=0 --entrypoint "$1" "flwr/supernode:$VERSION" "${@:2}" --help \
    >"$OUT/$name.txt" 2>&1
}
help flower-superlink flower-superlink
help flower-supernode flower-supernode
help flower-superexec flower-superexec
help flwr flwr
help flwr-supernode flwr supernode
help flwr-supernode-register flwr supernode register
help flwr-supernode-unregister flwr supernode unregister
help flwr-supernode-list flwr supernode list
docker run --rm --network none -e NO_COLOR=1 --entrypoint flwr "flwr/supernode:$VERSION" --version \
  >"$OUT/version.txt" 2>&1
