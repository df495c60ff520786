"""Forward parity of wsss-dist's segmenters with their PyTorch references (deeplab_torch.py) on
the same random weights: DeepLab v2 (ResNet-50, output stride 8, the MSC training outputs and
the inference max) and DeepLab v3+ (MobileNetV2 and ResNet-50, output stride 16; inference
logits and the training output with the head's BatchNorms on batch statistics, dropout off).

`cargo bench --bench seg_step -- --dump DIR` writes the weights, the input and wsss-dist's
outputs; this script loads the weights into the reference (every key on both sides but BatchNorm's
`num_batches_tracked`),
runs it and prints the largest difference of each output relative to its largest value.
Exits 1 if one exceeds 1e-4.

    python benchmarks/check_deeplab_torch.py [--work DIR] [--size 97]
"""
import argparse
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deeplab_torch import Segmenter  # noqa: E402

TOLERANCE = 1e-4
CASES = [("deeplab_v2", "resnet50"), ("deeplab_v3plus", "mobilenet_v2"), ("deeplab_v3plus", "resnet50")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="data/bench/check-deeplab")
    parser.add_argument("--cargo", default="cargo")
    # Odd, so that v2's 0.5 and 0.75 scales round down and the output sizes are not multiples.
    parser.add_argument("--size", type=int, default=97)
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    worst = 0.0
    for kind, arch in CASES:
        work = os.path.join(args.work, f"{kind}-{arch}")
        subprocess.run(
            [args.cargo, "bench", "-q", "--bench", "seg_step", "--", "--kind", kind, "--arch", arch, "--batch", "2",
             "--size", str(args.size), "--classes", str(args.classes), "--dump", work],
            check=True,
        )
        state = load_file(f"{work}/weights.safetensors")
        images = load_file(f"{work}/input.safetensors")["images"]
        ours = load_file(f"{work}/out.safetensors")
        model = Segmenter(kind, arch, args.classes, dropout=0.0)
        # Every key on both sides but PyTorch's BatchNorm step counters, which wsss-dist has not.
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (unexpected, missing)
        reference = {"eval": model.eval()(images)}
        reference.update({f"train.{i}": t for i, t in enumerate(model.train()(images))})
        assert sorted(reference) == sorted(ours), (sorted(reference), sorted(ours))
        for name, theirs in reference.items():
            assert ours[name].shape == theirs.shape, (kind, arch, name, ours[name].shape, theirs.shape)
            scale = theirs.abs().max().item()
            diff = (ours[name] - theirs).abs().max().item() / max(scale, 1e-12)
            worst = max(worst, diff)
            print(f"{kind:14s} {arch:12s} {name:8s} {tuple(theirs.shape)} max |value| {scale:9.3g}  max relative |diff| {diff:.2e}")
    print(f"parity {'OK' if worst <= TOLERANCE else 'FAILED'}: largest relative difference {worst:.2e} (tolerance {TOLERANCE})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
