//! ResNet-18/34/50/101 backbones as WSSS uses them (IRNet, docs/methods.md): torchvision's
//! parameter names (`conv1.weight`, `layer3.5.bn2.running_var`, `layer1.0.downsample.0.weight`,
//! ...), configurable strides, every BatchNorm frozen (eval statistics, affine parameters not
//! trained), and the stem (conv1/bn1) not trained. No classifier head: `forward` returns the
//! last feature map.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::amm::Amm;
use super::layers::{conv, BatchNorm, Conv, ConvSpec, Mode};

/// Which ResNet.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
}

impl Depth {
    /// Blocks per stage and whether they are bottlenecks (torchvision's table).
    pub(super) fn layout(self) -> ([usize; 4], bool) {
        match self {
            Depth::Resnet18 => ([2, 2, 2, 2], false),
            Depth::Resnet34 => ([3, 4, 6, 3], false),
            Depth::Resnet50 => ([3, 4, 6, 3], true),
            Depth::Resnet101 => ([3, 4, 23, 3], true),
        }
    }
}

/// Strides of conv1, layer2, layer3, layer4 (the max-pool always halves, layer1 keeps).
/// IRNet's default (2, 2, 2, 1) gives output stride 16.
pub type Strides = [i64; 4];

/// What a ResNet carries besides torchvision's layers.
#[derive(Debug, Clone, Copy, Default)]
struct Extras {
    /// An AMM on every block's residual branch.
    amm: bool,
    /// Stride-1 stages dilate (DeepLab).
    dilate: bool,
}

/// One residual block: basic (two 3×3) or bottleneck (1×1, 3×3 with the stride, 1×1 ×4),
/// optionally with an AMM on its residual branch (AMR's compensation branch).
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv, BatchNorm)>,
    downsample: Option<(Conv, BatchNorm)>,
    amm: Option<Amm>,
}

impl Block {
    /// `dilation` applies to the 3×3 convolutions (DeepLab's dilated stages).
    fn new(vs: &nn::Path, c_in: i64, width: i64, stride: i64, dilation: i64, bottleneck: bool, with_amm: bool) -> (Block, i64) {
        let specs: Vec<ConvSpec> = if bottleneck {
            vec![ConvSpec::plain(c_in, width, 1, 1), ConvSpec { dilation, ..ConvSpec::plain(width, width, 3, stride) }, ConvSpec::plain(width, 4 * width, 1, 1)]
        } else {
            vec![ConvSpec { dilation, ..ConvSpec::plain(c_in, width, 3, stride) }, ConvSpec { dilation, ..ConvSpec::plain(width, width, 3, 1) }]
        };
        let c_out = specs.last().expect("two or three convs").c_out;
        let convs = specs
            .iter()
            .enumerate()
            .map(|(i, &spec)| (conv(vs, &format!("conv{}", i + 1), spec, true), BatchNorm::new(&(vs / format!("bn{}", i + 1)), spec.c_out, false)))
            .collect();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let path = vs / "downsample";
            (conv(&path, "0", ConvSpec::plain(c_in, c_out, 1, stride), true), BatchNorm::new(&(&path / "1"), c_out, false))
        });
        let amm = with_amm.then(|| Amm::new(&(vs / "amm"), c_out));
        (Block { convs, downsample, amm }, c_out)
    }
}

impl Block {
    /// The AMM modulates the residual branch after its last conv + BN, before the shortcut
    /// is added (docs/methods.md).
    fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        let last = self.convs.len() - 1;
        let residual = self.convs.iter().enumerate().fold(xs.shallow_clone(), |h, (i, (conv, bn))| {
            let mut h = bn.run(&conv.forward(&h), mode);
            // In place, as torchvision's ReLU(inplace=True): one tensor less per activation.
            if i < last {
                h.relu_()
            } else {
                h
            }
        });
        let residual = match &self.amm {
            Some(amm) => amm.forward(&residual, mode),
            None => residual,
        };
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.run(&conv.forward(xs), mode),
            None => xs.shallow_clone(),
        };
        (residual + shortcut).relu_()
    }
}

/// A ResNet backbone without its pooling and fully connected head.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
    out_channels: i64,
    low_level_channels: i64,
    output_stride: i64,
}

impl ResNet {
    /// Builds the network under `vs` (pass the root for torchvision's names).
    pub fn new(vs: &nn::Path, depth: Depth, strides: Strides) -> ResNet {
        ResNet::build(vs, depth, strides, Extras::default())
    }

    /// The same network with an AMM in every block (`layerL.B.amm.*`, docs/methods.md): AMR's
    /// compensation backbone. torchvision weights fit it with the `amm.` keys left new.
    pub fn with_amm(vs: &nn::Path, depth: Depth, strides: Strides) -> ResNet {
        ResNet::build(vs, depth, strides, Extras { amm: true, dilate: false })
    }

    /// The network DeepLab uses: a stage of layer2–4 whose stride is 1 dilates instead, as
    /// torchvision's `replace_stride_with_dilation` (its first block keeps the dilation so far,
    /// the following blocks and later stages use twice that): strides (2, 2, 1, 1) give
    /// output stride 8 with layer3 at dilation 2 and layer4 at 4.
    pub fn dilated(vs: &nn::Path, depth: Depth, strides: Strides) -> ResNet {
        ResNet::build(vs, depth, strides, Extras { amm: false, dilate: true })
    }

    fn build(vs: &nn::Path, depth: Depth, strides: Strides, extras: Extras) -> ResNet {
        let (blocks, bottleneck) = depth.layout();
        let conv1 = conv(vs, "conv1", ConvSpec::plain(3, 64, 7, strides[0]), false);
        let bn1 = BatchNorm::new(&(vs / "bn1"), 64, false);
        let stage_strides = [1, strides[1], strides[2], strides[3]];
        let (mut c_in, mut dilation, mut low_level_channels) = (64, 1, 64);
        let mut layers = Vec::new();
        for (stage, (&n, &stride)) in blocks.iter().zip(&stage_strides).enumerate() {
            let width = 64 << stage;
            let path = vs / format!("layer{}", stage + 1);
            let previous = dilation;
            if extras.dilate && stage > 0 && stride == 1 {
                dilation *= 2;
            }
            let mut layer = Vec::new();
            for b in 0..n {
                let (block_stride, block_dilation) = if b == 0 { (stride, previous) } else { (1, dilation) };
                let (block, c_out) = Block::new(&(&path / b), c_in, width, block_stride, block_dilation, bottleneck, extras.amm);
                layer.push(block);
                c_in = c_out;
            }
            layers.push(layer);
            if stage == 0 {
                low_level_channels = c_in;
            }
        }
        ResNet { conv1, bn1, layers, out_channels: c_in, low_level_channels, output_stride: strides.iter().product::<i64>() * 2 }
    }

    /// Channels of layer1's output, the stride-4 features of DeepLab v3+'s decoder.
    pub fn low_level_channels(&self) -> i64 {
        self.low_level_channels
    }

    /// Channels of [`ResNet::run_stages`]' outputs: the stem's 64, then layer1–4.
    pub fn stage_channels(&self) -> [i64; 5] {
        let expansion = self.low_level_channels / 64;
        [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    }

    /// Channels of the feature map (512 or 2048).
    pub fn out_channels(&self) -> i64 {
        self.out_channels
    }

    /// Input pixels per feature-map pixel (16 for strides (2, 2, 2, 1)).
    pub fn output_stride(&self) -> i64 {
        self.output_stride
    }

    /// [N, 3, H, W] normalised images → [N, D, ⌈H/os⌉, ⌈W/os⌉] features (os = output_stride).
    pub fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        self.run_levels(xs, mode).1
    }

    /// layer1's output (stride 4) and the last feature map.
    pub fn run_levels(&self, xs: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        let mut stages = self.run_stages(xs, mode);
        let high = stages.pop().expect("five stages");
        (stages.swap_remove(1), high)
    }

    /// The output of each stage: the stem (after the max pool, stride 4), layer1 … layer4.
    pub fn run_stages(&self, xs: &Tensor, mode: Mode) -> Vec<Tensor> {
        let stem = self.bn1.run(&self.conv1.forward(xs), mode).relu_().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut stages = vec![stem];
        for layer in &self.layers {
            let input = stages.last().expect("the stem").shallow_clone();
            stages.push(layer.iter().fold(input, |h, block| block.run(&h, mode)));
        }
        stages
    }
}

impl Module for ResNet {
    /// Inference ([`Mode::Eval`]).
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.run(xs, Mode::Eval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn numel(vars: impl Iterator<Item = Tensor>) -> i64 {
        vars.map(|t| t.numel() as i64).sum()
    }

    /// Parameter counts of torchvision's models (its documentation: 11,689,512 / 21,797,672 /
    /// 25,557,032 / 44,549,160) minus the 1000-class fc layer (512·1000+1000 or 2048·1000+1000).
    #[test]
    fn parameter_counts_and_names_match_torchvision() {
        for (depth, with_fc, fc) in [
            (Depth::Resnet18, 11_689_512, 513_000),
            (Depth::Resnet34, 21_797_672, 513_000),
            (Depth::Resnet50, 25_557_032, 2_049_000),
            (Depth::Resnet101, 44_549_160, 2_049_000),
        ] {
            let vs = VarStore::new(Device::Cpu);
            let net = ResNet::new(&vs.root(), depth, [2, 2, 2, 1]);
            let vars = vs.variables();
            // Parameters are everything but the BN running statistics (buffers).
            let params = numel(vars.iter().filter(|(k, _)| !k.contains("running_")).map(|(_, v)| v.shallow_clone()));
            assert_eq!(params, with_fc - fc, "{depth:?}");
            assert_eq!(net.out_channels(), if fc == 513_000 { 512 } else { 2048 });
        }
        let vs = VarStore::new(Device::Cpu);
        ResNet::new(&vs.root(), Depth::Resnet101, [2, 2, 2, 1]);
        let vars = vs.variables();
        for name in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.bias",
            "layer3.22.bn2.running_mean",
            "layer4.2.conv3.weight",
        ] {
            assert!(vars.contains_key(name), "missing {name}");
        }
        assert_eq!(vars["layer4.2.conv3.weight"].size(), [2048, 512, 1, 1]);
        assert_eq!(vars["layer2.0.conv2.weight"].size(), [128, 128, 3, 3], "stride on the 3x3, as torchvision v1.5");
    }

    #[test]
    fn only_convs_after_the_stem_train() {
        let vs = VarStore::new(Device::Cpu);
        ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 1]);
        let trainable = vs.trainable_variables();
        let all = vs.variables();
        let expected: Vec<&String> =
            all.keys().filter(|k| k.ends_with("weight") && !k.contains("bn") && *k != "conv1.weight" && !k.ends_with("downsample.1.weight")).collect();
        assert_eq!(trainable.len(), expected.len());
        assert!(trainable.iter().all(|t| t.requires_grad()));
        assert!(!all["conv1.weight"].requires_grad() && !all["layer1.0.bn1.weight"].requires_grad());
    }

    #[test]
    fn output_stride_and_shape_follow_the_strides() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 1]);
        assert_eq!(net.output_stride(), 16);
        let out = net.forward(&Tensor::randn([2, 3, 64, 80], (Kind::Float, Device::Cpu)));
        assert_eq!(out.size(), [2, 512, 4, 5]);
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 2]);
        assert_eq!(net.output_stride(), 32);
        assert_eq!(net.forward(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu))).size(), [1, 512, 2, 2]);
    }

    /// torchvision's `replace_stride_with_dilation=[False, True, True]`: layer3 and layer4 keep
    /// stride 1, each stage's first block at the dilation so far, the rest at the doubled one;
    /// layer1 gives the stride-4 features.
    #[test]
    fn dilated_stages_follow_torchvision() {
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::dilated(&vs.root(), Depth::Resnet50, [2, 2, 1, 1]);
        let dilation = |layer: usize, block: usize| (net.layers[layer][block].convs[1].0.stride(), net.layers[layer][block].convs[1].0.dilation());
        assert_eq!([dilation(1, 0), dilation(2, 0), dilation(2, 1), dilation(3, 0), dilation(3, 2)], [(2, 1), (1, 1), (1, 2), (1, 2), (1, 4)]);
        assert_eq!((net.output_stride(), net.low_level_channels()), (8, 256));
        let (low, high) = tch::no_grad(|| net.run_levels(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)), Mode::Eval));
        assert_eq!((low.size(), high.size()), (vec![1, 256, 16, 16], vec![1, 2048, 8, 8]));
        // Not dilated (IRNet's CAM backbone): a stride-1 layer4 keeps dilation 1.
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 1]);
        assert_eq!(net.layers[3][1].convs[1].0.dilation(), 1);
    }

    /// After calibration on a batch, every BN of that batch's forward pass outputs zero mean
    /// and unit variance per channel (weight 1, bias 0).
    #[test]
    fn calibration_normalises_each_layer_on_its_batch() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 1]);
        let xs = Tensor::randn([4, 3, 48, 48], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let _ = tch::no_grad(|| net.run(&xs, Mode::Calibrate));
        let stem = net.bn1.forward(&net.conv1.forward(&xs));
        let dims = [0i64, 2, 3];
        let mean = stem.mean_dim(dims.as_slice(), false, Kind::Float).abs().max().double_value(&[]);
        let var = stem.var_correction(dims.as_slice(), 0, false);
        assert!(mean < 1e-4, "{mean}");
        assert!((var - 1.0).abs().max().double_value(&[]) < 1e-3);
        let first = &net.layers[0][0];
        let h = stem.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let inner = first.convs[0].1.forward(&first.convs[0].0.forward(&h));
        assert!(inner.mean_dim(dims.as_slice(), false, Kind::Float).abs().max().double_value(&[]) < 1e-4);
        assert!(vs.variables()["layer4.1.bn2.running_var"].ne(1.0).any().int64_value(&[]) == 1, "deep layers calibrated too");
    }

    #[test]
    fn gradients_reach_trainable_convs_only() {
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), Depth::Resnet18, [2, 2, 2, 1]);
        net.forward(&Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
        let vars = vs.variables();
        assert!(vars["layer4.1.conv2.weight"].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!vars["conv1.weight"].grad().defined());
        assert!(!vars["layer4.1.bn2.weight"].grad().defined());
    }
}
