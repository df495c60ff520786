"""The table of benchmarks/voc_chain.sh from each run's eval/*.json and wall_seconds: every
stage's mIoU (mean ± std over seeds, then per seed), the stages of val side by side, then IoU
per class on val (mean over seeds) for the classes that any stage scores above 0.

    python3 benchmarks/voc_chain_table.py runs/evidence-voc-chain 0 1 2
"""
import json
import statistics
import sys

# (file, label, split, how to read the mIoU from its report)
STAGES = [
    ("cam", "CAM (best τ)", "train", lambda r: r["best"]),
    ("pseudo", "irn_seeds pseudo-labels, labelled pixels", "train", lambda r: r),
    ("cam_val", "CAM (best τ)", "val", lambda r: r["best"]),
    ("seg", "segmenter", "val", lambda r: r),
    ("seg_crf", "segmenter + CRF", "val", lambda r: r),
]


def load(path):
    with open(path) as f:
        return json.load(f)


def mean_std(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main():
    out, seeds = sys.argv[1], sys.argv[2:]
    runs = {s: f"{out}/chain-s{s}" for s in seeds}
    reports = {s: {name: load(f"{run}/eval/{name}.json")["report"] for name, *_ in STAGES} for s, run in runs.items()}
    print("| stage | split | mIoU, mean ± std | per seed |")
    print("|---|---|---|---|")
    for name, label, split, scored in STAGES:
        values = [100 * scored(reports[s][name])["miou"] for s in seeds]
        print(f"| {label} | {split} | **{mean_std(values)}** | {', '.join(f'{v:.1f}' for v in values)} |")
    pseudo = [reports[s]["pseudo"] for s in seeds]
    print(f"| irn_seeds pseudo-labels, every pixel | train | {mean_std([100 * p['miou_all_pixels'] for p in pseudo])} | "
          f"labelled {mean_std([100 * p['labelled'] for p in pseudo])}% |")
    for name, label in (("seg", "segmenter, scale 1.0 alone (ablation)"), ("seg_crf", "segmenter + CRF, scale 1.0 alone (ablation)")):
        try:
            values = [100 * load(f"{out}/chain-s{s}-scale1/eval/{name}.json")["report"]["miou"] for s in seeds]
        except FileNotFoundError:
            continue
        print(f"| {label} | val | {mean_std(values)} | {', '.join(f'{v:.1f}' for v in values)} |")
    gain = [100 * (reports[s]["seg_crf"]["miou"] - reports[s]["cam_val"]["best"]["miou"]) for s in seeds]
    print(f"| segmenter + CRF − CAM | val | **{mean_std(gain)}** | {', '.join(f'{v:+.1f}' for v in gain)} |")
    seconds = [int(open(f"{run}/wall_seconds").read()) for run in runs.values()]
    print(f"\nWhole run (`wsss-dist run`), wall seconds: {mean_std(seconds)} ({', '.join(map(str, seconds))}).\n")
    classes = reports[seeds[0]]["seg"]["classes"]
    columns = [("cam_val", "CAM", lambda r: r["best"]), ("seg", "segmenter", lambda r: r), ("seg_crf", "+ CRF", lambda r: r)]
    mean_iou = {name: [statistics.mean(100 * (read(reports[s][name])["iou"][c] or 0.0) for s in seeds) for c in range(len(classes))]
                for name, _, read in columns}
    print("| class (val) | " + " | ".join(label for _, label, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for c, cls in enumerate(classes):
        if any(mean_iou[name][c] > 0 for name, *_ in columns):
            print(f"| {cls} | " + " | ".join(f"{mean_iou[name][c]:.1f}" for name, *_ in columns) + " |")


if __name__ == "__main__":
    main()
