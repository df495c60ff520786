//! AMR's attention modulation module (docs/methods.md): `AMM(x) = S(Ch(x))`, a channel then a
//! spatial attention whose maps go through the Gaussian modulation `G`, which damps the most and
//! the least responsive channels/positions and lifts the minor ones.

use tch::nn;
use tch::{Kind, Tensor};

use super::layers::{BatchNorm, Mode};

/// Added to the standard deviation of [`gauss_modulation`] so that a constant input (all
/// elements equal: s = 0) gives a finite output instead of a division by zero.
const STD_FLOOR: f64 = 1e-6;

/// `G(v) = exp(−(v−μ)² / (2s²)) / (√(2π) s)` element-wise, with `μ` the mean and `s` the
/// unbiased (n−1) standard deviation of *all* elements of `v` (the whole batch tensor, as
/// AMR's reference computes it). `μ` and `s` are constants: no gradient flows through them.
/// Any shape (at least 2 elements); output has `v`'s shape, values in (0, 1/(√(2π) s)].
pub fn gauss_modulation(v: &Tensor) -> Tensor {
    let v = v.to_kind(Kind::Float);
    let (mean, std) = tch::no_grad(|| (v.mean(Kind::Float), v.std(true).clamp_min(STD_FLOOR)));
    let z = (&v - &mean) / &std;
    (z.square() * -0.5).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
}

/// A linear layer with bias, initialised as PyTorch's `nn.Linear` (U(±1/√fan_in) for both).
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64) -> Linear {
        let bound = 1.0 / (c_in as f64).sqrt();
        let uniform = |shape: &[i64]| Tensor::empty(shape, (Kind::Float, vs.device())).uniform_(-bound, bound);
        Linear { weight: vs.add("weight", uniform(&[c_out, c_in]), true), bias: vs.add("bias", uniform(&[c_out]), true) }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

/// Channel reduction of the attention MLP (D → D/16 → D).
const REDUCTION: i64 = 16;

/// The attention modulation module for feature maps of `channels` channels. Parameter names
/// (under the path it is built on): `channel.0.{weight,bias}`, `channel.2.{weight,bias}` (the
/// MLP, as an `nn.Sequential` would name them), `spatial.conv.weight` ([1, 2, 7, 7], no bias),
/// `spatial.bn.{weight,bias,running_mean,running_var}`.
#[derive(Debug)]
pub struct Amm {
    fc1: Linear,
    fc2: Linear,
    /// [1, 2, 7, 7]
    spatial_conv: Tensor,
    spatial_bn: BatchNorm,
}

impl Amm {
    pub fn new(vs: &nn::Path, channels: i64) -> Amm {
        let hidden = (channels / REDUCTION).max(1);
        let channel = vs / "channel";
        let spatial = vs / "spatial";
        // PyTorch's Conv2d default: U(±1/√fan_in), fan_in = 2·7·7.
        let bound = 1.0 / 98f64.sqrt();
        let conv = Tensor::empty([1, 2, 7, 7], (Kind::Float, vs.device())).uniform_(-bound, bound);
        Amm {
            fc1: Linear::new(&(&channel / "0"), channels, hidden),
            fc2: Linear::new(&(&channel / "2"), hidden, channels),
            spatial_conv: (&spatial / "conv").add("weight", conv, true),
            spatial_bn: BatchNorm::new(&(&spatial / "bn"), 1, true),
        }
    }

    /// `x`: [N, D, h, w] (any float kind; the attention is computed in f32 and the output has
    /// `x`'s kind and shape). `mode` says how the spatial BatchNorm runs: batch statistics when
    /// training, running statistics otherwise. Because `G` uses statistics of the whole batch,
    /// a sample's output depends on the other samples of its batch.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        // Channel: a = MLP(GAP(x)), Ch(x) = x ⊙ G(a).
        let pooled = xf.mean_dim([2, 3].as_slice(), false, Kind::Float);
        let a = self.fc2.forward(&self.fc1.forward(&pooled).relu());
        let xc = &xf * gauss_modulation(&a).unsqueeze(-1).unsqueeze(-1);
        // Spatial: p = [max_d ; mean_d], b = BN(Conv7×7(p)), S(x) = x ⊙ G(b).
        let p = Tensor::cat(&[xc.amax([1].as_slice(), true), xc.mean_dim([1].as_slice(), true, Kind::Float)], 1);
        let b = self.spatial_bn.run(&p.conv2d(&self.spatial_conv, None::<Tensor>, [1, 1], [3, 3], [1, 1], 1), mode);
        (xc * gauss_modulation(&b)).to_kind(x.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// v = (1, 2, 3, 4): μ = 2.5, s = √(5/3) (unbiased); G by the formula in f64.
    #[test]
    fn gauss_modulation_matches_the_formula() {
        let v = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let s = (5.0f64 / 3.0).sqrt();
        let expected: Vec<f64> =
            [1.0, 2.0, 3.0, 4.0].iter().map(|x: &f64| (-(x - 2.5).powi(2) / (2.0 * s * s)).exp() / ((2.0 * std::f64::consts::PI).sqrt() * s)).collect();
        let got = values(&gauss_modulation(&v));
        assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?} vs {expected:?}");
        // The middle values are lifted above the extremes: G(2) = G(3) > G(1) = G(4).
        assert!(got[1] > got[0] && (got[1] - got[2]).abs() < 1e-7 && (got[0] - got[3]).abs() < 1e-7);
    }

    /// μ and s are constants: dG/dv_i = −G(v_i)·(v_i−μ)/s², nothing from the statistics.
    #[test]
    fn gauss_modulation_statistics_are_detached() {
        let v = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 7.0]).set_requires_grad(true);
        let g = gauss_modulation(&v);
        g.sum(Kind::Float).backward();
        let (mu, s2) = (13.0 / 4.0, {
            let xs = [1.0f64, 2.0, 3.0, 7.0];
            xs.iter().map(|x| (x - 3.25).powi(2)).sum::<f64>() / 3.0
        });
        let gv = values(&g);
        let expected: Vec<f64> = [1.0f64, 2.0, 3.0, 7.0].iter().zip(&gv).map(|(x, g)| -g * (x - mu) / s2).collect();
        let grad = values(&v.grad());
        assert!(grad.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{grad:?} vs {expected:?}");
        // With gradients through μ and s the sum's gradient would differ (it is shift-invariant
        // then, so its entries would sum to zero; here they do not).
        assert!(grad.iter().sum::<f64>().abs() > 1e-3);
    }

    #[test]
    fn amm_keeps_the_shape_and_passes_gradients_to_its_parameters_and_input() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let amm = Amm::new(&vs.root(), 32);
        // The MLP has 2 hidden units; with the drawn bias both can be below zero for both
        // samples (the seed does not pin the draws: tests share libtorch's generator across
        // threads), and channel.0 then gets no gradient. A bias of 1 keeps them live.
        let _ = tch::no_grad(|| vs.variables()["channel.0.bias"].shallow_clone().fill_(1.0));
        let x = Tensor::randn([2, 32, 5, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = amm.forward(&x, Mode::Train);
        assert_eq!(y.size(), [2, 32, 5, 6]);
        y.square().sum(Kind::Float).backward();
        let vars = vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "channel.0.bias",
                "channel.0.weight",
                "channel.2.bias",
                "channel.2.weight",
                "spatial.bn.bias",
                "spatial.bn.running_mean",
                "spatial.bn.running_var",
                "spatial.bn.weight",
                "spatial.conv.weight"
            ]
        );
        assert_eq!(vars["channel.0.weight"].size(), [2, 32], "D/16 hidden units");
        for name in ["channel.0.weight", "channel.2.bias", "spatial.conv.weight", "spatial.bn.weight", "spatial.bn.bias"] {
            let grad = vars[name].grad();
            assert!(grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} got no gradient");
        }
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Training updated the spatial BN's running statistics (momentum 0.1 from 0 / 1).
        assert!(vars["spatial.bn.running_mean"].double_value(&[0]) != 0.0);
    }

    /// The output is x ⊙ G(a) ⊙ G(b), recomputed here step by step from the parameters.
    #[test]
    fn amm_is_channel_then_spatial_modulation() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let amm = Amm::new(&vs.root(), 16);
        let x = Tensor::randn([3, 16, 4, 4], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| amm.forward(&x, Mode::Eval));
        let vars = vs.variables();
        let gauss = |v: &Tensor| {
            let (m, s) = (v.mean(Kind::Double), v.to_kind(Kind::Double).std(true));
            (-(v.to_kind(Kind::Double) - m).square() / (s.square() * 2.0)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
        };
        let gap = x.mean_dim([2, 3].as_slice(), false, Kind::Float);
        let a = gap
            .matmul(&vars["channel.0.weight"].tr())
            .g_add(&vars["channel.0.bias"])
            .relu()
            .matmul(&vars["channel.2.weight"].tr())
            .g_add(&vars["channel.2.bias"]);
        let xc = x.to_kind(Kind::Double) * gauss(&a).view([3, 16, 1, 1]);
        let p = Tensor::stack(&[xc.amax([1].as_slice(), false), xc.mean_dim([1].as_slice(), false, Kind::Double)], 1);
        // Eval-mode BN with fresh statistics (mean 0, var 1, weight 1, bias 0): b/√(1+1e-5).
        let b = p.conv2d(&vars["spatial.conv.weight"].to_kind(Kind::Double), None::<Tensor>, [1, 1], [3, 3], [1, 1], 1) / (1.0f64 + 1e-5).sqrt();
        let expected = xc * gauss(&b);
        let diff = (y.to_kind(Kind::Double) - expected).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }
}
