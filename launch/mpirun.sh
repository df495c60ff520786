#!/usr/bin/env bash
# Thin mpirun wrapper: launch/mpirun.sh N wsss-dist <subcommand> ...
#   e.g. launch/mpirun.sh 8 target/release/wsss-dist train cam --config configs/voc_cam.toml
# - one rank per GPU: wsss-dist picks GPU = local rank, so start as many ranks per node as GPUs;
# - ranks are not bound to cores (libtorch runs its own thread pool per rank: set run.threads
#   to cores / ranks on a CPU node), --oversubscribe allows more ranks than cores (tests);
# - a rank waiting in MPI yields its core (mpi_yield_when_idle) to the ranks still computing;
# - as root (containers) mpirun needs --allow-run-as-root;
# - NCCL: cudarc loads `libnccl.so`, torch ships `libnccl.so.2`; a link to it is made in a
#   cache directory put first on LD_LIBRARY_PATH (nothing happens without a torch install).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift
# Ranks waiting in MPI (a barrier, a reply) yield their core to ranks that compute.
flags=(--oversubscribe --bind-to none --mca mpi_yield_when_idle 1)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/nccl-env.sh"
for var in WSSS_LOG LD_LIBRARY_PATH NCCL_DEBUG; do
  [ -n "${!var:-}" ] && flags+=(-x "$var")
done
exec mpirun -n "$n" "${flags[@]}" "$@"
