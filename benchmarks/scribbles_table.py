"""The table of benchmarks/scribbles.sh: per seed and as mean ± std (sample std) over the seeds,
the share of pixels the scribbles label, the segmenter's val mIoU trained on them with the
partial cross-entropy alone, + the dense-CRF loss and + DFR, and each training's seconds per
step (its wall time over its steps: loader and checkpoints included).

    python3 benchmarks/scribbles_table.py runs/evidence-scribbles synthetic 0 1 2
"""
import json
import sys

from seed_table import load, miou, print_table

out, dataset, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
LOSSES = [("partial CE", "none"), ("+ dense-CRF loss", "dense_crf"), ("+ DFR", "dfr")]


def seconds_per_step(seed, loss):
    run = f"{out}/{dataset}-s{seed}-{loss}"
    with open(f"{run}/seg/metrics.jsonl") as f:
        steps = json.loads(f.readlines()[-1])["step"]
    return load(f"{run}.time.json")["train_seconds"] / steps


columns = [("labelled %", lambda s: 100.0 * load(f"{out}/data/{dataset}-scribbles-s{s}.json")["labelled_share"])]
columns += [(f"{name} (val mIoU)", lambda s, loss=loss: miou(load(f"{out}/{dataset}-s{s}-{loss}/eval/seg.json"))) for name, loss in LOSSES]
columns += [(f"{name} s/step", lambda s, loss=loss: seconds_per_step(s, loss)) for name, loss in LOSSES]
print_table(columns, seeds)
