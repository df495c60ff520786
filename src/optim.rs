//! SGD with momentum, weight decay, parameter groups with learning-rate multipliers and the
//! poly schedule of docs/methods.md, with a state that is saved and restored exactly.
//!
//! The update is PyTorch's `torch.optim.SGD` (dampening 0, not Nesterov):
//! `g = ∇p + wd·p;  b = μ·b + g (b = g on the first step);  p = p − lr·b`,
//! with `lr = lr_0 · mult_group · (1 − t/T)^power` at step t (IRNet's PolyOptimizer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Optimiser settings (the `[train]` keys that feed it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdSettings {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub poly_power: f64,
    /// T: the step at which the learning rate reaches 0.
    pub total_steps: u64,
}

/// Parameters sharing a learning-rate multiplier.
pub struct ParamGroup {
    pub name: String,
    pub lr_mult: f64,
    /// Whether weight decay applies (DeepLab exempts biases).
    pub decay: bool,
    /// (parameter name, tensor).
    pub params: Vec<(String, Tensor)>,
}

pub struct Sgd {
    settings: SgdSettings,
    groups: Vec<ParamGroup>,
    /// Momentum buffers by parameter name; absent until a parameter's first update.
    momentum: BTreeMap<String, Tensor>,
    step: u64,
}

/// Prefix of momentum-buffer names in a saved optimiser state.
const MOMENTUM_PREFIX: &str = "momentum.";

impl Sgd {
    pub fn new(settings: SgdSettings, groups: Vec<ParamGroup>) -> Sgd {
        Sgd { settings, groups, momentum: BTreeMap::new(), step: 0 }
    }

    pub fn settings(&self) -> &SgdSettings {
        &self.settings
    }

    /// Advances the schedule by one step without an update (a skipped step).
    pub fn skip_step(&mut self) {
        self.step += 1;
    }

    /// Steps taken so far (t of the schedule).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The base learning rate at step t: `lr_0 (1 − t/T)^power` (0 from T on).
    pub fn lr_at(&self, step: u64) -> f64 {
        let SgdSettings { lr, poly_power, total_steps, .. } = self.settings;
        let remaining = 1.0 - step as f64 / total_steps.max(1) as f64;
        lr * remaining.max(0.0).powf(poly_power)
    }

    /// The base learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.step)
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
            p.zero_grad();
        }
    }

    /// Every trainable parameter, in group order (what a gradient all-reduce walks).
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().map(|(_, p)| p))
    }

    /// One update with the current gradients. Parameters without a gradient are left alone.
    /// Works in place (no allocation after the first step): the weight-decay term is added to
    /// the gradient tensor itself, which the next `zero_grad` clears.
    pub fn step(&mut self) {
        let base = self.lr();
        let SgdSettings { momentum, weight_decay, .. } = self.settings;
        tch::no_grad(|| {
            for group in &self.groups {
                let lr = base * group.lr_mult;
                for (name, param) in &group.params {
                    let mut grad = param.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let scalar = |v: f64| Tensor::from(v as f32).to_device(param.device());
                    if weight_decay != 0.0 && group.decay {
                        let _ = grad.addcmul_(param, &scalar(weight_decay));
                    }
                    let direction = if momentum == 0.0 {
                        grad
                    } else if let Some(buffer) = self.momentum.get_mut(name) {
                        let _ = buffer.g_mul_scalar_(momentum).g_add_(&grad);
                        buffer.shallow_clone()
                    } else {
                        let buffer = grad.copy();
                        self.momentum.insert(name.clone(), buffer.shallow_clone());
                        buffer
                    };
                    let _ = param.shallow_clone().addcmul_(&direction, &scalar(-lr));
                }
            }
        });
        self.step += 1;
    }

    /// The state to save: momentum buffers by `momentum.<parameter name>` (the step count
    /// goes in the checkpoint's sidecar).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.momentum.iter().map(|(k, v)| (format!("{MOMENTUM_PREFIX}{k}"), v.shallow_clone())).collect()
    }

    /// Restores a saved state: the buffers (each must name a parameter of the same shape) and
    /// the step count.
    pub fn restore(&mut self, state: BTreeMap<String, Tensor>, step: u64) -> Result<(), String> {
        let params: BTreeMap<&str, &Tensor> = self.groups.iter().flat_map(|g| g.params.iter().map(|(k, v)| (k.as_str(), v))).collect();
        let mut momentum = BTreeMap::new();
        for (key, buffer) in state {
            let name = key.strip_prefix(MOMENTUM_PREFIX).ok_or_else(|| format!("unexpected optimiser tensor `{key}`"))?;
            let param = params.get(name).ok_or_else(|| format!("momentum buffer for `{name}`, which is not a trainable parameter"))?;
            if buffer.size() != param.size() {
                return Err(format!("momentum buffer for `{name}` has shape {:?}, the parameter {:?}", buffer.size(), param.size()));
            }
            momentum.insert(name.to_string(), buffer.to_device(param.device()).to_kind(param.kind()));
        }
        self.momentum = momentum;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn settings(momentum: f64, weight_decay: f64) -> SgdSettings {
        SgdSettings { lr: 0.1, momentum, weight_decay, poly_power: 0.9, total_steps: 10 }
    }

    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.detach()).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn poly_schedule_matches_the_formula() {
        let sgd = Sgd::new(settings(0.9, 0.0), Vec::new());
        assert_eq!(sgd.lr_at(0), 0.1);
        // 0.1 · (1 − 5/10)^0.9 = 0.1 · 0.5^0.9 = 0.0535887...
        assert!((sgd.lr_at(5) - 0.053_588_673).abs() < 1e-8);
        assert_eq!(sgd.lr_at(10), 0.0);
        assert_eq!(sgd.lr_at(12), 0.0);
    }

    /// Two steps by hand, loss = sum(p · g_fixed) so ∇p = g_fixed:
    /// p0 = 1, g = 0.5, wd = 0.1, μ = 0.9, lr0 = 0.1, T = 10, head ×10.
    /// Step 0: d = 0.5 + 0.1·1 = 0.6, b = 0.6, lr = 0.1 → p = 1 − 0.06 = 0.94 (head: lr 1 → 0.4).
    /// Step 1: d = 0.5 + 0.094 = 0.594, b = 0.9·0.6 + 0.594 = 1.134, lr = 0.1·0.9^0.9
    /// = 0.0909532 → p = 0.94 − 0.1031410 = 0.8368590.
    #[test]
    fn two_steps_by_hand_with_momentum_decay_and_groups() {
        let backbone = param(&[1.0]);
        let head = param(&[1.0]);
        let groups = vec![
            ParamGroup { name: "backbone".into(), lr_mult: 1.0, decay: true, params: vec![("b".into(), backbone.shallow_clone())] },
            ParamGroup { name: "head".into(), lr_mult: 10.0, decay: true, params: vec![("h".into(), head.shallow_clone())] },
        ];
        let mut sgd = Sgd::new(settings(0.9, 0.1), groups);
        let g = Tensor::from_slice(&[0.5f32]);
        for _ in 0..2 {
            sgd.zero_grad();
            ((&backbone * &g).sum(Kind::Float) + (&head * &g).sum(Kind::Float)).backward();
            sgd.step();
            if sgd.step_count() == 1 {
                assert!(close(&values(&backbone), &[0.94]), "{:?}", values(&backbone));
                assert!(close(&values(&head), &[0.4]), "{:?}", values(&head));
            }
        }
        assert!(close(&values(&backbone), &[0.836_859]), "{:?}", values(&backbone));
    }

    #[test]
    fn without_momentum_it_is_plain_gradient_descent() {
        let p = param(&[2.0, -1.0]);
        let mut sgd =
            Sgd::new(settings(0.0, 0.0), vec![ParamGroup { name: "all".into(), lr_mult: 1.0, decay: true, params: vec![("p".into(), p.shallow_clone())] }]);
        (&p * &p).sum(Kind::Float).backward(); // ∇ = 2p = (4, −2)
        sgd.step();
        assert!(close(&values(&p), &[1.6, -0.8]), "{:?}", values(&p));
        assert!(sgd.state().is_empty());
    }

    /// Saving after k steps and restoring into a fresh optimiser continues bitwise the same.
    #[test]
    fn restored_state_continues_identically() {
        let run = |split: Option<u64>| {
            let p = param(&[1.0, 2.0, 3.0]);
            let group = || vec![ParamGroup { name: "all".into(), lr_mult: 1.0, decay: true, params: vec![("p".into(), p.shallow_clone())] }];
            let mut sgd = Sgd::new(settings(0.9, 1e-4), group());
            for t in 0..6u64 {
                if Some(t) == split {
                    let state: BTreeMap<String, Tensor> = sgd.state().into_iter().map(|(k, v)| (k, v.copy())).collect();
                    sgd = Sgd::new(settings(0.9, 1e-4), group());
                    sgd.restore(state, t).unwrap();
                }
                sgd.zero_grad();
                (&p * &p * &p).sum(Kind::Float).backward();
                sgd.step();
            }
            values(&p)
        };
        assert_eq!(run(None), run(Some(3)));
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let mut sgd = Sgd::new(settings(0.9, 0.0), vec![ParamGroup { name: "all".into(), lr_mult: 1.0, decay: true, params: vec![("p".into(), p)] }]);
        let bad = BTreeMap::from([("momentum.p".to_string(), Tensor::zeros([3], (Kind::Float, Device::Cpu)))]);
        assert!(sgd.restore(bad, 1).unwrap_err().contains("shape [3]"));
    }
}
