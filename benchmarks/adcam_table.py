"""The table of benchmarks/adcam.sh: per variant, mean ± std over seeds of the CAMs' mIoU at the
best τ (and that τ), coverage and precision there, the pseudo-labels' mIoU on their labelled
pixels, the share labelled and the mIoU over every pixel, and the CAM stage's images/s.

    python3 benchmarks/adcam_table.py runs/evidence-adcam synthetic 0 1 2
"""
import json
import statistics
import sys
from pathlib import Path

out, dataset, seeds = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
VARIANTS = [("", "CAM"), ("-couple", "direct coupling"), ("-ad_cam", "AD-CAM (cosine refinement)"),
            ("-diffusion", "diffusion, no refinement"), ("-shared", "AD-CAM, shared refinement")]


def load(path):
    return json.loads(path.read_text()) if path.exists() else None


def figures(run):
    cam, pseudo = load(run / "eval/cam.json"), load(run / "eval/pseudo.json")
    summary = load(run / "cams/val/.map/summary.json")
    if cam is None or pseudo is None or summary is None:
        return None
    best = cam["report"]["best"]
    p = pseudo["report"]
    return {"miou": 100 * best["miou"], "tau": cam["report"]["best_tau"], "coverage": 100 * best["coverage"],
            "precision": 100 * best["precision"], "pseudo": 100 * p["miou"], "labelled": 100 * p["labelled"],
            "pseudo_all": 100 * p["miou_all_pixels"], "rate": summary["ranks"][0]["images_per_second"]}


def cell(values, digits=1):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


print(f"| {dataset}, seeds {' '.join(seeds)} | CAM mIoU (best τ) | τ | coverage | precision | pseudo mIoU (labelled) | labelled % | pseudo mIoU (all pixels) | CAM images/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for suffix, name in VARIANTS:
    rows = [f for f in (figures(out / f"{dataset}-s{seed}{suffix}") for seed in seeds) if f]
    if not rows:
        continue
    col = lambda key: [r[key] for r in rows]
    print(f"| {name} | {cell(col('miou'))} | {cell(col('tau'), 2)} | {cell(col('coverage'))} | {cell(col('precision'))} | "
          f"{cell(col('pseudo'))} | {cell(col('labelled'))} | {cell(col('pseudo_all'))} | {cell(col('rate'))} |")
