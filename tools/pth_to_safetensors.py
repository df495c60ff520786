#!/usr/bin/env python3
"""Convert a torchvision (or timm/DeiT ViT) state dict (.pth) to safetensors for `model.init`.

    python tools/pth_to_safetensors.py resnet50-11ad3fa6.pth resnet50.safetensors
    python tools/pth_to_safetensors.py --torchvision resnet50 resnet50.safetensors

The first form reads a downloaded checkpoint (e.g. from
https://download.pytorch.org/models/resnet50-11ad3fa6.pth); the second asks torchvision for
its default ImageNet weights (downloads them into the torch hub cache). Parameter names are
kept as they are (`conv1.weight`, `layer1.0.bn1.running_mean`, ...): wsss-dist uses
torchvision's names, and timm's for a ViT (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`,
...; a DeiT checkpoint's {"model": ...} wrapper is removed). `fc.*`, a ViT's ImageNet `head.*`
and `num_batches_tracked` are kept too; wsss-dist ignores them when it loads a backbone and
reports what it ignored.

Needs `torch` and `safetensors` (pip install torch safetensors; torchvision for the second form).
"""
import argparse
import sys


def load_state_dict(args):
    import torch

    if args.torchvision:
        import torchvision

        model = getattr(torchvision.models, args.source)(weights="DEFAULT")
        return model.state_dict()
    state = torch.load(args.source, map_location="cpu", weights_only=True)
    # Some checkpoints wrap the weights: {"state_dict": {...}} or {"model": {...}}.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    # DataParallel / DDP checkpoints prefix every name with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .pth file, or a torchvision model name with --torchvision")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--torchvision", action="store_true", help="take torchvision's default weights of the model named by SOURCE")
    args = parser.parse_args()

    from safetensors.torch import save_file

    state = load_state_dict(args)
    tensors = {name: t.detach().contiguous() for name, t in state.items() if hasattr(t, "detach")}
    skipped = sorted(set(state) - set(tensors))
    if skipped:
        print(f"skipped non-tensor entries: {', '.join(skipped)}", file=sys.stderr)
    save_file(tensors, args.output)
    print(f"wrote {len(tensors)} tensors to {args.output}")


if __name__ == "__main__":
    main()
