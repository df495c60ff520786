#!/usr/bin/env bash
# The whole pipeline as SLURM jobs, each starting when the one before has succeeded
# (--dependency=afterok): train cam → CAMs + pseudo-labels of the train split → train seg,
# predict and evaluate. Run it on the login node; it prints the job ids. A job that fails
# cancels the jobs after it (--kill-on-invalid-dep); one stopped by its time limit requeues
# itself and the chain waits for it (common.sh).
#   bash launch/slurm/pipeline.sh CONFIG [--set key=value ...]
# Extra sbatch options for every job go in WSSS_SBATCH (e.g. "--nodes=2 --partition=gpu").
set -euo pipefail
config=${1:?usage: pipeline.sh CONFIG [--set key=value ...]}; shift
here=$(cd "$(dirname "$0")" && pwd)
submit() {
    # sbatch --parsable prints "jobid" or "jobid;cluster".
    sbatch --parsable --kill-on-invalid-dep=yes ${WSSS_SBATCH:-} "$@" | cut -d';' -f1
}
cam=$(submit "$here/train_cam.sbatch" "$config" "$@")
labels=$(submit --dependency=afterok:"$cam" "$here/pseudo_label.sbatch" "$config" --set cam.split=train "$@")
seg=$(submit --dependency=afterok:"$labels" "$here/train_seg.sbatch" "$config" "$@")
echo "train cam: job $cam; pseudo-labels of the train split: job $labels; train seg + seg + eval seg: job $seg"
