"""The reference side of the random-walk benchmark (benchmarks/walk.rs is ours).

IRNet computes its random-walk pseudo-labels densely (misc/indexing.py `propagate_to_edge`,
step/make_sem_seg_labels.py): an n x n affinity matrix of the stride-4 grid built from the
boundary map padded with 1 (radius 5, self-loops 1), raised to beta elementwise, normalised by
columns and squared exp_times times; the CAMs times (1 - B) multiplied by it; upsampled x4
(bilinear), cropped, divided by the global max, a background row of 0.25 in front, argmax.
This script does those operations in PyTorch on the CPU (written here after the reference's
formulas, docs/methods.md section 8), so both tools run on the same inputs on one machine.

  walk_torch.py inputs --out F [--images N --grid H W --classes K --seed S]
  walk_torch.py run --inputs F --out LABELS [--threads T]     (prints JSON: images/s, memory)
  walk_torch.py agree A B                                     (prints JSON: label agreement)
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

RADIUS, BETA, EXP_TIMES, BG_THRESHOLD = 5, 10.0, 8, 0.25


def make_inputs(args):
    """Images with 2-3 elliptic objects: a boundary map high on their outlines, and CAMs that
    cover only the middle of an object (the partial activation the walk is meant to spread)."""
    rng = np.random.default_rng(args.seed)
    h, w = args.grid
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tensors = {}
    for i in range(args.images):
        boundary = np.zeros((h, w), np.float32)
        cams = []
        for k in range(rng.integers(2, 4)):
            cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
            ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
            radial = np.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2)
            outline = np.exp(-(((radial - 1.0) * min(ry, rx)) ** 2) / 2.0)
            boundary = np.maximum(boundary, outline)
            if k < args.classes:
                cams.append(np.exp(-(radial / 0.5) ** 2 / 2.0))
        boundary = np.clip(boundary + rng.uniform(0, 0.1, (h, w)), 0, 1).astype(np.float32)
        classes = np.sort(rng.choice(np.arange(1, 21), len(cams), replace=False)).astype(np.int64)
        tensors[f"boundary.{i}"] = boundary
        tensors[f"cams.{i}"] = np.stack(cams).astype(np.float32)
        tensors[f"classes.{i}"] = classes
        tensors[f"size.{i}"] = np.array([4 * h - rng.integers(0, 4), 4 * w - rng.integers(0, 4)], np.int64)
    save_file(tensors, args.out)


def directions(radius):
    """IRNet's path index: destination offsets of a half-neighbourhood and, for each, the cells
    within distance 1 of the segment from the source."""
    offsets = [(0, x) for x in range(1, radius)]
    offsets += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    out = []
    for dy, dx in offsets:
        cells = [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
                 if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1]
        out.append(((dy, dx), cells))
    return out


def dense_affinity(boundary):
    """The n x n matrix A of the grid: 1 on the diagonal, a_ij = 1 - max of B on the path for
    the pairs of the path index (both orders), B padded with 1 so that paths leaving the grid
    have affinity 0."""
    h, w = boundary.shape
    r = RADIUS
    padded = F.pad(boundary, (r, r, 0, r), value=1.0)
    index = torch.arange(h * w).view(h, w)
    padded_index = F.pad(index, (r, r, 0, r), value=-1)
    affinity = torch.eye(h * w)
    for (dy, dx), cells in directions(r):
        path_max = torch.stack([padded[y:y + h, r + x:r + x + w] for y, x in cells]).amax(0)
        dst = padded_index[dy:dy + h, r + dx:r + dx + w]
        keep = dst >= 0
        src, dst, value = index[keep], dst[keep], (1 - path_max)[keep]
        affinity[src, dst] = value
        affinity[dst, src] = value
    return affinity


def walk_labels(boundary, cams, classes, size):
    h, w = boundary.shape
    transition = dense_affinity(boundary) ** BETA
    transition = transition / transition.sum(0, keepdim=True)
    for _ in range(EXP_TIMES):
        transition = transition @ transition
    walked = (cams * (1 - boundary)).view(-1, h * w) @ transition
    up = F.interpolate(walked.view(1, -1, h, w), scale_factor=4, mode="bilinear", align_corners=False)[0, :, :size[0], :size[1]]
    up = up / up.max()
    scores = F.pad(up, (0, 0, 0, 0, 1, 0), value=BG_THRESHOLD)
    keys = torch.cat([torch.zeros(1, dtype=torch.int64), classes])
    return keys[scores.argmax(0)].to(torch.uint8)


def memory_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak():
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run(args):
    torch.set_num_threads(args.threads)
    inputs = {k: torch.from_numpy(v) for k, v in load_file(args.inputs).items()}
    count = sum(1 for k in inputs if k.startswith("boundary."))
    labels, seconds, peak = {}, 0.0, 0
    with torch.no_grad():
        for i in range(count):
            reset_peak()
            before = memory_kib("VmRSS")
            start = time.perf_counter()
            out = walk_labels(inputs[f"boundary.{i}"], inputs[f"cams.{i}"], inputs[f"classes.{i}"], inputs[f"size.{i}"].tolist())
            seconds += time.perf_counter() - start
            peak = max(peak, memory_kib("VmHWM") - before)
            labels[f"labels.{i}"] = out.numpy()
    save_file(labels, args.out)
    print(json.dumps({"images": count, "images_per_s": count / seconds, "peak_mib_per_image": peak / 1024}))


def agree(args):
    a, b = load_file(args.a), load_file(args.b)
    assert a.keys() == b.keys(), f"{args.a} and {args.b} label different images"
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    total = sum(a[k].size for k in a)
    worst = min(float((a[k] == b[k]).mean()) for k in a)
    print(json.dumps({"images": len(a), "agreement": same / total, "worst_image": worst}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--grid", type=int, nargs=2, default=[32, 40])
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("agree")
    p.add_argument("a")
    p.add_argument("b")
    args = parser.parse_args()
    {"inputs": make_inputs, "run": run, "agree": agree}[args.command](args)


if __name__ == "__main__":
    main()
