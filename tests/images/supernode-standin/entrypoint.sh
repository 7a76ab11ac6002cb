#!/bin/sh
echo "standin-args: $*"
echo "standin-user: $(id -u):$(id -g)"
if touch "$HOME/.standin-probe" 2>/dev/null; then echo "standin-home: writable"; fi
if ls /app/data >/dev/null 2>&1; then echo "standin-data: readable"; fi
if [ -n "$STANDIN_EXIT" ]; then
  echo "standin: exiting with $STANDIN_EXIT"
  exit "$STANDIN_EXIT"
fi
trap 'exit 0' TERM INT
while true; do sleep 1; done
