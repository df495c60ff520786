#!/usr/bin/env bash
# Refinement benchmark (part of `make bench`; alone: `make build && bash benchmarks/refine.sh`):
# `pseudo-label --method irn_seeds` from stored CAMs on the voc-mini photos, one thread, against
# IRNet's step with pydensecrf (benchmarks/irn_seeds_ref.py, in the test venv) on the same CAMs
# and images, alternating over BENCH_REPEATS runs. The CAMs come from a ResNet-18 trained for
# one epoch from a random start (made once; the CAMs' quality does not matter for the timing).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/lib.sh
deps=${WSSS_DEPS:-.deps}
repeats=${BENCH_REPEATS:-3}
voc=${WSSS_VOC_DATA:-../shared/data}/voc-mini/VOC2012
[ -d "$voc/JPEGImages" ] || { echo "NOT RUN: benchmarks/refine.sh: no voc-mini photos at $voc (set WSSS_VOC_DATA to the folder holding voc-mini/)"; exit 0; }
data=data/bench/voc-mini-train
{ [ -e "$data/_manifest.json" ] || [ -e "$data/manifest.json" ]; } || target/release/wsss-dist data import voc --root "$voc" --split train_aug --out "$data"
echo "== refinement: pseudo-label --method irn_seeds from stored CAMs, voc-mini train_aug (96 photos), 1 thread, vs IRNet's step (cam_to_ir_label.py) with pydensecrf on the same CAMs and images; images/s per core and pixel agreement (target: >= 8x at >= 99%)"
refine=data/bench/refine
bin=$PWD/target/release/wsss-dist
voc_args=(--config configs/voc_cam.toml --set run.dir="$refine/runs" --set run.name=voc --set run.threads=1
  --set data.train="$data" --set data.val="$data" --set model.depth=resnet18 --set model.init=""
  --set train.epochs=1 --set loader.batch_size=8 --set loader.threads=2 --set "loader.resize_long=[160, 320]" --set loader.crop=256
  --set train.lr=0.01 --set "cam.scales=[1.0]" --set pseudo_label.threads=1)
{ [ -e "$refine/runs/voc/cams/train/_manifest.json" ] || [ -e "$refine/runs/voc/cams/train/manifest.json" ]; } || { "$bin" train cam "${voc_args[@]}" && "$bin" cam "${voc_args[@]}"; } 2>/dev/null
ours=(); theirs=(); agreement=()
for _ in $(seq "$repeats"); do
  start=$(date +%s.%N)
  "$bin" pseudo-label "${voc_args[@]}" --force 2>/dev/null
  ours+=("$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {print 96 / (e - s)}')")
  line=$(OMP_NUM_THREADS=1 "$deps/pyenv/bin/python" benchmarks/irn_seeds_ref.py "$data" "$refine/runs/voc/cams/train" "$refine/runs/voc/pseudo_labels/train")
  theirs+=("$(echo "$line" | field images_per_second)"); agreement+=("$(echo "$line" | field agreement)")
done
o=$(printf '%s\n' "${ours[@]}" | median); t=$(printf '%s\n' "${theirs[@]}" | median)
printf 'irn_seeds wsss-dist %6.2f img/s (whole stage: read, decode, refine, encode, write)  IRNet+pydensecrf %6.2f img/s (the step alone)  ratio %.2fx  agreement %s   (runs: wsss-dist %s | python %s)\n' \
  "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" "${agreement[0]}" "${ours[*]}" "${theirs[*]}"
python3 -c "import json,sys; s = json.load(open(sys.argv[1])); print('wsss-dist seconds by phase (last run):', {k: round(v, 2) for k, v in s['seconds_by_phase'].items()})" "$refine/runs/voc/pseudo_labels/train/.map/summary.json"

echo "== whole map phase: cam (scale 1.0 + flip) then pseudo-label (irn_seeds) of voc-mini train_aug in 8 shards of 12, as two passes (1 rank x 2 threads, 2 ranks x 1 thread) and as one (cam --pseudo-labels: refinement fed by inference, 1 inference + 1 refinement thread per rank); images/s and seconds by phase (summed over ranks)"
sharded=data/bench/voc-mini-sharded
{ [ -e "$sharded/_manifest.json" ] || [ -e "$sharded/manifest.json" ]; } || "$bin" data import voc --root "$voc" --split train_aug --out "$sharded" --shard-rows 12 2>/dev/null
for ranks in 1 2; do
  threads=$((2 / ranks))
  map_args=("${voc_args[@]}" --set data.train="$sharded" --set run.threads=$threads --set pseudo_label.threads=$threads
    --set cam.out="$refine/map$ranks/cams" --set pseudo_label.out="$refine/map$ranks/pseudo")
  # One pass: inference and refinement share the cores, one thread each per rank.
  fused_args=("${map_args[@]}" --set cam.out="$refine/fused$ranks/cams" --set pseudo_label.out="$refine/fused$ranks/pseudo" --set run.threads=1 --set pseudo_label.threads=1)
  start=$(date +%s.%N)
  bash launch/mpirun.sh "$ranks" "$bin" cam "${map_args[@]}" --force 2>/dev/null
  middle=$(date +%s.%N)
  bash launch/mpirun.sh "$ranks" "$bin" pseudo-label "${map_args[@]}" --force 2>/dev/null
  end=$(date +%s.%N)
  bash launch/mpirun.sh "$ranks" "$bin" cam --pseudo-labels "${fused_args[@]}" --force 2>/dev/null
  fused_end=$(date +%s.%N)
  python3 - "$ranks" "$start" "$middle" "$end" "$fused_end" "$refine" <<'PY'
import json, sys
ranks, start, middle, end, fused_end, out = int(sys.argv[1]), *map(float, sys.argv[2:6]), sys.argv[6]
phases = lambda d: {k: round(v, 1) for k, v in json.load(open(f"{out}/{d}/.map/summary.json"))["seconds_by_phase"].items() if k != "total"}
print(f"{ranks} rank(s), two passes: cam {96 / (middle - start):.2f} img/s {phases(f'map{ranks}/cams')}, pseudo-label {96 / (end - middle):.2f} img/s {phases(f'map{ranks}/pseudo')}, both {96 / (end - start):.2f} img/s")
print(f"{ranks} rank(s), one pass:   {96 / (fused_end - end):.2f} img/s {phases(f'fused{ranks}/pseudo')}")
PY
done
same() { cmp -s <(cat "$1"/*.parquet) <(cat "$2"/*.parquet); }
# Bytes are promised for the same libtorch threads per rank (docs/commands.md, "Reproducibility"): compare
# the runs at one thread per rank (map2, fused1, fused2) with each other; map1 ran 2 threads.
same "$refine/map2/cams" "$refine/fused1/cams" && same "$refine/map2/cams" "$refine/fused2/cams" \
  && same "$refine/map2/pseudo" "$refine/fused1/pseudo" && same "$refine/map2/pseudo" "$refine/fused2/pseudo" \
  && echo "one libtorch thread per rank, 1 and 2 ranks, one pass and two: identical shards" || echo "shards DIFFER between rank counts or passes at one thread per rank"
same "$refine/map1/cams" "$refine/map2/cams" && echo "CAMs at 2 libtorch threads and at 1: identical" \
  || echo "CAMs at 2 libtorch threads and at 1: differ in the last bits (libtorch splits its sums by thread count; not promised)"
