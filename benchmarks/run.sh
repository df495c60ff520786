#!/usr/bin/env bash
# `make bench`: each benchmark against its reference tool, on the same machine, in the same
# run, alternating the two tools over several repeats; prints medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=${WSSS_DEPS:-.deps}
py=$deps/bench-venv/bin/python
repeats=${BENCH_REPEATS:-3}
# The real photos (WSSS_VOC_DATA names the folder holding voc-mini/): the benchmarks that need
# them say they did not run, and why, where they are missing.
voc=${WSSS_VOC_DATA:-../shared/data}/voc-mini/VOC2012
data=data/bench/voc-mini-train
have_voc() { [ -d "$voc/JPEGImages" ]; }
not_run() { echo "NOT RUN: $1: no voc-mini photos at $voc (set WSSS_VOC_DATA to the folder holding voc-mini/)"; }
if have_voc; then
  { [ -e "$data/_manifest.json" ] || [ -e "$data/manifest.json" ]; } || target/release/wsss-dist data import voc --root "$voc" --split train_aug --out "$data"
fi
cargo bench --bench loader --bench train_step --bench allreduce --bench seg_step --no-run -q 2>/dev/null
uptime >&2

source benchmarks/lib.sh

if have_voc; then
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
else
  not_run "loader"
fi

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
{ [ -e "$check/images/_manifest.json" ] || [ -e "$check/images/manifest.json" ]; } || target/release/wsss-dist data import synthetic --out "$check/images" --images 12 --size 150 --split val 2>/dev/null
"$py" benchmarks/check_cam_torch.py --wsss target/release/wsss-dist --images "$check/images" --work "$check/work"

echo "== correctness against torchvision: MobileNetV2 with the ImageNet weights (features and logits, output stride 32/16/8; tolerance 1e-4)"
"$py" benchmarks/check_mobilenet_torch.py --weights weights/mobilenet_v2.safetensors --work data/bench/check-mobilenet

echo "== correctness against timm: the ViT CAM network (ViT-Ti and ViT-S, random weights, 200 x 280 px: position embeddings resampled, image padded) against timm's VisionTransformer: features, CAM logits, the last 4 blocks' patch attention (tolerance 1e-4 of each output's largest value)"
"$py" benchmarks/check_vit_timm.py --work data/bench/check-vit

echo "== CAM inference time vs PyTorch: the same random ResNet-18, scales 1.0/0.5/1.5/2.0 + flips, the 96 voc-mini photos, 2 threads (wsss-dist's time includes JPEG decoding; target: ratio <= 1.05)"
if have_voc; then
  "$py" benchmarks/check_cam_torch.py --wsss target/release/wsss-dist --images "$data" --work data/bench/check-cam-voc --threads 2
else
  not_run "CAM inference time vs PyTorch"
fi

echo "== gradient all-reduce, 2 ranks: ResNet-50-sized gradients (25.6M f32) in 25 MiB buckets vs one plain MPI all-reduce vs torch.distributed gloo (targets: <= 1.10x plain MPI, faster than gloo)"
allreduce=$(bench_exe allreduce)
ours=(); plain=(); gloo=()
for _ in $(seq "$repeats"); do
  line=$(bash launch/mpirun.sh 2 "$allreduce" --repeats 10 2>/dev/null | tail -1)
  ours+=("$(echo "$line" | field bucketed_s)"); plain+=("$(echo "$line" | field plain_mpi_s)")
  floats=$(echo "$line" | field floats)
  gloo+=("$(OMP_NUM_THREADS=1 "$deps/bench-venv/bin/torchrun" --nproc_per_node 2 benchmarks/allreduce_torch.py --floats "$floats" --repeats 10 2>/dev/null | field median_s)")
done
o=$(printf '%s\n' "${ours[@]}" | median); p=$(printf '%s\n' "${plain[@]}" | median); g=$(printf '%s\n' "${gloo[@]}" | median)
printf 'allreduce bucketed %.4f s  plain MPI %.4f s  gloo %.4f s  bucketed/plain %.2fx  gloo/bucketed %.2fx\n' "$o" "$p" "$g" \
  "$(awk -v a="$o" -v b="$p" 'BEGIN {print a / b}')" "$(awk -v a="$g" -v b="$o" 'BEGIN {print a / b}')"

echo "== data-parallel training step, ResNet-18 CAM classifier, batch 8 per rank, 128 px: 1 rank x 2 threads and 2 ranks x 1 thread (all-reduce overlapped with backward, as both trainers default to), vs PyTorch (eager / DDP over gloo); images/s, higher is better (target: >= PyTorch DDP)"
step=$(bench_exe train_step)
for ranks in 1 2; do
  ours=(); theirs=()
  for _ in $(seq "$repeats"); do
    if [ "$ranks" = 1 ]; then
      ours+=("$("$step" --depth resnet18 --batch 8 --size 128 --steps 5 --threads 2 | field images_per_s)")
      theirs+=("$("$py" benchmarks/train_step_torch.py --depth resnet18 --batch 8 --size 128 --steps 5 --threads 2 2>/dev/null | field images_per_s)")
    else
      ours+=("$(bash launch/mpirun.sh 2 "$step" --depth resnet18 --batch 8 --size 128 --steps 5 --threads 1 --overlap 2>/dev/null | field images_per_s)")
      theirs+=("$(OMP_NUM_THREADS=1 "$deps/bench-venv/bin/torchrun" --nproc_per_node 2 benchmarks/train_step_torch.py --depth resnet18 --batch 8 --size 128 --steps 5 --threads 1 2>/dev/null | field images_per_s)")
    fi
  done
  o=$(printf '%s\n' "${ours[@]}" | median); t=$(printf '%s\n' "${theirs[@]}" | median)
  printf '%s rank(s) wsss-dist %6.1f img/s  pytorch %6.1f img/s  ratio %.2fx   (runs: wsss-dist %s | pytorch %s)\n' \
    "$ranks" "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" "${ours[*]}" "${theirs[*]}"
done

bash benchmarks/overlap.sh

echo "== method variants: training step time relative to the CAM baseline (ResNet-18, batch 16, 128 px, 2 threads; AMR with its spotlight frozen as the reference trains it); median of 5 steps after 2 warm-up, variants alternated in each repeat"
variants=("" "--isl" "--fsl" "--isl --fsl" "--base amr" "--base amr --isl --fsl")
declare -A times
for _ in $(seq "$repeats"); do
  for v in "${variants[@]}"; do
    times[$v]+="$("$step" --depth resnet18 --batch 16 --size 128 --steps 5 --threads 2 $v | field median_step_s) "
  done
done
base=$(printf '%s\n' ${times[""]} | median)
for v in "${variants[@]}"; do
  m=$(printf '%s\n' ${times[$v]} | median)
  printf '%-22s %.3f s/step  vs baseline %.2fx   (runs: %s)\n' "cam ${v:-(baseline)}" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" "${times[$v]}"
done

echo "== correctness against PyTorch: DeepLab v2 (ResNet-50, OS 8, MSC outputs) and v3+ (MobileNetV2 and ResNet-50, OS 16) on random weights, inference and training outputs (tolerance 1e-4 of each output's largest value)"
"$py" benchmarks/check_deeplab_torch.py --work data/bench/check-deeplab

echo "== segmenter training step vs PyTorch eager: DeepLab v3+ on MobileNetV2 and v2 on ResNet-50, batch 4, 321 px, 2 threads (time, lower is better; target <= 1.03); then the dense-CRF loss's share of the v3+ step"
seg_step=$(bench_exe seg_step)
for model in "deeplab_v3plus mobilenet_v2" "deeplab_v2 resnet50"; do
  set -- $model
  ours=(); theirs=()
  for _ in $(seq "$repeats"); do
    ours+=("$("$seg_step" --kind "$1" --arch "$2" --batch 4 --size 321 --steps 5 --threads 2 | field median_step_s)")
    theirs+=("$("$py" benchmarks/seg_step_torch.py --kind "$1" --arch "$2" --batch 4 --size 321 --steps 5 --threads 2 2>/dev/null | field median_step_s)")
  done
  o=$(printf '%s\n' "${ours[@]}" | median); t=$(printf '%s\n' "${theirs[@]}" | median)
  printf '%-28s wsss-dist %7.3f s  pytorch eager %7.3f s  ratio %.3fx   (runs: wsss-dist %s | pytorch %s)\n' \
    "$1/$2" "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN {print a / b}')" "${ours[*]}" "${theirs[*]}"
done
# The regularized losses' cost per step (docs/segmenter.md; DFR: docs/methods.md §10), on random
# labels (every pixel labelled: the consistency loss pairs its full 64 points per image).
declare -A step
for regularizer in none dense_crf dfr; do
  runs=()
  for _ in $(seq "$repeats"); do
    runs+=("$("$seg_step" --batch 4 --size 321 --steps 5 --threads 2 --regularizer "$regularizer" | field median_step_s)")
  done
  step[$regularizer]=$(printf '%s\n' "${runs[@]}" | median)
  printf 'v3+/mobilenet_v2 step with seg.loss.regularizer = %-9s %.3f s   (runs: %s)\n' "$regularizer:" "${step[$regularizer]}" "${runs[*]}"
done
printf 'regularized losses: the dense-CRF loss adds %.0f%% to the plain step, DFR %.0f%%\n' \
  "$(awk -v a="${step[none]}" -v b="${step[dense_crf]}" 'BEGIN {print 100 * (b - a) / a}')" \
  "$(awk -v a="${step[none]}" -v b="${step[dfr]}" 'BEGIN {print 100 * (b - a) / a}')"

echo "== random walk (pseudo-label --method irn_rw) vs IRNet's dense computation in PyTorch: one thread each, the same generated boundaries and CAMs (target: >= 10x per core at >= 99.5% label agreement)"
bash benchmarks/walk.sh

if have_voc; then bash benchmarks/refine.sh; else not_run "refinement and the whole map phase (benchmarks/refine.sh)"; fi

if have_voc; then
echo "== AD-CAM's cost per image against the plain CAM (docs/methods.md §9): wsss-dist cam on voc-mini's 96 train photos, MobileNetV2 at output stride 16, scales 1.0 and 0.5 with flips, 2 threads; the refinements' images/s and time per image over the plain CAM's"
adcam=data/bench/adcam
common=(--config configs/voc_small_mobilenet.toml --set data.train="$data" --set data.val="$data" --set cam.split=train
  --set "cam.scales=[1.0, 0.5]" --set run.dir="$adcam" --set run.name=classifier --set run.threads=2 --set seg.enabled=false)
[ -n "$(ls "$adcam"/classifier/checkpoints/step-*.safetensors 2>/dev/null)" ] || target/release/wsss-dist train cam "${common[@]}" --set train.steps=1 --set train.epochs=1 >/dev/null 2>&1
checkpoint=$(ls "$adcam"/classifier/checkpoints/step-*.safetensors | grep -v optim | tail -1)
declare -A rate
for refine in none couple ad_cam; do
  runs=()
  for _ in $(seq "$repeats"); do
    target/release/wsss-dist cam "${common[@]}" --force --set cam.checkpoint="$checkpoint" --set cam.refine="$refine" --set cam.out="$adcam/$refine" >/dev/null 2>&1
    runs+=("$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['ranks'][0]['images_per_second'])" "$adcam/$refine/.map/summary.json")")
  done
  rate[$refine]=$(printf '%s\n' "${runs[@]}" | median)
  printf '%-8s %6.2f images/s  time per image %.2fx the plain CAM   (runs: %s)\n' "$refine" "${rate[$refine]}" \
    "$(awk -v a="${rate[none]}" -v b="${rate[$refine]}" 'BEGIN {print a / b}')" "${runs[*]}"
done
else
  not_run "AD-CAM's cost"
fi
