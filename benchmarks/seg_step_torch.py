"""Reference for benchmarks/seg_step.rs: one segmenter training step (forward, cross-entropy
ignoring 255 summed over the outputs, backward, SGD update) in PyTorch eager, on the
reference architectures of deeplab_torch.py: SGD momentum 0.9, weight decay 5e-4 except on
biases, head 10x (v2's biases 20x), poly learning rate; frozen backbone BatchNorm. Random
inputs; prints one JSON line with the median step time after warm-up. Started by `torchrun
--nproc_per_node N`, the step is PyTorch DDP over gloo (the decoder's BatchNorms stay per rank:
PyTorch's SyncBatchNorm runs on GPUs only) and rank 0 prints images/s over all ranks.

    python benchmarks/seg_step_torch.py [--kind deeplab_v3plus] [--arch mobilenet_v2] [--batch 4] [--size 321] [--steps 5] [--threads 2]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deeplab_torch import Segmenter, freeze_backbone_batch_norm  # noqa: E402


def param_groups(model, kind, lr):
    head_mult = 10.0
    bias_mult = 2 * head_mult if kind == "deeplab_v2" else head_mult
    groups = {"backbone": [], "backbone.bias": [], "head": [], "head.bias": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if name.startswith("classifier.") else "backbone"
        groups[part + (".bias" if name.endswith(".bias") else "")].append(p)
    settings = {"backbone": (1.0, 5e-4), "backbone.bias": (1.0, 0.0), "head": (head_mult, 5e-4), "head.bias": (bias_mult, 0.0)}
    return [{"params": ps, "lr": lr * settings[g][0], "initial_lr": lr * settings[g][0], "weight_decay": settings[g][1]} for g, ps in groups.items() if ps]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="deeplab_v3plus")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Segmenter(args.kind, args.arch, args.classes).train()
    freeze_backbone_batch_norm(model)
    lr, total = 0.001, args.warmup + args.steps
    optimiser = torch.optim.SGD(param_groups(model, args.kind, lr), lr=lr, momentum=0.9)
    ranks, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if ranks > 1:
        torch.distributed.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=total, power=0.9)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(args.classes, (args.batch, args.size, args.size))
    times = []
    for step in range(total):
        start = time.perf_counter()
        optimiser.zero_grad()
        loss = 0.0
        for logits in model(images):
            target = labels if logits.shape[2:] == labels.shape[1:] else F.interpolate(labels[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
            loss = loss + F.cross_entropy(logits, target, ignore_index=255)
        loss.backward()
        optimiser.step()
        schedule.step()
        loss.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    if rank == 0:
        print(json.dumps({"tool": "pytorch", "variant": f"{args.kind}/{args.arch}", "ranks": ranks, "median_step_s": median, "images_per_s": args.batch * ranks / median, "steps": times}))
    if ranks > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
