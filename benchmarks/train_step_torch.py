"""Reference for benchmarks/train_step.rs: one CAM-classifier training step (forward + loss +
backward + SGD update) in PyTorch eager, the IRNet way: torchvision ResNet with strides
(2, 2, 2, 1), frozen BatchNorm (eval mode, affine not trained), frozen conv1/bn1, a 1x1
classifier without bias on global average pooling, multilabel soft margin loss, SGD with
momentum 0.9, weight decay 1e-4, two parameter groups (head 10x), poly learning rate.
Random inputs; prints one JSON line with the median step time after warm-up. Started by
`torchrun --nproc_per_node N`, the step is PyTorch DDP over gloo and rank 0 prints images/s
over all ranks."""
import os
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision


def build(depth, classes):
    net = getattr(torchvision.models, depth)(weights=None)
    # Output stride 16: layer4's first block keeps the resolution (IRNet's strides).
    block = net.layer4[0]
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    backbone = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
    net.conv1.weight.requires_grad_(False)
    classifier = torch.nn.Conv2d(backbone[-1][-1].conv1.in_channels, classes, 1, bias=False)
    return backbone, classifier


class CamClassifier(torch.nn.Module):
    def __init__(self, backbone, classifier):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def forward(self, images):
        return self.classifier(self.backbone(images).mean(dim=(2, 3), keepdim=True)).flatten(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu/check.sh)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone, classifier = build(args.depth, args.classes)
    ranks, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    model = CamClassifier(backbone, classifier).to(args.device)
    if ranks > 1:
        torch.distributed.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    lr, total = 0.01, args.warmup + args.steps
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": classifier.parameters(), "lr": 10 * lr},
        ],
        lr=lr, momentum=0.9, weight_decay=1e-4,
    )
    base = [g["lr"] for g in optimizer.param_groups]
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    labels = torch.randint(0, 2, (args.batch, args.classes), device=args.device).float()
    times = []
    for step in range(total):
        start = time.perf_counter()
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * (1 - step / total) ** 0.9
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(images)
        loss = F.multilabel_soft_margin_loss(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    if rank == 0:
        print(json.dumps({"tool": "pytorch", "device": args.device, "bf16": args.bf16, "ranks": ranks, "median_step_s": median, "images_per_s": args.batch * ranks / median, "steps": times}))
    if ranks > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
