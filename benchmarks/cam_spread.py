"""How far each variant's CAMs spread over the objects: per run, over every (val image, present
class), the fraction of the class's ground-truth pixels where the CAM is >= 0.5 (coverage) and
the fraction of CAM >= 0.5 pixels that lie on the class (precision), averaged; also the mean CAM
value on and off the class. Reads the CAM datasets and the synthetic val masks with pyarrow.

    .deps/pyenv/bin/python benchmarks/cam_spread.py data/synthetic/val runs/evidence/cam-s0 ...
"""
import glob, io, json, sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def table(directory, columns):
    return pq.read_table(sorted(glob.glob(directory + "/*.parquet")), columns=columns).to_pylist()


masks = {r["id"]: np.array(Image.open(io.BytesIO(r["mask"]))) for r in table(sys.argv[1], ["id", "mask"])}
for run in sys.argv[2:]:
    coverage, precision, inside, outside = [], [], [], []
    for r in table(run + "/cams/val", ["id", "classes", "cam", "height", "width"]):
        h, w = r["height"], r["width"]
        cams = np.frombuffer(r["cam"], dtype="<f2").astype(np.float32).reshape(len(r["classes"]), -(-h // 4), -(-w // 4))
        mask = masks[r["id"]]
        for c, cam in zip(r["classes"], cams):
            # Stride-4 grid to pixels (nearest), enough for a spread statistic.
            full = np.kron(cam, np.ones((4, 4), np.float32))[:h, :w]
            on, hot = mask == c, full >= 0.5
            coverage.append((hot & on).sum() / max(on.sum(), 1))
            precision.append((hot & on).sum() / max(hot.sum(), 1))
            inside.append(full[on].mean() if on.any() else 0.0)
            outside.append(full[~on & (mask != 255)].mean())
    print(json.dumps({"run": run.rstrip("/").split("/")[-1], "coverage": round(float(np.mean(coverage)), 3), "precision": round(float(np.mean(precision)), 3), "mean_cam_on_class": round(float(np.mean(inside)), 3), "mean_cam_off_class": round(float(np.mean(outside)), 3)}))
