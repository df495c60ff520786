"""The table of benchmarks/methods.sh: CAM mIoU at the best τ (mean ± std over seeds) and
training images/s per method variant, from the runs' eval/cam.json and summary.json.

    python3 benchmarks/methods_table.py runs/evidence 0 1 2
"""
import json, os, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
variants = [("cam", "CAM baseline"), ("cam_isl", "CAM + ISL"), ("cam_fsl", "CAM + FSL"), ("cam_isl_fsl", "CAM + ISL + FSL"), ("amr", "AMR"), ("amr_isl_fsl", "AMR + ISL + FSL")]
rows = []
for key, label in variants:
    miou, tau, speed, label_baseline = [], [], [], []
    for s in seeds:
        if not os.path.exists(f"{out}/{key}-s{s}/eval/cam.json"):
            continue
        summary = json.load(open(f"{out}/{key}-s{s}/summary.json"))
        report = json.load(open(f"{out}/{key}-s{s}/eval/cam.json"))["report"]
        miou.append(100 * report["best"]["miou"])
        tau.append(report["best_tau"])
        speed.append(summary["train"]["images_per_s"])
        label_baseline.append(100 * report["baseline"]["miou"])
    mean = statistics.mean(miou)
    std = statistics.stdev(miou) if len(miou) > 1 else 0.0
    img_s = statistics.mean(speed)
    rows.append(f"| {label} | {len(miou)} | {mean:.1f} ± {std:.1f} | {', '.join(f'{m:.1f}' for m in miou)} | {', '.join(f'{t:.2f}' for t in tau)} | {img_s:.1f} |")
print("| variant | seeds | CAM mIoU (best τ), mean ± std | per seed | best τ per seed | train images/s (shared machine) |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
print(f"\nImage-label baseline (every pixel of a present class, no localisation): {statistics.mean(label_baseline):.1f} mIoU.")
