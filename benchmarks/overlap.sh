#!/usr/bin/env bash
# Gradient all-reduce overlapped with backward (part of `make bench`; alone: `make build && bash
# benchmarks/overlap.sh`; docs/architecture.md, "Overlapped gradient all-reduce"). 2 ranks x 1
# thread under launch/mpirun.sh, each step as the trainer runs it: benchmarks/train_step.rs
# (ResNet-50 CAM classifier, batch 4 per rank, 160 px) and benchmarks/seg_step.rs (DeepLab v3+
# on MobileNetV2 with its synchronised BatchNorms, batch 2 per rank, 321 px), blocking and
# `--overlap` alternated over BENCH_REPEATS runs: median seconds per step and median wait for the
# gradient sums after backward (`allreduce_wait_s`: the communication backward did not hide).
# Three links: Open MPI's shared memory (its default here) with 25 MiB buckets; with 1 MiB
# buckets; 1 MiB buckets over its TCP transport on the loopback (OMPI_MCA_btl=self,tcp), slower.
# Then PyTorch DDP (gloo over the loopback, its default 25 MiB buckets, overlapped) on the same
# model, batch, size and threads (benchmarks/*_torch.py under torchrun; `make bench-setup`), and
# the ratio to ours overlapped on shared memory with 25 MiB buckets.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/lib.sh
repeats=${BENCH_REPEATS:-3}
torchrun=${WSSS_DEPS:-.deps}/bench-venv/bin/torchrun
cargo bench --bench train_step --bench seg_step --no-run -q 2>/dev/null
models=("$(bench_exe train_step) --depth resnet50 --batch 4 --size 160 --steps 5 --threads 1"
        "$(bench_exe seg_step) --batch 2 --size 321 --steps 5 --threads 1")
names=("ResNet-50 CAM" "DeepLab v3+ MobileNetV2")
torch_models=("benchmarks/train_step_torch.py --depth resnet50 --batch 4 --size 160 --steps 5 --threads 1"
              "benchmarks/seg_step_torch.py --batch 2 --size 321 --steps 5 --threads 1")
echo "== gradient all-reduce overlapped with backward: 2 ranks x 1 thread, blocking vs --overlap; s/step and the wait after backward (lower is better)"
for m in 0 1; do
  for link in "shm 25" "shm 1" "tcp 1"; do
    read -r transport mb <<<"$link"
    transport_env=()
    [ "$transport" = tcp ] && transport_env=(OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo)
    declare -A steps=() waits=()
    for _ in $(seq "$repeats"); do
      for mode in blocking overlap; do
        flag=""; [ "$mode" = overlap ] && flag=--overlap
        # shellcheck disable=SC2086 # the model's arguments are words
        line=$(env "${transport_env[@]}" bash launch/mpirun.sh 2 ${models[$m]} --bucket-mb "$mb" $flag 2>/dev/null | tail -1)
        steps[$mode]+="$(echo "$line" | field median_step_s) "; waits[$mode]+="$(echo "$line" | field allreduce_wait_s) "
      done
    done
    b=$(printf '%s\n' ${steps[blocking]} | median); o=$(printf '%s\n' ${steps[overlap]} | median)
    printf '%-24s %-3s %2s MiB buckets  blocking %.3f s/step (wait %.4f s)  overlapped %.3f s/step (wait %.4f s)  blocking/overlapped %.3fx   (runs: %s| %s)\n' \
      "${names[$m]}" "$transport" "$mb" "$b" "$(printf '%s\n' ${waits[blocking]} | median)" "$o" "$(printf '%s\n' ${waits[overlap]} | median)" \
      "$(awk -v a="$b" -v c="$o" 'BEGIN {print a / c}')" "${steps[blocking]}" "${steps[overlap]}"
    [ "$link" = "shm 25" ] && ours_overlapped=$o
  done
  if [ -x "$torchrun" ]; then
    ddp=()
    for _ in $(seq "$repeats"); do
      # shellcheck disable=SC2086 # the model's arguments are words
      ddp+=("$(OMP_NUM_THREADS=1 "$torchrun" --nproc_per_node 2 ${torch_models[$m]} 2>/dev/null | field median_step_s)")
    done
    t=$(printf '%s\n' "${ddp[@]}" | median)
    printf '%-24s PyTorch DDP (gloo, 25 MiB buckets, overlapped) %.3f s/step   DDP/ours (shm 25 MiB, overlapped) %.3fx   (runs: %s)\n' \
      "${names[$m]}" "$t" "$(awk -v a="$t" -v c="$ours_overlapped" 'BEGIN {print a / c}')" "${ddp[*]}"
  else
    echo "NOT RUN: PyTorch DDP on ${names[$m]}: no $torchrun (make bench-setup)"
  fi
done
