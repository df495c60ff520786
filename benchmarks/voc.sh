#!/usr/bin/env bash
# WSSS on real photos (benchmarks/results/voc.md): imports voc-mini and voc-small, then for a
# MobileNetV2 config from ImageNet weights runs the method variants with 3 seeds
# (benchmarks/methods.sh: CAM, +ISL, +FSL, +ISL+FSL, AMR, AMR+ISL+FSL, each scored on voc-mini's
# 48 val photos), refines the baseline's CAMs with each pseudo-label method (threshold, crf,
# irn_seeds) and prints the tables.
#
#   make build weights && bash benchmarks/voc.sh [small|mini]      (default small)
#
# WSSS_VOC_DATA names the folder holding voc-mini/ and voc-small/ (VOC layout, see their
# READMEs); default ../shared/data. WSSS_SEEDS, WSSS_JOBS, WSSS_CAM_SCALES as in methods.sh;
# WSSS_VARIANTS=baseline runs the CAM baseline alone (no add-ons).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
VOC=${WSSS_VOC_DATA:-../shared/data}
SET=${1:-small}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
case "$SET" in
    small) CONFIG=configs/voc_small_mobilenet.toml ;;
    mini) CONFIG=configs/voc_mini_mobilenet.toml ;;
    *) echo "voc.sh: unknown set '$SET' (small or mini)" >&2; exit 2 ;;
esac
OUT=runs/evidence-voc-$SET
for dir in "$VOC/voc-mini/VOC2012" "$VOC/voc-small/VOC2012"; do
    [ -d "$dir" ] || { echo "voc.sh: no VOC photos at $dir (set WSSS_VOC_DATA to the folder holding voc-mini/ and voc-small/)" >&2; exit 2; }
done
[ -f weights/mobilenet_v2.safetensors ] || bash scripts/fetch-weights.sh

import() {
    { [ -e "$3/_manifest.json" ] || [ -e "$3/manifest.json" ]; } || "$BIN" data import voc --root "$1" --split "$2" --out "$3"
}
import "$VOC/voc-mini/VOC2012" train_aug data/voc-mini/train
import "$VOC/voc-mini/VOC2012" val data/voc-mini/val
import "$VOC/voc-small/VOC2012" train_aug data/voc-small/train
import "$VOC/voc-small/VOC2012" val data/voc-small/val
mkdir -p "$OUT"
train=$(sed -n 's/^train = "\(.*\)"$/\1/p' "$CONFIG")
"$BIN" data inspect "$train" --json > "$OUT/train-stats.json.partial" && mv "$OUT/train-stats.json.partial" "$OUT/train-stats.json"

if [ "${WSSS_VARIANTS:-all}" = baseline ]; then
    common=(--set run.dir="$OUT" --set cam.split=val --set seg.enabled=false --set "cam.scales=${WSSS_CAM_SCALES:-[1.0]}"
            --set "eval.thresholds=[0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95]")
    for seed in $SEEDS; do
        [ -f "$OUT/cam-s$seed/eval/pseudo.json" ] || "$BIN" run --config "$CONFIG" "${common[@]}" --set run.seed="$seed" --set run.name="cam-s$seed" > "$OUT/cam-s$seed.log" 2>&1
    done
else
    bash benchmarks/methods.sh "$CONFIG" "$OUT" > /dev/null
fi

# Each refinement method on the baseline's CAMs: eval/pseudo-METHOD.json per run (irn_seeds,
# the configs' method, last: eval/pseudo.json ends as the run left it).
for seed in $SEEDS; do
    run=$OUT/cam-s$seed
    for method in threshold crf irn_seeds; do
        [ -f "$run/eval/pseudo-$method.json" ] && continue
        args=(--config "$run/config.toml" --set pseudo_label.method="$method" --set pseudo_label.out="$run/pseudo_labels/val-$method")
        "$BIN" pseudo-label "${args[@]}" 2>> "$run/pseudo-methods.log"
        "$BIN" eval pseudo "${args[@]}" > /dev/null 2>> "$run/pseudo-methods.log"
        cp "$run/eval/pseudo.json" "$run/eval/pseudo-$method.json"
        cp "$run/eval/pseudo.md" "$run/eval/pseudo-$method.md"
    done
done
python3 benchmarks/methods_table.py "$OUT" $SEEDS
