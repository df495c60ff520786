#!/usr/bin/env bash
# `make bench`: each benchmark against its reference tool, on the same machine, in the same
# run, alternating the two tools over several repeats; prints medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=${WSSS_DEPS:-.deps}
py=$deps/bench-venv/bin/python
repeats=${BENCH_REPEATS:-3}
voc=../shared/data/voc-mini/VOC2012
data=data/bench/voc-mini-train
[ -e "$data/manifest.json" ] || target/release/wsss-dist data import voc --root "$voc" --split train_aug --out "$data"
cargo bench --bench loader --bench train_step --no-run -q 2>/dev/null
uptime >&2

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { "$py" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

echo "== loader: read + decode + augment + batch, 2 threads/workers, batch 16, voc-mini train_aug (96 photos), 3 epochs after warm-up"
for mode in augment decode; do
  flag=""; [ "$mode" = decode ] && flag="--decode-only"
  ours=(); theirs=()
  for _ in $(seq "$repeats"); do
    ours+=("$(cargo bench -q --bench loader -- --dataset "$data" --threads 2 --batch 16 --epochs 3 $flag | field images_per_s)")
    theirs+=("$("$py" benchmarks/loader_torch.py --images "$voc/JPEGImages" --ids "$voc/ImageSets/Segmentation/train_aug.txt" --workers 2 --batch 16 --epochs 3 $flag 2>/dev/null | field images_per_s)")
  done
  o=$(printf '%s\n' "${ours[@]}" | median); t=$(printf '%s\n' "${theirs[@]}" | median)
  printf '%-8s wsss-dist %8.1f img/s  pytorch %8.1f img/s  ratio %.2fx   (runs: wsss-dist %s | pytorch %s)\n' \
    "$mode" "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" "${ours[*]}" "${theirs[*]}"
done

echo "== CAM classifier training step (forward + loss + backward + SGD update): ResNet-50, strides (2,2,2,1), batch 8, 224 px, 2 threads; median of 5 steps after 2 warm-up"
ours=(); theirs=()
for _ in $(seq "$repeats"); do
  ours+=("$(cargo bench -q --bench train_step -- --depth resnet50 --batch 8 --size 224 --steps 5 --threads 2 | field median_step_s)")
  theirs+=("$("$py" benchmarks/train_step_torch.py --depth resnet50 --batch 8 --size 224 --steps 5 --threads 2 2>/dev/null | field median_step_s)")
done
o=$(printf '%s\n' "${ours[@]}" | median); t=$(printf '%s\n' "${theirs[@]}" | median)
printf 'step     wsss-dist %8.3f s  pytorch eager %8.3f s  ratio %.3fx (time, lower is better; target <= 1.05)   (runs: wsss-dist %s | pytorch %s)\n' \
  "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" "${ours[*]}" "${theirs[*]}"

echo "== COCO-scale import: peak memory (RSS) of importing 82,081 images / ~605k annotations"
coco=data/bench/coco-scale
[ -e "$coco/instances_train2014.json" ] || echo "instances JSON: $("$py" benchmarks/coco_scale.py "$coco") bytes"
/usr/bin/time -f "%M KiB peak RSS, %e s wall" target/release/wsss-dist data import coco \
  --annotations "$coco/instances_train2014.json" --images "$coco/images" --out "$coco/dataset" --force 2>&1 \
  | grep -E "imported|peak RSS"

echo "== correctness against PyTorch: multi-scale CAMs of a random ResNet-18 (random BN statistics) on 12 synthetic PNGs of 150 px"
check=data/bench/check-cam
[ -e "$check/images/manifest.json" ] || target/release/wsss-dist data import synthetic --out "$check/images" --images 12 --size 150 --split val 2>/dev/null
"$py" benchmarks/check_cam_torch.py --wsss target/release/wsss-dist --images "$check/images" --work "$check/work"
