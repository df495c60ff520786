#!/usr/bin/env bash
# AD-CAM against the plain CAM and the direct coupling (benchmarks/results/adcam.md). Per seed:
# the CAM classifier trained once by `run` (CAMs of the held-out split, their pseudo-labels),
# then the same classifier's CAMs of that split coupled with its feature attention and
# AD-CAM'd (`cam.refine`, docs/methods.md §9), each scored by `eval cam` (mIoU at the best τ,
# coverage and precision there) and refined into irn_seeds pseudo-labels scored by
# `eval pseudo`. The table: benchmarks/adcam_table.py. Each dataset's runs go alone on the
# machine: the table reports the CAM stage's images/s.
#
#   make build weights && bash benchmarks/adcam.sh synthetic     # the synthetic default
#   make build weights && bash benchmarks/adcam.sh voc           # voc-small (WSSS_VOC_DATA)
#
# WSSS_SEEDS (default "0 1 2"); WSSS_ADCAM_VARIANTS overrides the variants (name:settings ...).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
DATASET=${1:-synthetic}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
OUT=runs/evidence-adcam
case "$DATASET" in
    synthetic) base=(--config configs/synthetic_cam.toml) ;;
    voc)
        VOC=${WSSS_VOC_DATA:-../shared/data}
        [ -d "$VOC/voc-small/VOC2012" ] || { echo "adcam.sh: no VOC photos at $VOC/voc-small/VOC2012" >&2; exit 2; }
        for split in train_aug val; do
            out=data/voc-small/${split%_aug}
            [ -e "$out/_manifest.json" ] || "$BIN" data import voc --root "$VOC/voc-small/VOC2012" --split "$split" --out "$out"
        done
        base=(--config configs/voc_small_mobilenet.toml --set cam.split=val --set seg.enabled=false) ;;
    *) echo "adcam.sh: synthetic or voc, not $DATASET" >&2; exit 2 ;;
esac
[ -f weights/mobilenet_v2.safetensors ] || bash scripts/fetch-weights.sh
# name:settings (comma-separated --set values); the defaults of [cam.ad_cam] are AD-CAM's.
VARIANTS=${WSSS_ADCAM_VARIANTS:-"couple:cam.refine=couple ad_cam:cam.refine=ad_cam diffusion:cam.refine=ad_cam,cam.ad_cam.refinement=none shared:cam.refine=ad_cam,cam.ad_cam.refinement=shared"}
mkdir -p "$OUT"
for seed in $SEEDS; do
    run=$DATASET-s$seed
    common=("${base[@]}" --set run.dir="$OUT" --set run.seed="$seed")
    [ -f "$OUT/$run/eval/pseudo.json" ] || "$BIN" run "${common[@]}" --set run.name="$run" > "$OUT/$run.log" 2>&1
    checkpoint=$(ls "$OUT/$run"/checkpoints/step-*.safetensors | grep -v optim | tail -1)
    for variant in $VARIANTS; do
        name=$run-${variant%%:*}
        sets=()
        IFS=, read -ra settings <<< "${variant#*:}"
        for setting in "${settings[@]}"; do sets+=(--set "$setting"); done
        args=("${common[@]}" --set run.name="$name" --set cam.checkpoint="$checkpoint" "${sets[@]}")
        [ -f "$OUT/$name/eval/pseudo.json" ] && continue
        { "$BIN" cam "${args[@]}" && "$BIN" eval cam "${args[@]}" && "$BIN" pseudo-label "${args[@]}" && "$BIN" eval pseudo "${args[@]}"; } > "$OUT/$name.log" 2>&1
    done
done
python3 benchmarks/adcam_table.py "$OUT" "$DATASET" $SEEDS
