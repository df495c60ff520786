"""Forward parity of wsss-dist's MobileNetV2 with torchvision's, on the same ImageNet weights.

Loads `weights/mobilenet_v2.safetensors` (scripts/fetch-weights.sh) into
`torchvision.models.mobilenet_v2()`, runs random images through `model.features` and the
ImageNet head, and compares with `cargo bench --bench backbone_forward` (wsss-dist's backbone
and the same head) at output stride 32 (torchvision's network as it is) and at 16 and 8 (the
same network dilated as DeepLab v3 does, built here by changing the depthwise convolutions'
strides and dilations). Prints the largest differences; exits 1 if any exceeds 1e-4.

    python benchmarks/check_mobilenet_torch.py --weights weights/mobilenet_v2.safetensors --work DIR
"""
import argparse
import os
import subprocess
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

TOLERANCE = 1e-4


def dilate(model, strides):
    """DeepLab v3's MobileNetV2: a stage whose stride is set to 1 keeps the dilation so far in
    its first block and doubles it from the second block on (and in every later stage)."""
    first_blocks = {2: 7, 3: 14}  # strides index -> features index opening the 64 / 160 stage
    dilation = 1
    for index in range(1, 18):
        dw = model.features[index].conv[-3][0]
        converted = [i for i, f in first_blocks.items() if strides[i] == 1 and f == index]
        if converted:
            dw.stride = (1, 1)
            dw.dilation, dw.padding = (dilation, dilation), (dilation, dilation)
            dilation *= 2
        else:
            dw.dilation, dw.padding = (dilation, dilation), (dilation, dilation)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="weights/mobilenet_v2.safetensors")
    parser.add_argument("--work", default="data/bench/check-mobilenet")
    parser.add_argument("--cargo", default="cargo")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 176)
    save_file({"images": images}, f"{args.work}/input.safetensors")
    state = load_file(args.weights)
    worst = 0.0
    for strides in ([2, 2, 2, 2], [2, 2, 2, 1], [2, 2, 1, 1]):
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(state)
        model = dilate(model.eval(), strides)
        with torch.no_grad():
            features = model.features(images)
            logits = model.classifier(features.mean((2, 3)))
        out = f"{args.work}/out.safetensors"
        subprocess.run(
            [args.cargo, "bench", "-q", "--bench", "backbone_forward", "--", "--weights", args.weights,
             "--input", f"{args.work}/input.safetensors", "--out", out, "--strides", ",".join(map(str, strides))],
            check=True,
        )
        ours = load_file(out)
        assert ours["features"].shape == features.shape, (ours["features"].shape, features.shape)
        df = (ours["features"] - features).abs().max().item()
        dl = (ours["logits"] - logits).abs().max().item()
        worst = max(worst, df, dl)
        os_ = 2 * 2 * strides[1] * strides[2] * strides[3]
        print(f"mobilenet_v2 output stride {os_:2d}: features {tuple(features.shape)} max |diff| {df:.2e} "
              f"(max |value| {features.abs().max().item():.2f}), logits max |diff| {dl:.2e}, "
              f"same top-1 {bool((ours['logits'].argmax(1) == logits.argmax(1)).all())}")
    print(f"parity {'OK' if worst <= TOLERANCE else 'FAILED'}: largest difference {worst:.2e} (tolerance {TOLERANCE})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
