"""The table of benchmarks/irn.sh: per seed and as mean ± std over the seeds, on the train
split: the CAMs (best τ), the irn_seeds labels (on the pixels they label, the share labelled,
over every pixel with the uncertain ones counted as errors), the random walk's labels (every
pixel), and the time of each step.

    python3 benchmarks/irn_table.py runs/irn 0 1 2
"""
import sys

from seed_table import load, miou, print_table

out, seeds = sys.argv[1], sys.argv[2:]


def report(seed, name):
    return load(f"{out}/irn-s{seed}/eval/{name}.json")["report"]


def summary(seed):
    return load(f"{out}/irn-s{seed}/summary.json")


columns = [
    ("CAM (best τ)", lambda s: 100.0 * report(s, "cam")["best"]["miou"]),
    ("irn_seeds (labelled pixels)", lambda s: miou(load(f"{out}/irn-s{s}/eval/pseudo.json"))),
    ("labelled %", lambda s: 100.0 * report(s, "pseudo")["labelled"]),
    ("irn_seeds (every pixel)", lambda s: 100.0 * report(s, "pseudo")["miou_all_pixels"]),
    ("irn_rw (every pixel)", lambda s: miou(load(f"{out}/irn-s{s}/eval/pseudo_rw.json"))),
    # A resumed run reports the seconds of the steps it trained, not those of an earlier run.
    ("train irn s", lambda s: summary(s)["train_irn"]["seconds"]),
    ("irn_rw map phase s", lambda s: summary(s)["pseudo_label"]["map"]["seconds"]),
]
print_table(columns, seeds)
