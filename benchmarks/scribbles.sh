#!/usr/bin/env bash
# Scribble supervision (benchmarks/results/scribbles.md; docs/methods.md §10). Per seed: scribbles
# drawn from the train split's ground-truth masks (`data scribbles --from-masks --seed S`), then
# DeepLab v3+ (the config's [seg]) trained on them three times: the partial cross-entropy alone,
# + the dense-CRF loss, + DFR (`seg.loss.regularizer` none, dense_crf, dfr), each predicting the
# val split (`seg`, scale 1.0 with flip, no CRF post-processing) and scored (`eval seg`). Finished
# runs are skipped. The table: benchmarks/scribbles_table.py.
#
#   make build weights && bash benchmarks/scribbles.sh synthetic   # 2000 + 500 synthetic images
#   make build weights && bash benchmarks/scribbles.sh voc         # voc-small (WSSS_VOC_DATA)
#
# WSSS_SEEDS (default "0 1 2"); WSSS_SCRIBBLE_LOSSES (default "none dense_crf dfr").
# WSSS_SCRIBBLE_ARGS: the strokes' settings (`data scribbles` options). voc-small's default is
# "--length 4 --brush 7" (5.7% of the train pixels; runs and scribbles named with "-dense"): at
# the generator's defaults (length 1, brush 3: 1.1%) the partial cross-entropy learns nothing on
# these 600 photos in 600 steps (benchmarks/results/scribbles.md).
# The regularizers' weight w is the reference's 2e-9 for 513 px crops scaled to these crops (the
# energy grows with the square of the pixel count): 5e-7 for the synthetic 128 px crops, 3.2e-8
# for voc-small's 256 px crops (WSSS_CRF_WEIGHT overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
DATASET=${1:-synthetic}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
LOSSES=${WSSS_SCRIBBLE_LOSSES:-"none dense_crf dfr"}
OUT=runs/evidence-scribbles
mkdir -p "$OUT/data"
case "$DATASET" in
    synthetic)
        train=$OUT/data/synthetic-train
        val=$OUT/data/synthetic-val
        [ -e "$train/_manifest.json" ] || "$BIN" data import synthetic --out "$train" --images 2000 --size 128 --classes 6 --shard-rows 500 --seed 0
        [ -e "$val/_manifest.json" ] || "$BIN" data import synthetic --out "$val" --images 500 --size 128 --classes 6 --shard-rows 500 --seed 1 --split val
        base=(--config configs/synthetic.toml)
        strokes=${WSSS_SCRIBBLE_ARGS:-}; suffix=""
        weight=${WSSS_CRF_WEIGHT:-5e-7} ;;
    voc)
        VOC=${WSSS_VOC_DATA:-../shared/data}
        [ -d "$VOC/voc-small/VOC2012" ] || { echo "scribbles.sh: no VOC photos at $VOC/voc-small/VOC2012" >&2; exit 2; }
        train=data/voc-small/train
        val=data/voc-small/val
        for split in train_aug val; do
            out=data/voc-small/${split%_aug}
            [ -e "$out/_manifest.json" ] || "$BIN" data import voc --root "$VOC/voc-small/VOC2012" --split "$split" --out "$out"
        done
        base=(--config configs/voc_small_mobilenet.toml)
        strokes=${WSSS_SCRIBBLE_ARGS---length 4 --brush 7}; suffix=${strokes:+-dense}
        weight=${WSSS_CRF_WEIGHT:-3.2e-8} ;;
    *) echo "scribbles.sh: synthetic or voc, not $DATASET" >&2; exit 2 ;;
esac
[ -f weights/mobilenet_v2.safetensors ] || bash scripts/fetch-weights.sh
for seed in $SEEDS; do
    scribbles=$OUT/data/$DATASET-scribbles$suffix-s$seed
    # shellcheck disable=SC2086 # the stroke options are words
    [ -e "$scribbles/_manifest.json" ] || "$BIN" data scribbles --from-masks --data "$train" --out "$scribbles" --seed "$seed" $strokes > "$scribbles.log" 2>&1
    "$BIN" data inspect --json "$scribbles" > "$scribbles.json"
    for loss in $LOSSES; do
        name=$DATASET-s$seed-$loss$suffix
        [ -f "$OUT/$name/eval/seg.json" ] && continue
        args=("${base[@]}" --set run.dir="$OUT" --set run.name="$name" --set run.seed="$seed" --set data.train="$train" --set data.val="$val"
              --set seg.labels="$scribbles" --set seg.loss.regularizer="$loss" --set seg.loss.crf.weight="$weight"
              --set seg.infer.split=val --set "seg.infer.scales=[1.0]" --set seg.infer.dense_crf=false)
        {
            "$BIN" train seg "${args[@]}" --resume
            "$BIN" seg "${args[@]}"
            "$BIN" eval seg "${args[@]}"
        } > "$OUT/$name.log" 2>&1
    done
done
python3 benchmarks/scribbles_table.py "$OUT" "$DATASET" $SEEDS --suffix "$suffix"
