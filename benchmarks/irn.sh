#!/usr/bin/env bash
# What IRNet's random walk does to the pseudo-labels (docs/methods.md §8): for each seed, `run`
# with `pseudo_label.method = "irn_rw"` (the CAM classifier, the CAMs of the train split, their
# irn_seeds labels, `train irn` on them, the walk), the segmenter off; prints the table of the
# CAMs, the irn_seeds labels and the walk's labels on the train split (benchmarks/irn_table.py).
# Finished runs are skipped.
#
#   make build weights && bash benchmarks/irn.sh [CONFIG] [OUT]
#     CONFIG  default configs/synthetic.toml;  OUT  default runs/irn;  WSSS_SEEDS="0 1 2"
#   voc-mini (imported as in configs/voc_mini_mobilenet.toml):
#     bash benchmarks/irn.sh configs/voc_mini_mobilenet.toml runs/irn-voc-mini
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
CONFIG=${1:-configs/synthetic.toml}
OUT=${2:-runs/irn}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
mkdir -p "$OUT"
for seed in $SEEDS; do
    if [ ! -f "$OUT/irn-s$seed/eval/pseudo_rw.json" ]; then
        echo "seed $seed: CAMs, irn_seeds, train irn, the random walk"
        "$BIN" run --config "$CONFIG" --set run.dir="$OUT" --set run.seed="$seed" --set run.name="irn-s$seed" \
            --set cam.split=train --set seg.enabled=false --set pseudo_label.method=irn_rw >"$OUT/irn-s$seed.log" 2>&1
    fi
done
python3 benchmarks/irn_table.py "$OUT" $SEEDS
