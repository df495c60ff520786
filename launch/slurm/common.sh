# Shared by the sbatch scripts: start one rank per task of the allocation.
# srun starts the ranks when SLURM was built with PMIx (`srun --mpi=list` shows pmix);
# otherwise WSSS_LAUNCHER=mpirun uses Open MPI's mpirun, which reads the allocation itself.
source "$root/launch/nccl-env.sh"
launch() {
  if [ "${WSSS_LAUNCHER:-srun}" = srun ]; then
    srun --mpi=pmix --kill-on-bad-exit=1 "$@"
  else
    mpirun --bind-to none -x WSSS_LOG -x LD_LIBRARY_PATH -x NCCL_DEBUG "$@"
  fi
}
