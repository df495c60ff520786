"""Forward parity of wsss-dist's ViT CAM network with timm's VisionTransformer, on the same
random weights (no ImageNet ViT weights can be fetched here).

For each size, builds timm's `vit_<size>_patch16_224` (dynamic image size and padding, as
wsss-dist runs any image size), draws a CAM classifier W, and runs random images of a size that
is neither 224 nor a multiple of 16 (position embeddings resampled, the image padded) through
timm and through `cargo bench --bench vit_forward`. Compares the patch-token feature maps, the
CAM logits W·GAP(F) and the patch attention of the last 4 blocks (averaged over blocks and
heads, the class token dropped, rows scaled to sum 1). Prints the largest differences relative
to each output's largest value; exits 1 if any exceeds 1e-4.

    python benchmarks/check_vit_timm.py --work DIR
"""
import argparse
import os
import subprocess
import sys

import timm
import torch
from safetensors.torch import load_file, save_file

TOLERANCE = 1e-4
LAYERS = 4


def timm_outputs(model, images, classifier):
    """Features [N, D, h, w], CAM logits [N, C] and the averaged patch attention of timm's model."""
    attentions = []
    hooks = [block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: attentions.append(out)) for block in model.blocks[-LAYERS:]]
    with torch.no_grad():
        tokens = model.forward_features(images)
    for hook in hooks:
        hook.remove()
    n, _, height, width = images.shape
    h, w = -(-height // 16), -(-width // 16)
    patches = tokens[:, 1:]
    features = patches.transpose(1, 2).reshape(n, -1, h, w)
    logits = features.mean(dim=(2, 3)) @ classifier.flatten(1).T
    attention = torch.stack(attentions).mean(dim=(0, 2))[:, 1:, 1:]
    attention = attention / attention.sum(dim=2, keepdim=True)
    return {"features": features, "logits": logits, "attention": attention}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--cargo", default="cargo")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    timm.layers.set_fused_attn(False)  # the attention probabilities pass through attn_drop
    worst = 0.0
    for size in ("tiny", "small"):
        torch.manual_seed(0)
        model = timm.create_model(f"vit_{size}_patch16_224", pretrained=False, dynamic_img_size=True, dynamic_img_pad=True).eval()
        classifier = torch.randn(5, model.embed_dim, 1, 1) * 0.05
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        weights["classifier.weight"] = classifier
        weights_path, input_path, out_path = (os.path.join(args.work, f"{size}_{name}.safetensors") for name in ("weights", "input", "out"))
        save_file(weights, weights_path)
        images = torch.randn(2, 3, 200, 280)
        save_file({"images": images}, input_path)
        subprocess.run([args.cargo, "bench", "-q", "--bench", "vit_forward", "--", "--weights", weights_path, "--input", input_path,
                        "--out", out_path, "--size", size, "--layers", str(LAYERS)], check=True)
        ours = load_file(out_path)
        theirs = timm_outputs(model, images, classifier)
        for name, reference in theirs.items():
            difference = (ours[name] - reference).abs().max().item() / reference.abs().max().item()
            worst = max(worst, difference)
            print(f"vit_{size} {name:9s} {tuple(reference.shape)}: max |difference| / max |value| = {difference:.2e}")
    print(f"largest relative difference {worst:.2e} (tolerance {TOLERANCE:.0e}): {'PASS' if worst <= TOLERANCE else 'FAIL'}")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
