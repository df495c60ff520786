"""The segmenters of wsss-dist written the way their reference repositories write them in
PyTorch, for the forward-parity check (check_deeplab_torch.py) and the step benchmark
(seg_step_torch.py):

- DeepLab v2 (kazuto1011/deeplab-pytorch): `_ASPP` is the sum of four dilated 3x3 convolutions
  with bias, on torchvision's ResNet dilated to output stride 8
  (`replace_stride_with_dilation=[False, True, True]`), every BatchNorm frozen; `MSC` runs the
  input at scales 1, 0.5, 0.75 (`interpolate(scale_factor=...)`) and adds their max.
- DeepLab v3+ (VainF/DeepLabV3Plus-Pytorch): `DeepLabHeadV3Plus` (ASPP with image pooling,
  48-channel low-level projection, 3x3 fuse, 1x1 classifier) on torchvision's MobileNetV2
  (features 0-17, low level after features.3, dilated as DeepLab v3 does) or ResNet (layer1 /
  layer4). The backbone's BatchNorms are frozen; the head's train.

Parameter names are those of wsss-dist's checkpoints (`backbone.*`, `classifier.*`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from check_mobilenet_torch import dilate


class ASPPSum(nn.Module):
    """kazuto1011's `_ASPP`: c0..c3, summed."""

    def __init__(self, in_ch, out_ch, rates=(6, 12, 18, 24)):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate, bias=True))

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


class ASPPPooling(nn.Sequential):
    def __init__(self, in_ch, out_ch):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x):
        size = x.shape[-2:]
        x = super().forward(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(in_ch, out_ch, k, dilation=1):
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, padding=dilation * (k // 2), dilation=dilation, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, in_ch, rates, out_ch=256, dropout=0.1):
        super().__init__()
        self.convs = nn.ModuleList([conv_bn_relu(in_ch, out_ch, 1)] + [conv_bn_relu(in_ch, out_ch, 3, r) for r in rates] + [ASPPPooling(in_ch, out_ch)])
        self.project = nn.Sequential(nn.Conv2d(5 * out_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class HeadV3Plus(nn.Module):
    """VainF's `DeepLabHeadV3Plus`."""

    def __init__(self, in_ch, low_ch, classes, rates, dropout):
        super().__init__()
        self.project = conv_bn_relu(low_ch, 48, 1)
        self.aspp = ASPP(in_ch, rates, dropout=dropout)
        self.classifier = nn.Sequential(nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Conv2d(256, classes, 1))

    def forward(self, low, high):
        low = self.project(low)
        out = F.interpolate(self.aspp(high), size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, out], dim=1))


class Backbone(nn.Module):
    """(low-level, last) features; attribute names are torchvision's."""

    def __init__(self, arch, output_stride):
        super().__init__()
        self.arch = arch
        if arch == "mobilenet_v2":
            strides = [2, 2, 2, 1] if output_stride == 16 else [2, 2, 1, 1]
            self.features = dilate(torchvision.models.mobilenet_v2(), strides).features[:18]
            self.channels = (24, 320)
        else:
            dilation = [False, False, True] if output_stride == 16 else [False, True, True]
            net = getattr(torchvision.models, arch)(replace_stride_with_dilation=dilation)
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
                setattr(self, name, getattr(net, name))
            # layer1 has an eighth of layer4's channels (64/512, 256/2048).
            self.channels = (net.fc.in_features // 8, net.fc.in_features)

    def forward(self, x):
        if self.arch == "mobilenet_v2":
            low = self.features[:4](x)
            return low, self.features[4:](low)
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


class Segmenter(nn.Module):
    def __init__(self, kind, arch, classes, dropout=0.1):
        super().__init__()
        self.kind = kind
        output_stride = 8 if kind == "deeplab_v2" else 16
        self.backbone = Backbone(arch, output_stride)
        low_ch, high_ch = self.backbone.channels
        if kind == "deeplab_v2":
            self.classifier = ASPPSum(high_ch, classes)
        else:
            rates = [6, 12, 18] if output_stride == 16 else [12, 24, 36]
            self.classifier = HeadV3Plus(high_ch, low_ch, classes, rates, dropout)

    def train(self, mode=True):
        """The backbone's BatchNorms stay in eval mode (frozen) whatever the mode."""
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def base(self, x):
        low, high = self.backbone(x)
        if self.kind == "deeplab_v2":
            return self.classifier(high)
        return F.interpolate(self.classifier(low, high), size=x.shape[2:], mode="bilinear", align_corners=False)

    def forward(self, x):
        """Training: the list of outputs each trained on the labels (v2: kazuto1011's MSC, four);
        inference: logits at the input's size."""
        logits = self.base(x)
        if self.kind != "deeplab_v2":
            return [logits] if self.training else logits
        size = logits.shape[2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)) for p in (0.5, 0.75)]
        maximum = torch.max(torch.stack([logits] + [F.interpolate(l, size=size, mode="bilinear", align_corners=False) for l in pyramid]), dim=0)[0]
        if self.training:
            return [logits] + pyramid + [maximum]
        return F.interpolate(maximum, size=x.shape[2:], mode="bilinear", align_corners=False)


def freeze_backbone_batch_norm(model):
    """Frozen BatchNorm as wsss-dist freezes it: affine parameters not trained."""
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            for p in m.parameters():
                p.requires_grad_(False)
