#!/bin/sh
echo "standin-args: $*"
echo "standin-user: $(id -u):$(id -g)"
if [ -n "$STANDIN_EXIT" ]; then
  echo "standin: exiting with $STANDIN_EXIT"
  exit "$STANDIN_EXIT"
fi
trap 'exit 0' TERM INT
while true; do sleep 1; done
