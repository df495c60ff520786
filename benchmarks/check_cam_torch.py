"""Cross-check of the CAM network and multi-scale CAM inference against PyTorch/torchvision.

Builds a torchvision ResNet with IRNet's strides (2, 2, 2, 1), random weights and random
BatchNorm statistics, plus a random 1x1 classifier; saves them as a wsss-dist model state;
runs `wsss-dist cam` with it on a dataset of PNG images (lossless, so both sides see the
same pixels); recomputes every CAM here in PyTorch following docs/methods.md §1 as wsss-dist
documents it (bilinear image rescale, flip, ReLU(W·F), flip back, bilinear resize to the
stride-4 grid, sum over scales, divide by max + 1e-5) and prints the largest difference,
and the inference time of both on the same images with the same threads (wsss-dist's from its
map summary, PyTorch's around `cams`): on JPEG datasets the difference also holds decoding.

    python benchmarks/check_cam_torch.py --wsss target/release/wsss-dist --images DIR --work DIR [--threads N]
"""
import argparse
import glob
import io
import json
import os
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save_file

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def build(depth, classes):
    torch.manual_seed(0)
    net = getattr(torchvision.models, depth)(weights=None)
    block = net.layer4[0]
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    backbone = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    classifier = torch.randn(classes, backbone[-1][-1].conv1.in_channels, 1, 1) * 0.05
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    state["classifier.weight"] = classifier
    return backbone, classifier, state


@torch.no_grad()
def cams(backbone, classifier, image, classes, scales):
    h, w = image.shape[1:]
    grid = (-(-h // 4), -(-w // 4))
    x = ((image.float() / 255 - MEAN) / STD).unsqueeze(0)
    total = torch.zeros(len(classes), *grid)
    weight = classifier[classes]
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size, mode="bilinear", align_corners=False)
        maps = F.relu(F.conv2d(backbone(torch.cat([xs, xs.flip(3)])), weight))
        maps = maps[0] + maps[1].flip(2)
        total += F.interpolate(maps.unsqueeze(0), grid, mode="bilinear", align_corners=False)[0]
    return total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--wsss", required=True)
    p.add_argument("--images", required=True, help="an image dataset of PNG images with labels")
    p.add_argument("--work", required=True)
    p.add_argument("--depth", default="resnet18")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    manifest = json.load(open(os.path.join(args.images, "_manifest.json")))
    classes = len(manifest["classes"]) - 1
    backbone, classifier, state = build(args.depth, classes)
    model = os.path.join(args.work, "model.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, model)
    scales = [1.0, 0.5, 1.5, 2.0]
    out = os.path.join(args.work, "cams")
    config = os.path.join(args.work, "config.toml")
    with open(config, "w") as f:
        f.write(f'[run]\nname = "check"\ndir = "{args.work}"\ndevice = "cpu"\nthreads = {args.threads}\n[data]\nsource = "imported"\ntrain = "{args.images}"\nval = "{args.images}"\n'
                f'[model]\ndepth = "{args.depth}"\n[cam]\nsplit = "val"\ncheckpoint = "{model}"\nout = "{out}"\nscales = {scales}\n')
    subprocess.run([args.wsss, "cam", "--config", config, "--force"], check=True, capture_output=True)
    ours_seconds = json.load(open(os.path.join(out, ".map", "summary.json")))["seconds_by_phase"]["inference"]
    torch_seconds = 0.0
    images = {r["id"]: r for r in pq.read_table(sorted(glob.glob(args.images + "/*.parquet"))).to_pylist()}
    worst, worst_scores, count = 0.0, 0.0, 0
    for row in pq.read_table(sorted(glob.glob(out + "/*.parquet"))).to_pylist():
        if not row["classes"]:
            continue
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(images[row["id"]]["image"])).convert("RGB"))).permute(2, 0, 1)
        ours = np.frombuffer(row["cam"], dtype="<f2").astype(np.float32).reshape(len(row["classes"]), -(-row["height"] // 4), -(-row["width"] // 4))
        start = time.perf_counter()
        theirs = cams(backbone, classifier, pixels, [c - 1 for c in row["classes"]], scales).numpy()
        torch_seconds += time.perf_counter() - start
        worst = max(worst, float(np.abs(ours - theirs).max()))
        with torch.no_grad():
            x = ((pixels.float() / 255 - MEAN) / STD).unsqueeze(0)
            logits = F.conv2d(backbone(x).mean(dim=(2, 3), keepdim=True), classifier).flatten()
        worst_scores = max(worst_scores, float(np.abs(np.array(row["scores"]) - logits[[c - 1 for c in row["classes"]]].numpy()).max()))
        count += 1
    print(json.dumps({"images": count, "max_abs_cam_difference": worst, "max_abs_score_difference": worst_scores,
                      "wsss_inference_s": ours_seconds, "torch_inference_s": torch_seconds, "time_ratio": ours_seconds / torch_seconds}))


if __name__ == "__main__":
    main()
