//! Layers shared by the backbones (docs/methods.md, Backbones): frozen or trainable BatchNorm and a
//! bias-free convolution (strided, dilated, grouped), with torchvision's initialisation.

use std::sync::Arc;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::dist::sync_bn::{BatchNormState, StatsSync};

/// How a forward pass runs the BatchNorms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inference: running statistics everywhere.
    Eval,
    /// Training: frozen BatchNorms keep their statistics; trainable ones (AMR's attention
    /// modules) normalise with the batch's and update their running statistics, as PyTorch's
    /// `BatchNorm2d` in `train()` mode.
    Train,
    /// Data-dependent initialisation: every BatchNorm first takes the batch's per-channel mean
    /// and (biased) variance as its statistics, then runs as in `Eval`. For networks without
    /// pretrained weights, whose unit statistics would leave activations unnormalised.
    Calibrate,
}

/// A BatchNorm. Frozen (the backbone's: eval statistics, affine parameters not trained), or
/// trainable (affine parameters trained, batch statistics in `Mode::Train`; over every rank's
/// batch once [`BatchNorm::synchronise`]d).
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    trainable: bool,
    sync: Option<Arc<StatsSync>>,
}

/// torchvision's BatchNorm epsilon.
const BN_EPS: f64 = 1e-5;
/// PyTorch's default running-statistics momentum.
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    pub fn new(vs: &nn::Path, channels: i64, trainable: bool) -> BatchNorm {
        let (weight, bias) = if trainable {
            (vs.ones("weight", &[channels]), vs.zeros("bias", &[channels]))
        } else {
            (vs.ones_no_train("weight", &[channels]), vs.zeros_no_train("bias", &[channels]))
        };
        BatchNorm {
            weight,
            bias,
            running_mean: vs.zeros_no_train("running_mean", &[channels]),
            running_var: vs.ones_no_train("running_var", &[channels]),
            trainable,
            sync: None,
        }
    }

    /// Training-mode statistics over the batches of every rank of `sync` (PyTorch's
    /// `SyncBatchNorm`).
    pub fn synchronise(&mut self, sync: Arc<StatsSync>) {
        self.sync = Some(sync);
    }

    /// Panics if a synchronised BatchNorm's sum over the ranks fails (as tch's own operations
    /// panic on a libtorch error); under MPI's default error handler the job has aborted first.
    pub fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        match mode {
            Mode::Train if self.trainable => self.train(xs),
            Mode::Calibrate => {
                tch::no_grad(|| {
                    let dims = [0i64, 2, 3];
                    self.running_mean.shallow_clone().copy_(&xs.mean_dim(dims.as_slice(), false, Kind::Float));
                    self.running_var.shallow_clone().copy_(&xs.var_correction(dims.as_slice(), 0, false));
                });
                self.forward(xs)
            }
            _ => self.forward(xs),
        }
    }

    /// Batch statistics, updating the running ones. A channel with a single value (a pooled
    /// branch on a batch of one) has no batch variance: it uses the running statistics, as
    /// the synchronised layer does when the value is the only one over every rank.
    fn train(&self, xs: &Tensor) -> Tensor {
        if let Some(sync) = &self.sync {
            let state = BatchNormState {
                weight: &self.weight,
                bias: &self.bias,
                running_mean: &self.running_mean,
                running_var: &self.running_var,
                momentum: BN_MOMENTUM,
                eps: BN_EPS,
            };
            return sync.batch_norm(xs, &state).unwrap_or_else(|e| panic!("{e}"));
        }
        if xs.numel() as i64 == xs.size()[1] {
            return self.forward(xs);
        }
        xs.batch_norm(Some(&self.weight), Some(&self.bias), Some(&self.running_mean), Some(&self.running_var), true, BN_MOMENTUM, BN_EPS, true)
    }
}

impl Module for BatchNorm {
    /// y = (x − mean) / sqrt(var + eps) · weight + bias, per channel: libtorch's inference-mode
    /// batch norm (one fused kernel, as PyTorch runs a frozen BN; bf16 inputs keep f32 statistics).
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.batch_norm(Some(&self.weight), Some(&self.bias), Some(&self.running_mean), Some(&self.running_var), false, 0.0, BN_EPS, true)
    }
}

/// A bias-free k×k convolution with "same" padding (dilated: `dilation·(k/2)`), optionally
/// grouped (depthwise when `groups` = channels).
#[derive(Debug)]
pub struct Conv {
    weight: Tensor,
    stride: i64,
    dilation: i64,
    groups: i64,
}

impl Module for Conv {
    /// Computes in the input's precision: a bf16 input casts the f32 weight (as autocast does),
    /// and gradients flow back to the f32 weight through the cast.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let pad = self.dilation * (self.weight.size()[2] / 2);
        let weight = if xs.kind() == self.weight.kind() { self.weight.shallow_clone() } else { self.weight.to_kind(xs.kind()) };
        xs.conv2d(&weight, None::<Tensor>, [self.stride; 2], [pad; 2], [self.dilation; 2], self.groups)
    }
}

#[cfg(test)]
impl Conv {
    pub fn stride(&self) -> i64 {
        self.stride
    }

    pub fn dilation(&self) -> i64 {
        self.dilation
    }
}

/// Shape of a [`Conv`]: channels, kernel side, stride, dilation, groups.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub c_in: i64,
    pub c_out: i64,
    pub k: i64,
    pub stride: i64,
    pub dilation: i64,
    pub groups: i64,
}

impl ConvSpec {
    /// A plain (ungrouped, undilated) convolution.
    pub fn plain(c_in: i64, c_out: i64, k: i64, stride: i64) -> ConvSpec {
        ConvSpec { c_in, c_out, k, stride, dilation: 1, groups: 1 }
    }
}

/// `vs/name.weight`, initialised as torchvision does for ResNets and MobileNetV2 (Kaiming
/// normal, fan-out = c_out·k², ReLU gain); `trainable` false keeps it out of the optimiser
/// (the stem).
pub fn conv(vs: &nn::Path, name: &str, spec: ConvSpec, trainable: bool) -> Conv {
    let ConvSpec { c_in, c_out, k, stride, dilation, groups } = spec;
    let std = (2.0 / (c_out * k * k) as f64).sqrt();
    let init = Tensor::randn([c_out, c_in / groups, k, k], (Kind::Float, vs.device())) * std;
    Conv { weight: (vs / name).add("weight", init, trainable), stride, dilation, groups }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn frozen_batch_norm_is_the_eval_formula() {
        let vs = VarStore::new(Device::Cpu);
        let mut bn = BatchNorm::new(&vs.root(), 2, false);
        tch::no_grad(|| {
            bn.weight.copy_(&Tensor::from_slice(&[2.0f32, 0.5]));
            bn.bias.copy_(&Tensor::from_slice(&[1.0f32, -1.0]));
            bn.running_mean.copy_(&Tensor::from_slice(&[3.0f32, 0.0]));
            bn.running_var.copy_(&Tensor::from_slice(&[4.0f32, 0.25]));
        });
        let x = Tensor::from_slice(&[5.0f32, 1.0, 2.0, -2.0]).view([1, 2, 1, 2]);
        let y: Vec<f32> = Vec::try_from(bn.forward(&x).flatten(0, -1)).unwrap();
        // Channel 0: (x−3)/sqrt(4+1e-5)·2+1 → 5 ↦ ≈3, 1 ↦ ≈−1; channel 1: x/sqrt(0.25+1e-5)·0.5−1 → 2 ↦ ≈1, −2 ↦ ≈−3.
        let expected = [3.0f32, -1.0, 1.0, -3.0];
        assert!(y.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-4), "{y:?}");
    }

    /// A depthwise 3×3 at dilation 2 reads the pixels two apart: with a kernel of ones except
    /// the centre, each output is the sum of its 8 neighbours at distance 2 (zero-padded).
    #[test]
    fn dilated_depthwise_conv_reads_pixels_dilation_apart() {
        let vs = VarStore::new(Device::Cpu);
        let mut c = conv(&vs.root(), "dw", ConvSpec { c_in: 2, c_out: 2, k: 3, stride: 1, dilation: 2, groups: 2 }, true);
        assert_eq!(c.weight.size(), [2, 1, 3, 3]);
        let kernel = Tensor::ones([2, 1, 3, 3], (Kind::Float, Device::Cpu));
        let _ = kernel.get(0).get(0).get(1).get(1).fill_(0.0);
        let _ = kernel.get(1).get(0).get(1).get(1).fill_(0.0);
        let _ = kernel.get(1).multiply_scalar_(2.0);
        c.weight = kernel;
        let x = Tensor::arange(50, (Kind::Float, Device::Cpu)).view([2, 5, 5]).unsqueeze(0);
        let y = tch::no_grad(|| c.forward(&x));
        assert_eq!(y.size(), [1, 2, 5, 5]);
        // Centre (2, 2) of channel 0: the 8 pixels at (0|2|4, 0|2|4) but the centre:
        // 0+2+4+10+14+20+22+24 = 96; channel 1 is the same layout plus 25 each, doubled.
        assert_eq!(y.double_value(&[0, 0, 2, 2]), 96.0);
        assert_eq!(y.double_value(&[0, 1, 2, 2]), 2.0 * (96.0 + 8.0 * 25.0));
        // Corner (0, 0): only (0, 2), (2, 0), (2, 2) lie inside: 2 + 10 + 12 = 24.
        assert_eq!(y.double_value(&[0, 0, 0, 0]), 24.0);
    }
}
