//! MobileNetV2 as a WSSS backbone (docs/methods.md, Backbones): torchvision's network and parameter
//! names (`features.0.0.weight`, `features.4.conv.1.1.running_var`, ...), every BatchNorm
//! frozen, the stem (`features.0`) not trained, no classifier head: `run` returns the 1280
//! channels of `features.18`. Output stride 32, 16 or 8: the strides of the stages that
//! correspond to ResNet's layer2/3/4 (32, 64 and 160 channels) become dilations when set to 1,
//! as DeepLab v3 does with MobileNetV2 (docs/methods.md, Backbones).

use tch::nn::{self, Module};
use tch::Tensor;

use super::amm::Amm;
use super::layers::{conv, BatchNorm, Conv, ConvSpec, Mode};
use super::resnet::Strides;

/// torchvision's inverted-residual settings (expansion t, channels c, blocks n, stride s) for
/// width 1.0, and which entry of [`Strides`] replaces s (None: fixed).
const SETTINGS: [(i64, i64, usize, i64, Option<usize>); 7] = [
    (1, 16, 1, 1, None),
    (6, 24, 2, 2, None),
    (6, 32, 3, 2, Some(1)),
    (6, 64, 4, 2, Some(2)),
    (6, 96, 3, 1, None),
    (6, 160, 3, 2, Some(3)),
    (6, 320, 1, 1, None),
];
const STEM_CHANNELS: i64 = 32;
const LAST_CHANNELS: i64 = 1280;

/// The strides a MobileNetV2 accepts: output stride 32, 16 or 8 (a stride-1 stage can be
/// followed by stride-1 stages only, as dilation carries on).
pub const VALID_STRIDES: [Strides; 3] = [[2, 2, 2, 2], [2, 2, 2, 1], [2, 2, 1, 1]];

/// Convolution, frozen BatchNorm and, unless it is a projection, ReLU6.
#[derive(Debug)]
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    relu6: bool,
}

impl ConvBn {
    /// `conv` and BatchNorm at `vs/conv_name` and `vs/bn_name` (torchvision's `Sequential` indices).
    fn new(vs: &nn::Path, conv_name: &str, bn_name: &str, spec: ConvSpec, trainable: bool, relu6: bool) -> ConvBn {
        ConvBn { conv: conv(vs, conv_name, spec, trainable), bn: BatchNorm::new(&(vs / bn_name), spec.c_out, false), relu6 }
    }

    fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        let mut h = self.bn.run(&self.conv.forward(xs), mode);
        // torchvision's ReLU6(inplace=True), i.e. hardtanh_(0, 6): its backward is one fused
        // kernel, where clamp's is four passes (~10% of a DeepLab v3+ step, perf-measured).
        if self.relu6 {
            h.relu6_()
        } else {
            h
        }
    }
}

/// torchvision's `InvertedResidual`: 1×1 expansion (absent when t = 1), 3×3 depthwise with the
/// stride and dilation, 1×1 linear projection; the input is added when the block keeps stride
/// and channels. AMR's compensation branch puts an AMM on the projection's output before the
/// addition, as on a ResNet block's residual branch, and so only in the blocks that have a
/// shortcut: in the others it would scale the whole signal by the modulation, block after
/// block, and the branch did not train (docs/methods.md, Backbones).
#[derive(Debug)]
struct InvertedResidual {
    layers: Vec<ConvBn>,
    shortcut: bool,
    amm: Option<Amm>,
}

impl InvertedResidual {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, expansion: i64, stride: i64, dilation: i64, with_amm: bool) -> InvertedResidual {
        let hidden = c_in * expansion;
        let seq = vs / "conv";
        let mut layers = Vec::new();
        // Sequential positions: [expand (0.0, 0.1)], depthwise (i.0, i.1), projection conv, BN.
        if expansion != 1 {
            layers.push(ConvBn::new(&(&seq / "0"), "0", "1", ConvSpec::plain(c_in, hidden, 1, 1), true, true));
        }
        let i = layers.len();
        let depthwise = ConvSpec { c_in: hidden, c_out: hidden, k: 3, stride, dilation, groups: hidden };
        layers.push(ConvBn::new(&(&seq / i), "0", "1", depthwise, true, true));
        layers.push(ConvBn::new(&seq, &(i + 1).to_string(), &(i + 2).to_string(), ConvSpec::plain(hidden, c_out, 1, 1), true, false));
        let shortcut = stride == 1 && c_in == c_out;
        let amm = (with_amm && shortcut).then(|| Amm::new(&(vs / "amm"), c_out));
        InvertedResidual { layers, shortcut, amm }
    }

    fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        let h = self.layers.iter().fold(xs.shallow_clone(), |h, layer| layer.run(&h, mode));
        let h = match &self.amm {
            Some(amm) => amm.forward(&h, mode),
            None => h,
        };
        if self.shortcut {
            h + xs
        } else {
            h
        }
    }
}

/// MobileNetV2's feature extractor (`features.0` … `features.18`).
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    /// `features.18`, the 1×1 conv to 1280 channels (absent in DeepLab's MobileNetV2).
    last: Option<ConvBn>,
    output_stride: i64,
}

/// Blocks up to the end of the stride-4 stage (`features.1`–`features.3`): DeepLab v3+'s
/// low-level features are their output.
const LOW_LEVEL_BLOCKS: usize = 3;

/// The `features.N` whose outputs IRNet's branches read ([`MobileNetV2::run_stages`]).
const IRN_TAPS: [usize; 5] = [2, 3, 6, 13, 17];

impl MobileNetV2 {
    /// Builds the network under `vs` (the root for torchvision's names). `strides` must be one
    /// of [`VALID_STRIDES`] (the config checks it).
    pub fn new(vs: &nn::Path, strides: Strides, with_amm: bool) -> MobileNetV2 {
        MobileNetV2::build(vs, strides, with_amm, true)
    }

    /// The network without `features.18`, as DeepLab v3+ uses it: the 320 channels of
    /// `features.17` are its last features.
    pub fn without_last(vs: &nn::Path, strides: Strides) -> MobileNetV2 {
        MobileNetV2::build(vs, strides, false, false)
    }

    fn build(vs: &nn::Path, strides: Strides, with_amm: bool, with_last: bool) -> MobileNetV2 {
        assert!(VALID_STRIDES.contains(&strides), "MobileNetV2 strides {strides:?}");
        let features = vs / "features";
        let stem = ConvBn::new(&(&features / "0"), "0", "1", ConvSpec::plain(3, STEM_CHANNELS, 3, 2), false, true);
        let (mut c_in, mut index, mut output_stride, mut dilation) = (STEM_CHANNELS, 1, 2, 1);
        let mut blocks = Vec::new();
        for (expansion, c_out, n, stride, configurable) in SETTINGS {
            // A stage whose stride is set to 1 dilates instead: its first block keeps the
            // dilation so far, the following ones (and every later stage) use the doubled one.
            let dilate = configurable.is_some_and(|i| strides[i] == 1);
            for b in 0..n {
                let (block_stride, block_dilation) = match (b, dilate) {
                    (0, true) => (1, dilation),
                    (0, false) => (stride, dilation),
                    _ => (1, dilation * if dilate { 2 } else { 1 }),
                };
                blocks.push(InvertedResidual::new(&(&features / index), c_in, c_out, expansion, block_stride, block_dilation, with_amm));
                (c_in, index) = (c_out, index + 1);
            }
            if dilate {
                dilation *= stride;
            } else {
                output_stride *= stride;
            }
        }
        let last = with_last.then(|| ConvBn::new(&(&features / index), "0", "1", ConvSpec::plain(c_in, LAST_CHANNELS, 1, 1), true, true));
        MobileNetV2 { stem, blocks, last, output_stride }
    }

    pub fn out_channels(&self) -> i64 {
        if self.last.is_some() {
            LAST_CHANNELS
        } else {
            SETTINGS[SETTINGS.len() - 1].1
        }
    }

    /// Channels of `features.3`, the stride-4 features of DeepLab v3+'s decoder.
    pub fn low_level_channels(&self) -> i64 {
        SETTINGS[1].1
    }

    pub fn output_stride(&self) -> i64 {
        self.output_stride
    }

    /// [N, 3, H, W] normalised images → [N, 1280, ⌈H/os⌉, ⌈W/os⌉] features.
    pub fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        self.run_levels(xs, mode).1
    }

    /// IRNet's five stage outputs (docs/methods.md §8): `features.2` and `features.3` (stride 4,
    /// where a ResNet gives its stem and layer1), `features.6` (stride 8), `features.13` and
    /// `features.17` (stride 16 at strides (2, 2, 2, 1)).
    pub fn run_stages(&self, xs: &Tensor, mode: Mode) -> Vec<Tensor> {
        let mut h = self.stem.run(xs, mode);
        let mut stages = Vec::with_capacity(IRN_TAPS.len());
        for (index, block) in self.blocks.iter().enumerate() {
            h = block.run(&h, mode);
            if IRN_TAPS.contains(&(index + 1)) {
                stages.push(h.shallow_clone());
            }
        }
        stages
    }

    /// Channels of [`MobileNetV2::run_stages`]' outputs (24, 24, 32, 96, 320).
    pub fn stage_channels(&self) -> [i64; 5] {
        // `features.N` for N ≥ 1 is block N − 1 of SETTINGS' stages, in order.
        let block_channels: Vec<i64> = SETTINGS.iter().flat_map(|&(_, c_out, n, _, _)| std::iter::repeat_n(c_out, n)).collect();
        IRN_TAPS.map(|feature| block_channels[feature - 1])
    }

    /// `features.3`'s output (stride 4) and the last features.
    pub fn run_levels(&self, xs: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        let (early, late) = self.blocks.split_at(LOW_LEVEL_BLOCKS);
        let low = early.iter().fold(self.stem.run(xs, mode), |h, block| block.run(&h, mode));
        let h = late.iter().fold(low.shallow_clone(), |h, block| block.run(&h, mode));
        let high = match &self.last {
            Some(last) => last.run(&h, mode),
            None => h,
        };
        (low, high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    /// torchvision's mobilenet_v2 has 3,504,872 parameters, of which the 1000-class
    /// classifier holds 1280·1000 + 1000; 52 convolutions and 52 BatchNorms.
    #[test]
    fn parameters_and_names_match_torchvision() {
        let vs = VarStore::new(Device::Cpu);
        let net = MobileNetV2::new(&vs.root(), [2, 2, 2, 2], false);
        let vars = vs.variables();
        let params: i64 = vars.iter().filter(|(k, _)| !k.contains("running_")).map(|(_, v)| v.numel() as i64).sum();
        assert_eq!(params, 3_504_872 - 1_281_000);
        assert_eq!(vars.keys().filter(|k| k.ends_with("running_mean")).count(), 52);
        for (name, shape) in [
            ("features.0.0.weight", vec![32, 3, 3, 3]),
            ("features.1.conv.0.0.weight", vec![32, 1, 3, 3]),
            ("features.1.conv.1.weight", vec![16, 32, 1, 1]),
            ("features.1.conv.2.running_var", vec![16]),
            ("features.2.conv.0.0.weight", vec![96, 16, 1, 1]),
            ("features.2.conv.1.0.weight", vec![96, 1, 3, 3]),
            ("features.2.conv.2.weight", vec![24, 96, 1, 1]),
            ("features.2.conv.3.bias", vec![24]),
            ("features.17.conv.2.weight", vec![320, 960, 1, 1]),
            ("features.18.0.weight", vec![1280, 320, 1, 1]),
            ("features.18.1.running_mean", vec![1280]),
        ] {
            assert_eq!(vars.get(name).map(|t| t.size()), Some(shape), "{name}");
        }
        assert_eq!((net.out_channels(), net.output_stride()), (1280, 32));
        // Trained: every conv but the stem's; no BatchNorm.
        let trainable = vs.trainable_variables().len();
        assert_eq!(trainable, 51);
        assert!(!vars["features.0.0.weight"].requires_grad() && !vars["features.5.conv.1.1.weight"].requires_grad());
    }

    /// Dilation keeps the map size: output stride 32 / 16 / 8 on a 64×96 input gives 2×3 /
    /// 4×6 / 8×12, and the dilated depthwise convolutions are those DeepLab v3 dilates.
    #[test]
    fn strides_set_the_output_stride_through_dilation() {
        for (strides, os) in [([2, 2, 2, 2], 32), ([2, 2, 2, 1], 16), ([2, 2, 1, 1], 8)] {
            let vs = VarStore::new(Device::Cpu);
            let net = MobileNetV2::new(&vs.root(), strides, false);
            assert_eq!(net.output_stride(), os);
            let out = tch::no_grad(|| net.run(&Tensor::randn([1, 3, 64, 96], (Kind::Float, Device::Cpu)), Mode::Eval));
            assert_eq!(out.size(), [1, 1280, 64 / os, 96 / os]);
            let dilations: Vec<(i64, i64)> = net
                .blocks
                .iter()
                .map(|b| {
                    let dw = &b.layers[b.layers.len() - 2].conv;
                    (dw.stride(), dw.dilation())
                })
                .collect();
            // features.14 opens the 160-channel stage, features.7 the 64-channel one.
            match os {
                32 => assert!(dilations.iter().all(|&(_, d)| d == 1)),
                16 => {
                    assert_eq!(&dilations[13..17], [(1, 1), (1, 2), (1, 2), (1, 2)]);
                    assert!(dilations[..13].iter().all(|&(_, d)| d == 1));
                }
                _ => {
                    assert_eq!(&dilations[6..10], [(1, 1), (1, 2), (1, 2), (1, 2)]);
                    assert_eq!(&dilations[10..17], [(1, 2), (1, 2), (1, 2), (1, 2), (1, 4), (1, 4), (1, 4)]);
                }
            }
        }
    }

    /// Residual additions only where stride and channels are kept (torchvision: 10 blocks), and
    /// AMR's AMMs in those blocks only.
    #[test]
    fn shortcuts_and_amms_where_shape_is_kept() {
        let vs = VarStore::new(Device::Cpu);
        let net = MobileNetV2::new(&vs.root(), [2, 2, 2, 1], true);
        let with_shortcut: Vec<usize> = net.blocks.iter().enumerate().filter(|(_, b)| b.shortcut).map(|(i, _)| i + 1).collect();
        assert_eq!(with_shortcut, [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]);
        let mut with_amm: Vec<usize> =
            vs.variables().keys().filter_map(|k| k.strip_suffix(".amm.spatial.conv.weight")?.strip_prefix("features.")?.parse().ok()).collect();
        with_amm.sort();
        assert_eq!(with_amm, with_shortcut);
    }
}
