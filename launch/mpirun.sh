#!/usr/bin/env bash
# Thin mpirun wrapper: launch/mpirun.sh N wsss-dist <subcommand> ...
# One rank per GPU on a GPU node (the local rank picks the device), ranks bound to cores;
# as root (containers) mpirun needs --allow-run-as-root, and more ranks than cores needs
# --oversubscribe (harmless otherwise).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift
flags=(--oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
exec mpirun -n "$n" "${flags[@]}" -x WSSS_LOG -x LD_LIBRARY_PATH "$@"
