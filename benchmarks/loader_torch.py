#!/usr/bin/env python3
"""PyTorch DataLoader reference for the loader benchmark.

Does, on the same JPEGs, the work the Rust loader does: decode (PIL) -> random resize of
the long side to [320, 640] (PIL bilinear) -> horizontal flip p=0.5 -> ColorJitter(0.3,
0.3, 0.3, 0.1) -> ToTensor + Normalize(ImageNet) -> IRNet random crop with zero padding to
512x512 -> default collate into a [B, 3, 512, 512] float32 tensor. `--decode-only` keeps
only the decode (PIL open + convert('RGB') + np.asarray), batches are plain lists.

One warm-up epoch (it also starts the persistent workers) is not timed; the timed part is
the iteration over the following --epochs epochs. Prints one JSON line on stdout; all
else goes to stderr.

    .deps/bench-venv/bin/python benchmarks/loader_torch.py \
        --images DIR --ids FILE --batch 16 --workers 2 --epochs 3 --seed 0 [--decode-only]
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

CROP = 512
RESIZE_LONG = (320, 640)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def round_half_away(x):
    # Rust's f32::round (half away from zero); Python's round() is round-half-even.
    return int(math.floor(x + 0.5))


def random_resize_long(img, lo, hi):
    target = random.randint(lo, hi)  # inclusive
    w, h = img.size
    scale = target / max(w, h)
    size = (round_half_away(w * scale), round_half_away(h * scale))
    return img.resize(size, Image.BILINEAR)


def random_crop(t, cropsize):
    """IRNet imutils.random_crop on a CHW tensor, padding value 0."""
    c, h, w = t.shape
    ch, cw = min(cropsize, h), min(cropsize, w)
    w_space, h_space = w - cropsize, h - cropsize
    if w_space > 0:
        cont_left, img_left = 0, random.randrange(w_space + 1)
    else:
        cont_left, img_left = random.randrange(-w_space + 1), 0
    if h_space > 0:
        cont_top, img_top = 0, random.randrange(h_space + 1)
    else:
        cont_top, img_top = random.randrange(-h_space + 1), 0
    out = torch.zeros((c, cropsize, cropsize), dtype=t.dtype)
    out[:, cont_top:cont_top + ch, cont_left:cont_left + cw] = \
        t[:, img_top:img_top + ch, img_left:img_left + cw]
    return out


class VocImages(Dataset):
    def __init__(self, image_dir, ids, decode_only):
        self.paths = [os.path.join(image_dir, i + ".jpg") for i in ids]
        self.decode_only = decode_only
        self.jitter = transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
        self.to_tensor = transforms.ToTensor()
        self.normalize = transforms.Normalize(mean=MEAN, std=STD)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as f:
            img = f.convert("RGB")
        if self.decode_only:
            return np.asarray(img)
        img = random_resize_long(img, *RESIZE_LONG)
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = self.jitter(img)
        t = self.normalize(self.to_tensor(img))
        return random_crop(t, CROP)


def proc_cpu_seconds(pid):
    """utime + stime of a process from /proc (Linux); None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(loader):
    """CPU time of this process plus its DataLoader workers (load-insensitive cost)."""
    total = time.process_time()
    it = getattr(loader, "_iterator", None)
    for w in getattr(it, "_workers", []) or []:
        c = proc_cpu_seconds(w.pid)
        if c is None:
            return None
        total += c
    return total


def list_collate(batch):
    return batch


def worker_init(_worker_id):
    # DataLoader already seeds `random` and torch per worker from the loader's generator.
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="directory holding <id>.jpg")
    ap.add_argument("--ids", required=True, help="file listing ids, one per line")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after 1 warm-up epoch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-only", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    with open(args.ids) as f:
        ids = [l.strip() for l in f if l.strip()]
    ds = VocImages(args.images, ids, args.decode_only)
    gen = torch.Generator()
    gen.manual_seed(args.seed)
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        worker_init_fn=worker_init if args.workers > 0 else None,
        collate_fn=list_collate if args.decode_only else None,
        generator=gen,
    )
    mode = "decode" if args.decode_only else "augment"
    expect = (args.batch, 3, CROP, CROP)

    def run_epoch():
        n, last = 0, None
        for batch in loader:
            if args.decode_only:
                assert isinstance(batch, list) and batch[0].ndim == 3
                n += len(batch)
            else:
                assert batch.dtype == torch.float32 and batch.shape[1:] == expect[1:], batch.shape
                n += batch.shape[0]
            last = batch  # keep a reference: every batch is materialised
        return n, last

    t0 = time.perf_counter()
    n_warm, _ = run_epoch()
    warm_s = time.perf_counter() - t0
    log(f"loader_torch: mode={mode} ids={len(ds)} batch={args.batch} workers={args.workers} "
        f"persistent_workers={args.workers > 0} torch_threads=1; warm-up epoch (incl. worker "
        f"start-up, not timed): {n_warm} images in {warm_s:.3f} s")

    images = 0
    cpu0 = cpu_seconds(loader)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        n, _ = run_epoch()
        images += n
    seconds = time.perf_counter() - t0
    cpu1 = cpu_seconds(loader)
    cpu = f"{cpu1 - cpu0:.3f}" if cpu0 is not None and cpu1 is not None else "n/a"
    log(f"loader_torch: timed {args.epochs} epochs after warm-up (worker start-up excluded): "
        f"{images} images in {seconds:.3f} s wall, {cpu} CPU-s (main + workers)")

    print(json.dumps({
        "tool": "pytorch",
        "mode": mode,
        "images": images,
        "seconds": round(seconds, 6),
        "images_per_s": round(images / seconds, 3) if seconds > 0 else None,
        "workers": args.workers,
        "batch": args.batch,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
