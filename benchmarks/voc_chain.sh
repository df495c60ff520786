#!/usr/bin/env bash
# The whole chain on real photos (benchmarks/results/voc.md, "The chain"): `wsss-dist run` with
# configs/voc_small_mobilenet.toml (CAM classifier, CAMs and irn_seeds pseudo-labels of
# voc-small's 600 train photos, DeepLab v3+ trained on them, its predictions of the 300
# held-out val photos with and without the CRF, the CAMs of val), one run per seed, each alone
# on the machine and timed; then the table (benchmarks/voc_chain_table.py): every stage's mIoU,
# mean ± std over seeds, on val and on train, and IoU per class on val.
#
#   make build weights && bash benchmarks/voc_chain.sh
#
# WSSS_VOC_DATA names the folder holding voc-small/ (default ../shared/data); WSSS_SEEDS
# (default "0 1 2"); extra arguments go to `run` (e.g. --set seg.train.epochs=4).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
VOC=${WSSS_VOC_DATA:-../shared/data}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
OUT=runs/evidence-voc-chain
[ -d "$VOC/voc-small/VOC2012" ] || { echo "voc_chain.sh: no VOC photos at $VOC/voc-small/VOC2012 (set WSSS_VOC_DATA to the folder holding voc-small/)" >&2; exit 2; }
[ -f weights/mobilenet_v2.safetensors ] || bash scripts/fetch-weights.sh
for split in train_aug val; do
    out=data/voc-small/${split%_aug}
    [ -e "$out/_manifest.json" ] || "$BIN" data import voc --root "$VOC/voc-small/VOC2012" --split "$split" --out "$out"
done
mkdir -p "$OUT"
for seed in $SEEDS; do
    run=chain-s$seed
    [ -f "$OUT/$run/summary.json" ] && continue
    start=$(date +%s)
    "$BIN" run --config configs/voc_small_mobilenet.toml --set run.dir="$OUT" --set run.name="$run" --set run.seed="$seed" "$@" > "$OUT/$run.log" 2>&1
    echo $(( $(date +%s) - start )) > "$OUT/$run/wall_seconds"
done
# Ablation: the same segmenter predicting val at scale 1.0 alone (+ flip), beside the config's
# scales, into a run of its own (chain-s<seed>-scale1).
for seed in $SEEDS; do
    run=chain-s$seed-scale1
    [ -f "$OUT/$run/eval/seg_crf.json" ] && continue
    ablation=(--config configs/voc_small_mobilenet.toml --set run.dir="$OUT" --set run.name="$run" --set "seg.infer.scales=[1.0]"
        --set seg.infer.checkpoint="$OUT/chain-s$seed/seg")
    "$BIN" seg "${ablation[@]}" > "$OUT/$run.log" 2>&1
    "$BIN" eval seg "${ablation[@]}" >> "$OUT/$run.log" 2>&1
done
python3 benchmarks/voc_chain_table.py "$OUT" $SEEDS
