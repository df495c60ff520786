"""The table of benchmarks/scribbles.sh: per seed and as mean ± std (sample std) over the seeds,
the share of pixels the scribbles label, the segmenter's val mIoU trained on them with the
partial cross-entropy alone, + the dense-CRF loss and + DFR, and each training's median
seconds of compute per step (the trainer's `compute_s`: forward, losses, backward and update;
the median keeps a step slowed by another process from counting).

    python3 benchmarks/scribbles_table.py runs/evidence-scribbles synthetic 0 1 2
    python3 benchmarks/scribbles_table.py runs/evidence-scribbles voc 0 1 2 --suffix -dense
"""
import json
import statistics
import sys

from seed_table import load, miou, print_table

args = sys.argv[1:]
suffix = ""
if "--suffix" in args:
    at = args.index("--suffix")
    suffix = args[at + 1]
    del args[at : at + 2]
out, dataset, seeds = args[0], args[1], args[2:]
LOSSES = [("partial CE", "none"), ("+ dense-CRF loss", "dense_crf"), ("+ DFR", "dfr")]


def seconds_per_step(seed, loss):
    with open(f"{out}/{dataset}-s{seed}-{loss}{suffix}/seg/metrics.jsonl") as f:
        return statistics.median(json.loads(line)["compute_s"] for line in f)


columns = [("labelled %", lambda s: 100.0 * load(f"{out}/data/{dataset}-scribbles{suffix}-s{s}.json")["labelled_share"])]
columns += [(f"{name} (val mIoU)", lambda s, loss=loss: miou(load(f"{out}/{dataset}-s{s}-{loss}{suffix}/eval/seg.json"))) for name, loss in LOSSES]
columns += [(f"{name} s/step", lambda s, loss=loss: seconds_per_step(s, loss)) for name, loss in LOSSES]
print_table(columns, seeds)
