#!/usr/bin/env bash
# Does the segmenter beat its pseudo-labels, and does the dense-CRF loss help? For each seed:
# the whole `make demo` pipeline (configs/synthetic.toml: CAM classifier, CAMs and pseudo-labels
# of the train split, DeepLab v3+ with cross-entropy alone, its val predictions without and with
# the CRF, every evaluation), timed; then a second segmenter on the same pseudo-labels with the
# dense-CRF loss added, predicted and scored the same way. Finished steps are skipped. Prints the table
# (benchmarks/segmenter_table.py).
#
#   make build weights && bash benchmarks/segmenter.sh [CONFIG] [OUT]
#     CONFIG  default configs/synthetic.toml;  OUT  default runs/segmenter
#   WSSS_SEEDS="0 1 2"; WSSS_CRF_WEIGHT (default 5e-7: the reference's 2e-9 for 513 px crops
#   scaled by (256²/64²)², as the energy grows with the square of the pixel count and these
#   crops are 128 px, 64 after the loss's downscale)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
CONFIG=${1:-configs/synthetic.toml}
OUT=${2:-runs/segmenter}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
WEIGHT=${WSSS_CRF_WEIGHT:-5e-7}
mkdir -p "$OUT"

for seed in $SEEDS; do
    run=(--config "$CONFIG" --set run.dir="$OUT" --set run.seed="$seed")
    if [ ! -f "$OUT/ce-s$seed/summary.json" ]; then
        echo "seed $seed: the pipeline with the cross-entropy segmenter"
        start=$(date +%s)
        "$BIN" run "${run[@]}" --set run.name="ce-s$seed" >"$OUT/ce-s$seed.log" 2>&1
        echo "{\"seconds\": $(( $(date +%s) - start ))}" >"$OUT/ce-s$seed.time.json"
    fi
    crf=("${run[@]}" --set run.name="crf-s$seed" --set seg.labels="$OUT/ce-s$seed/pseudo_labels/train"
         --set seg.loss.regularizer=dense_crf --set seg.loss.crf.weight="$WEIGHT")
    if [ ! -f "$OUT/crf-s$seed/eval/seg.json" ] || [ ! -f "$OUT/crf-s$seed/eval/seg_crf.json" ]; then
        echo "seed $seed: the segmenter with the dense-CRF loss"
        {
            "$BIN" train seg "${crf[@]}" --resume
            "$BIN" seg "${crf[@]}" --set seg.infer.dense_crf=false
            "$BIN" seg "${crf[@]}" --set seg.infer.dense_crf=true
            "$BIN" eval seg "${crf[@]}"
        } >>"$OUT/crf-s$seed.log" 2>&1
    fi
done
python3 benchmarks/segmenter_table.py "$OUT" $SEEDS
