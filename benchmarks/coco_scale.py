#!/usr/bin/env python3
"""Writes a COCO-train-sized instances file for the import memory benchmark.

82,081 images and ~604k annotations (COCO train2014's counts), mostly polygons of 8-40
vertices, some list-RLE and compressed-RLE crowds, 80 categories with COCO's ids. The JSON
is about as large as the real one. Every image entry points at one of a few small JPEGs
(hard links), so the run measures the importer's own memory, not the photo sizes.

    python benchmarks/coco_scale.py OUT_DIR
"""
import json, os, random, sys

from PIL import Image

out = sys.argv[1]
images_dir = os.path.join(out, "images")
os.makedirs(images_dir, exist_ok=True)
rng = random.Random(0)
W, H = 64, 48
N_IMAGES, N_ANN = 82081, 604907
cat_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
assert len(cat_ids) == 80

protos = []
for k in range(4):
    p = os.path.join(out, f"proto{k}.jpg")
    Image.new("RGB", (W, H), (40 * k, 90, 200 - 40 * k)).save(p, quality=90)
    protos.append(p)
images = []
for i in range(N_IMAGES):
    name = f"COCO_train2014_{i:012d}.jpg"
    path = os.path.join(images_dir, name)
    if not os.path.exists(path):
        os.link(protos[i % 4], path)
    images.append({"id": i + 1, "file_name": name, "width": W, "height": H, "license": 1})

def polygon():
    cx, cy, r = rng.uniform(5, W - 5), rng.uniform(5, H - 5), rng.uniform(2, 20)
    n = rng.randint(8, 40)
    pts = []
    for j in range(n):
        a = 6.283185 * j / n
        rr = r * rng.uniform(0.6, 1.0)
        pts += [round(cx + rr * __import__("math").cos(a), 2), round(cy + rr * __import__("math").sin(a), 2)]
    return pts

anns = []
for a in range(N_ANN):
    image_id = rng.randint(1, N_IMAGES - 1000)  # the last 1000 images stay unannotated
    crowd = rng.random() < 0.01
    if crowd:
        counts = [rng.randint(0, 50) for _ in range(5)]
        counts.append(W * H - sum(counts))
        seg = {"size": [H, W], "counts": counts}
    else:
        seg = [polygon() for _ in range(1 if rng.random() < 0.9 else 2)]
    anns.append({"id": a + 1, "image_id": image_id, "category_id": rng.choice(cat_ids), "iscrowd": int(crowd),
                 "segmentation": seg, "area": 1.0, "bbox": [0, 0, 1, 1]})
with open(os.path.join(out, "instances_train2014.json"), "w") as f:
    json.dump({"info": {}, "licenses": [], "images": images, "annotations": anns,
               "categories": [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in cat_ids]}, f)
print(os.path.getsize(os.path.join(out, "instances_train2014.json")))
