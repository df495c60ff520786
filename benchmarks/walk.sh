#!/usr/bin/env bash
# The random walk of `pseudo-label --method irn_rw` against IRNet's dense computation in
# PyTorch (benchmarks/walk_torch.py), one thread each, on the same generated inputs: images/s
# per core, the peak memory an image adds, and the agreement of the labels (target: >= 10x per
# core at >= 99.5% agreement). Grids of stride-4 cells: 32x40 and 64x80 (128x160 and 256x320
# photos); a VOC-sized 94x125 grid (500x375) with WALK_VOC_SIZE=1 (the dense side takes
# minutes per image there). Results: benchmarks/results/walk.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${WSSS_DEPS:-.deps}/bench-venv/bin/python
work=data/bench/walk
mkdir -p "$work"
cargo bench --bench walk --no-run -q 2>/dev/null
source benchmarks/lib.sh
grids=("32 40 8" "64 80 2")
[ "${WALK_VOC_SIZE:-0}" = 1 ] && grids+=("94 125 1")
for grid in "${grids[@]}"; do
  set -- $grid
  name="$1x$2"
  [ -e "$work/in-$name.safetensors" ] || "$py" benchmarks/walk_torch.py inputs --out "$work/in-$name.safetensors" --grid "$1" "$2" --images "$3"
  ours=$(cargo bench -q --bench walk -- --inputs "$work/in-$name.safetensors" --out "$work/ours-$name.safetensors")
  theirs=$(OMP_NUM_THREADS=1 "$py" benchmarks/walk_torch.py run --inputs "$work/in-$name.safetensors" --out "$work/ref-$name.safetensors" --threads 1)
  agree=$("$py" benchmarks/walk_torch.py agree "$work/ours-$name.safetensors" "$work/ref-$name.safetensors")
  o=$(echo "$ours" | field images_per_s); t=$(echo "$theirs" | field images_per_s)
  printf 'grid %-7s (%s images) wsss-dist %8.3f img/s  dense pytorch %8.4f img/s  ratio %6.1fx  peak MiB/image: %s vs %s  labels agree: %s (worst image %s)\n' \
    "$name" "$3" "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" \
    "$(echo "$ours" | field peak_mib_per_image)" "$(echo "$theirs" | field peak_mib_per_image)" \
    "$(echo "$agree" | field agreement)" "$(echo "$agree" | field worst_image)"
done
