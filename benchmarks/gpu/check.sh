#!/usr/bin/env bash
# The first GPU check, in one short call (a few minutes on one GPU): the CUDA, bf16 and NCCL
# paths that a CPU machine builds but cannot run. On the GPU machine, from the repository root,
# with the binary packed by scripts/package-gpu.sh (dist/gpu/) and a CUDA PyTorch 2.11 on
# `python3`:
#   bash benchmarks/gpu/check.sh                    → one summary; details in $OUT (runs/gpu-check)
# It runs:
#   1. `wsss-dist info`: libtorch's CUDA backend loaded, devices, libcuda, libnccl;
#   2. `train cam` (configs/gpu_check.toml: ResNet-50, batch 16, 224 px, 20 steps) in f32 and
#      in bf16 on the GPU, its compute images/s (median over the steps after 3 of warm-up)
#      against PyTorch eager's same step (benchmarks/train_step_torch.py) on the same GPU;
#   3. the one-rank NCCL communicator those runs all-reduce their gradients through (the
#      trainer's backend line and summary), and the same f32 run with dist.backend = nccl
#      named, with the sums overlapped with backward on NCCL's own stream and blocking;
#   4. the fused `cam --pseudo-labels` on voc-mini (data/voc-mini, imported beforehand) after a
#      short training run: images/s and seconds by phase; `eval pseudo` of its labels;
#   5. `train seg` (DeepLab v3+) on those labels, `seg` with the CRF, `eval seg`.
# WSSS_GPU_CHECK_DEVICE=cpu runs the same on the CPU (the dry run of a machine without a GPU),
# WSSS_GPU_CHECK_QUICK=1 with small images and few steps. WSSS_BIN names another binary.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${WSSS_BIN:-dist/gpu/wsss-dist}
device=${WSSS_GPU_CHECK_DEVICE:-cuda}
out=${OUT:-runs/gpu-check}
python=${PYTHON:-python3}
mkdir -p "$out"
[ -x "$bin" ] || { echo "gpu check: no binary at $bin (bash scripts/package-gpu.sh on a machine with the toolchain, or set WSSS_BIN)" >&2; exit 2; }

# libtorch comes from the machine's PyTorch; the binary's other libraries travel beside it.
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${torch_lib:+$torch_lib:}$(dirname "$bin")/lib:${LD_LIBRARY_PATH:-}"
# The NCCL that libtorch loads, under the name cudarc looks for (as the launchers do).
source launch/nccl-env.sh
export NO_COLOR=1

steps=20 size=224 images=320
if [ "${WSSS_GPU_CHECK_QUICK:-0}" = 1 ]; then
  steps=4 size=64 images=64
fi
data=$out/data-$size
quick=(--set train.steps=$steps --set data.train="$data/train" --set data.val="$data/val" --set "loader.resize_long=[$size, $size]" --set loader.crop=$size)
for split in train val; do
  [ -f "$data/$split/_manifest.json" ] || "$bin" data import synthetic --out "$data/$split" --images $([ $split = train ] && echo $images || echo 16) --size $size --split $split > "$out/import-$split.log" 2>&1
done
results=()
note() { results+=("$1"); echo "gpu check: $1" >&2; }

# 1. What the machine offers.
if "$bin" info > "$out/info.json" 2> "$out/info.log"; then
  note "info: $(tr -d '\n' < "$out/info.json" | sed 's/  */ /g')"
else
  note "info: FAILED (see $out/info.log)"
fi

# 2 and 3. train cam in f32 and bf16; compute images/s from metrics.jsonl.
compute_rate() {
  "$python" - "$1" <<'PY'
import json, sys, statistics
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][3:]
print(round(statistics.median(l["images"] / l["compute_s"] for l in lines), 1) if lines else "nan")
PY
}
for kind in f32 bf16; do
  bf16=false; [ "$kind" = bf16 ] && bf16=true
  args=(train cam --config configs/gpu_check.toml --set run.device="$device" --set train.bf16=$bf16 --set run.name="$kind" --set run.dir="$out/runs" "${quick[@]}")
  rm -rf "$out/runs/$kind"
  if "$bin" "${args[@]}" > "$out/train-$kind.log" 2>&1; then
    ours=$(compute_rate "$out/runs/$kind/metrics.jsonl")
    backend=$(grep -o '[0-9]* rank(s) ([a-z]*' "$out/train-$kind.log" | head -1)
    theirs=$("$python" benchmarks/train_step_torch.py --device "$device" $([ "$bf16" = true ] && echo --bf16) --depth resnet50 --batch 16 --size $size --steps $steps --warmup 3 --threads "$(nproc)" 2> "$out/torch-$kind.log" | "$python" -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_s"], 1))' 2>/dev/null || echo "not run (see $out/torch-$kind.log)")
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }')
    note "train cam $kind on $device: wsss-dist $ours img/s (compute), PyTorch eager $theirs img/s, ratio $ratio; communicator: $backend)"
  else
    note "train cam $kind on $device: FAILED ($(tail -1 "$out/train-$kind.log"))"
  fi
done

# 3b. The all-reduce overlapped with backward on NCCL's own stream (docs/architecture.md): a world of
# one takes that path when dist.backend = "nccl" is named. f32, overlapped and blocking: compute
# images/s of each, and the largest loss difference between them (a sum over one rank is the
# identity, so they differ only where cuDNN's kernels are not deterministic).
modes=(overlapped blocking)
[ "$device" = cpu ] && { modes=(); note "NCCL overlapped vs blocking: not run on the CPU (NCCL moves CUDA tensors)"; }
for mode in "${modes[@]}"; do
  overlap=true; [ "$mode" = blocking ] && overlap=false
  rm -rf "$out/runs/nccl-$mode"
  if "$bin" train cam --config configs/gpu_check.toml --set run.device="$device" --set run.name="nccl-$mode" --set run.dir="$out/runs" \
      --set dist.backend=nccl --set dist.overlap=$overlap "${quick[@]}" > "$out/train-nccl-$mode.log" 2>&1; then
    note "train cam f32, dist.backend = nccl, $mode: $(compute_rate "$out/runs/nccl-$mode/metrics.jsonl") img/s (compute); log: $(grep -o '[0-9]* gradient bucket(s)[^)]*' "$out/train-nccl-$mode.log" | head -1)"
  else
    note "train cam f32, dist.backend = nccl, $mode: FAILED ($(tail -1 "$out/train-nccl-$mode.log"))"
  fi
done
if [ -f "$out/runs/nccl-overlapped/metrics.jsonl" ] && [ -f "$out/runs/nccl-blocking/metrics.jsonl" ]; then
  note "overlapped vs blocking NCCL: largest loss difference over the steps $("$python" - "$out/runs/nccl-overlapped/metrics.jsonl" "$out/runs/nccl-blocking/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if l.strip()] for p in sys.argv[1:3])
print(f"{max(abs(x - y) for x, y in zip(a, b)):.3g} ({len(a)} and {len(b)} steps)")
PY
)"
fi

# 4. The fused map phase on voc-mini's photos, after a short training run (random start).
if [ -f data/voc-mini/val/_manifest.json ] || [ -f data/voc-mini/val/manifest.json ]; then
  voc=(--config configs/voc_mini_mobilenet.toml --set run.device="$device" --set run.dir="$out/runs" --set run.name=voc --set model.init= --set train.steps=10 --set pseudo_label.threads=0)
  rm -rf "$out/runs/voc"
  if "$bin" train cam "${voc[@]}" > "$out/voc-train.log" 2>&1 && "$bin" cam --pseudo-labels "${voc[@]}" > "$out/voc-cam.log" 2>&1 && "$bin" eval pseudo "${voc[@]}" > "$out/voc-eval.log" 2>&1; then
    rate=$("$python" -c 'import json,sys; s = json.load(open(sys.argv[1])); r = s["ranks"][0]; print(r["images"], "images,", round(r["images_per_second"], 2), "img/s; seconds by phase", {k: round(v, 1) for k, v in s["seconds_by_phase"].items()})' "$out/runs/voc/pseudo_labels/val/.map/summary.json")
    note "cam --pseudo-labels on voc-mini val ($device): $rate"
    # 5. The segmenter on the GPU: v3+ trained on those labels (the val photos stand in for a
    # train split), its predictions with and without the CRF as a map phase, and their scores.
    seg=("${voc[@]}" --set data.train=data/voc-mini/val --set seg.labels="$out/runs/voc/pseudo_labels/val" --set seg.model.init= --set seg.train.steps=$steps --set seg.train.log_every=1 --set seg.infer.dense_crf=true)
    if "$bin" train seg "${seg[@]}" > "$out/seg-train.log" 2>&1 && "$bin" seg "${seg[@]}" > "$out/seg-infer.log" 2>&1 && "$bin" eval seg "${seg[@]}" > "$out/seg-eval.log" 2>&1; then
      seg_rate=$("$python" -c 'import json,sys; s = json.load(open(sys.argv[1])); r = s["ranks"][0]; print(r["images"], "images,", round(r["images_per_second"], 2), "img/s")' "$out/runs/voc/seg/pred/val/.map/summary.json")
      note "train seg (v3+ MobileNetV2, $device): $(compute_rate "$out/runs/voc/seg/metrics.jsonl") img/s (compute); seg map phase: $seg_rate; eval seg mIoU without / with the CRF: $(grep -o 'predictions: mIoU [0-9.]*' "$out/seg-eval.log" | grep -o '[0-9.]*$' | paste -sd/)"
    else
      note "train seg / seg / eval seg: FAILED (see $out/seg-*.log)"
    fi
  else
    note "cam --pseudo-labels on voc-mini: FAILED (see $out/voc-*.log)"
  fi
else
  note "cam --pseudo-labels on voc-mini: not run: no data/voc-mini/val (import it first: README, \"On a GPU machine\")"
fi

echo
echo "== GPU check summary ($device)"
printf '%s\n' "${results[@]}" | tee "$out/summary.txt"
