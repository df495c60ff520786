# Shared by the sbatch scripts: start one rank per task of the allocation.
# srun starts the ranks when SLURM was built with PMIx (`srun --mpi=list` shows pmix);
# otherwise WSSS_LAUNCHER=mpirun uses Open MPI's mpirun, which reads the allocation itself.
# WSSS_BIN overrides the binary (default: the release build under the project root).
source "$root/launch/nccl-env.sh"
bin=${WSSS_BIN:-$root/target/release/wsss-dist}
launch() {
  if [ "${WSSS_LAUNCHER:-srun}" = srun ]; then
    srun --mpi=pmix --kill-on-bad-exit=1 "$@"
  else
    mpirun --bind-to none -x WSSS_LOG -x LD_LIBRARY_PATH -x NCCL_DEBUG "$@"
  fi
}
# One stage of the job. A stage stopped by the time limit's SIGUSR1 (--signal) saves its state
# and exits 3 (docs/commands.md, "Clean stops"): the job then puts itself back in the queue
# under the same id (--requeue), so the jobs that depend on it keep waiting, and its next start
# resumes (training from its checkpoint, a map phase skipping the shards done). Any other
# failure ends the job with the stage's exit code, and the pipeline's dependents are cancelled.
stage() {
  local status=0
  launch "$bin" "$@" || status=$?
  if [ "$status" = 3 ]; then
    echo "wsss-dist $1 stopped cleanly before the time limit: requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 3
  fi
  return "$status"
}
