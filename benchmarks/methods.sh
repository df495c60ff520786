#!/usr/bin/env bash
# Do the method add-ons help? Trains baseline CAM, +ISL, +FSL, +ISL+FSL, AMR and AMR+ISL+FSL
# from one config with 3 seeds each, makes and scores the CAMs of its val split, and prints
# the table (CAM mIoU at the best τ, mean ± std over seeds; benchmarks/methods_table.py). Each
# AMR run's spotlight branch is the baseline run of the same seed. Two runs at a time, one
# libtorch thread each (a 2-core machine).
#
#   make build weights && bash benchmarks/methods.sh [CONFIG] [OUT]
#     CONFIG  default configs/synthetic_cam.toml (the synthetic default);
#             configs/voc_small_mobilenet.toml for real photos (benchmarks/voc.sh)
#     OUT     default runs/evidence
#   WSSS_SEEDS="0 1 2", WSSS_JOBS=2, WSSS_CAM_SCALES="[1.0]" (CAM inference scales)
#
# The add-ons' settings are the configs' defaults (the papers': ISL 10 samples at weight 0.2,
# FSL μ 2.5, σ 5, weight 1, window 15; AMR λ 0.05, α 0.5, frozen spotlight, the compensation
# backbone at the config's method.amr.compensation_lr_mult: 1 in the MobileNetV2 configs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wsss-dist}
CONFIG=${1:-configs/synthetic_cam.toml}
OUT=${2:-runs/evidence}
SEEDS=${WSSS_SEEDS:-"0 1 2"}
JOBS=${WSSS_JOBS:-2}
SCALES=${WSSS_CAM_SCALES:-"[1.0]"}
mkdir -p "$OUT"

# The τ sweep goes to 0.95: single-scale CAMs of some variants score best above the default 0.60.
# The add-ons are compared on the CAMs of the held-out split, without the segmenter.
common=(--set run.dir="$OUT" --set run.threads=1 --set loader.threads=1 --set pseudo_label.threads=1
        --set cam.split=val --set seg.enabled=false --set "cam.scales=$SCALES"
        --set "eval.thresholds=[0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95]")

# name seed extra-args...
run_variant() {
    local name=$1 seed=$2
    shift 2
    local log="$OUT/$name-s$seed.log"
    if [ -f "$OUT/$name-s$seed/eval/pseudo.json" ]; then
        echo "done already: $name seed $seed"
        return
    fi
    echo "start: $name seed $seed"
    "$BIN" run --config "$CONFIG" "${common[@]}" --set run.seed="$seed" --set run.name="$name-s$seed" "$@" >"$log" 2>&1 \
        || { echo "FAILED: $name seed $seed (see $log)"; return 1; }
    echo "end: $name seed $seed"
}

export BIN OUT CONFIG
export -f run_variant
common_decl=$(declare -p common)
export common_decl
pool() { xargs -P "$JOBS" -L 1 bash -c 'eval "$common_decl"; run_variant "$@"' _; }
# A synthetic config generates its datasets in its first run: one run alone first.
first=${SEEDS%% *}
bash -c "eval \"\$common_decl\"; run_variant cam $first"
# The baselines come before AMR, which starts from them.
for seed in $SEEDS; do echo "cam $seed"; done | pool
isl=(--set method.isl.enabled=true)
fsl=(--set method.fsl.enabled=true)
for seed in $SEEDS; do
    amr=(--set method.base=amr --set method.amr.spotlight_init="$OUT/cam-s$seed")
    echo "cam_isl $seed ${isl[*]}"
    echo "cam_fsl $seed ${fsl[*]}"
    echo "cam_isl_fsl $seed ${isl[*]} ${fsl[*]}"
    echo "amr $seed ${amr[*]}"
    echo "amr_isl_fsl $seed ${amr[*]} ${isl[*]} ${fsl[*]}"
done | pool

python3 benchmarks/methods_table.py "$OUT" $SEEDS
