"""The reference for `pseudo-label --method irn_seeds`: IRNet's step (cam_to_ir_label.py) with
pydensecrf, on the same CAMs and images that wsss-dist reads.

    python irn_seeds_ref.py IMAGES_DIR CAMS_DIR PSEUDO_DIR [--limit N]

Per image, as IRNet does: decode the image, upsample the CAMs to it (bilinear, corners not
aligned, as wsss-dist), foreground seeds argmax([0.30, CAMs]) and background seeds
argmax([0.05, CAMs]), each refined by pydensecrf (label unary p = 0.7, Gaussian sxy 3
compat 3, bilateral sxy 50 srgb 5 compat 10, 10 iterations), then
conf = fg; conf[fg == 0] = 255; conf[fg + bg == 0] = 0.
Prints the images/s of that step (one thread), and the pixel agreement with wsss-dist's
pseudo-labels in PSEUDO_DIR, as JSON.
"""
import argparse
import glob
import io
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pyarrow.parquet as pq
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels
from PIL import Image


def crf_inference_label(img, labels, t=10, n_labels=21, gt_prob=0.7):
    """IRNet's misc/imutils.py crf_inference_label."""
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    unary = unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(img)), compat=10)
    q = d.inference(t)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


def upsample(maps, height, width):
    """Bilinear, align_corners=False (torch.nn.functional.interpolate), in numpy."""
    k, h, w = maps.shape

    def taps(n_in, n_out):
        scale = np.float32(n_in / n_out)
        src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * scale - 0.5, 0)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, ly = taps(h, height)
    x0, x1, lx = taps(w, width)
    top = maps[:, y0][:, :, x0] * (1 - lx) + maps[:, y0][:, :, x1] * lx
    bottom = maps[:, y1][:, :, x0] * (1 - lx) + maps[:, y1][:, :, x1] * lx
    return top * (1 - ly)[None, :, None] + bottom * ly[None, :, None]


def irn_seeds(img, cams, classes):
    keys = np.pad(np.array(classes) , (1, 0), mode="constant")
    fg = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=0.30), axis=0)
    fg_conf = keys[crf_inference_label(img, fg, n_labels=keys.shape[0])]
    bg = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=0.05), axis=0)
    bg_conf = keys[crf_inference_label(img, bg, n_labels=keys.shape[0])]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf.astype(np.uint8)


def rows(directory, columns):
    for path in sorted(glob.glob(os.path.join(directory, "*.parquet"))):
        for row in pq.read_table(path, columns=columns).to_pylist():
            yield row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("images")
    parser.add_argument("cams")
    parser.add_argument("pseudo")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    cams = {r["id"]: r for r in rows(args.cams, ["id", "classes", "cam", "height", "width"])}
    ours = {r["id"]: r["mask"] for r in rows(args.pseudo, ["id", "mask"])}
    agree = total = images = 0
    seconds = 0.0
    for row in rows(args.images, ["id", "image"]):
        if args.limit and images >= args.limit:
            break
        cam = cams[row["id"]]
        start = time.perf_counter()
        img = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
        k, h4, w4 = len(cam["classes"]), -(-cam["height"] // 4), -(-cam["width"] // 4)
        maps = np.frombuffer(cam["cam"], dtype="<f2").reshape(k, h4, w4).astype(np.float32)
        full = upsample(maps, cam["height"], cam["width"])
        conf = irn_seeds(img, full, cam["classes"])
        seconds += time.perf_counter() - start
        images += 1
        mine = np.asarray(Image.open(io.BytesIO(ours[row["id"]])))
        agree += int((mine == conf).sum())
        total += conf.size
    print(json.dumps({"images": images, "seconds": seconds, "images_per_second": images / seconds, "agreement": agree / total}))


if __name__ == "__main__":
    main()
