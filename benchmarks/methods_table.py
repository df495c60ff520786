"""The tables of benchmarks/methods.sh and benchmarks/voc.sh, from the runs' eval/*.json and
summary.json: per method variant the CAM mIoU at the best τ (mean ± std over seeds), the
pseudo-labels' mIoU and labelled share (the config's pseudo_label.method), and the cost
(training images/s and seconds); then the τ sweep of the baseline; then, where
eval/pseudo-METHOD.json files exist (benchmarks/voc.sh), each refinement method on the
baseline's CAMs. Where OUT/train-stats.json exists (`wsss-dist data inspect TRAIN --json`,
written by benchmarks/voc.sh), CAM mIoU is also given over background and the classes with
in at least 5% of the training images: on a small sample of VOC the rare classes score 0 whatever the method.

    python3 benchmarks/methods_table.py runs/evidence 0 1 2
"""
import glob
import json
import os
import statistics
import sys

VARIANTS = [("cam", "CAM baseline"), ("cam_isl", "CAM + ISL"), ("cam_fsl", "CAM + FSL"), ("cam_isl_fsl", "CAM + ISL + FSL"),
            ("amr", "AMR"), ("amr_isl_fsl", "AMR + ISL + FSL")]


def mean_std(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def per_seed(values, fmt="{:.1f}"):
    return ", ".join(fmt.format(v) for v in values)


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    out, seeds = sys.argv[1], sys.argv[2:]
    rows, label_baseline, sweeps = [], [], {}
    stats = f"{out}/train-stats.json"
    if os.path.exists(stats):
        train = load(stats)
        common = [0] + [c for c, n in enumerate(train["images_per_class"]) if c > 0 and n >= max(1, 0.05 * train["rows"])]
    else:
        common = None
    common_mean = lambda ious: 100 * statistics.mean(ious[c] for c in common)
    for key, label in VARIANTS:
        runs = [f"{out}/{key}-s{s}" for s in seeds if os.path.exists(f"{out}/{key}-s{s}/eval/pseudo.json")]
        if not runs:
            continue
        cam = [load(f"{r}/eval/cam.json")["report"] for r in runs]
        pseudo = [load(f"{r}/eval/pseudo.json") for r in runs]
        train = [load(f"{r}/summary.json")["train"] for r in runs]
        miou = [100 * c["best"]["miou"] for c in cam]
        common_col = f"| {mean_std([common_mean(c['best']['iou']) for c in cam])} " if common else ""
        rows.append(
            f"| {label} | {len(runs)} | **{mean_std(miou)}** | {per_seed(miou)} {common_col}| {per_seed([c['best_tau'] for c in cam], '{:.2f}')} "
            f"| {mean_std([100 * p['report']['miou'] for p in pseudo])} | {100 * statistics.mean(p['report']['labelled'] for p in pseudo):.1f}% "
            f"| {statistics.mean(t['images_per_s'] for t in train):.1f} | {statistics.mean(t['seconds'] for t in train):.0f} |")
        label_baseline += [(100 * c["baseline"]["miou"], common_mean(c["baseline"]["iou"]) if common else None) for c in cam]
        sweeps[label] = [[100 * p["miou"] for p in c["sweep"]] for c in cam]
        taus = [p["tau"] for p in cam[0]["sweep"]]
    common_head = f"| the same over background + the {len(common) - 1} classes in >= 5% of the training images " if common else ""
    print(f"| variant | seeds | CAM mIoU (best τ), mean ± std | per seed {common_head}| best τ per seed | pseudo-label mIoU (the config's method) | labelled | train images/s | train s |")
    print("|---|---|---|---|" + ("---|" if common else "") + "---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nImage-label baseline (every pixel of a present class, no localisation): {mean_std([b[0] for b in label_baseline])} mIoU"
          + (f"; over background + the common classes {mean_std([b[1] for b in label_baseline])}." if common else "."))
    print("\nCAM mIoU over τ (mean over seeds):\n")
    print("| variant | " + " | ".join(f"{t:.2f}" for t in taus) + " |")
    print("|---|" + "---:|" * len(taus))
    for label, sweep in sweeps.items():
        print(f"| {label} | " + " | ".join(f"{statistics.mean(col):.1f}" for col in zip(*sweep)) + " |")
    methods = sorted({os.path.basename(p)[len("pseudo-"):-len(".json")] for p in glob.glob(f"{out}/cam-s*/eval/pseudo-*.json")})
    if methods:
        print("\nPseudo-labels of the CAM baseline's CAMs, by refinement method (mIoU on the labelled pixels):\n")
        print("| method | seeds | mIoU, mean ± std | per seed | labelled |")
        print("|---|---|---|---|---|")
        for method in methods:
            reports = [load(p)["report"] for s in seeds for p in [f"{out}/cam-s{s}/eval/pseudo-{method}.json"] if os.path.exists(p)]
            miou = [100 * r["miou"] for r in reports]
            print(f"| {method} | {len(reports)} | {mean_std(miou)} | {per_seed(miou)} | {100 * statistics.mean(r['labelled'] for r in reports):.1f}% |")


if __name__ == "__main__":
    main()
