//! Adam with decoupled weight decay, as fastai v1 runs it (`AdamW`-style `true_wd`): every step scales
//! each trained parameter by 1 − lr·wd, then takes PyTorch's Adam step. Written here rather than using
//! libtorch's optimizer so that its moments can be checkpointed and restored exactly.

use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The state of one parameter.
pub struct Slot {
    pub name: String,
    pub param: Tensor,
    pub group: usize,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: i64,
}

pub struct Adam {
    pub config: AdamConfig,
    pub slots: Vec<Slot>,
}

impl Adam {
    /// A fresh optimizer over the parameters that currently require gradients (fastai rebuilds its
    /// optimizer at every change of freezing, so the state starts from zero).
    pub fn new<'a>(config: AdamConfig, params: impl IntoIterator<Item = (&'a str, &'a Tensor, usize)>) -> Adam {
        let slots = params
            .into_iter()
            .filter(|(_, t, _)| t.requires_grad())
            .map(|(name, t, group)| Slot {
                name: name.to_owned(),
                param: t.shallow_clone(),
                group,
                exp_avg: t.zeros_like().detach(),
                exp_avg_sq: t.zeros_like().detach(),
                step: 0,
            })
            .collect();
        Adam { config, slots }
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// One step with per-group learning rates `lrs` and the current β1.
    pub fn step(&mut self, lrs: &[f64], beta1: f64) {
        let AdamConfig { beta2, eps, weight_decay } = self.config;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lrs[s.group.min(lrs.len() - 1)];
                s.step += 1;
                if weight_decay != 0.0 {
                    let _ = s.param.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = s.exp_avg.lerp_(&g, 1.0 - beta1);
                let _ = s.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = s.exp_avg_sq.addcmul_(&g, &(&g * (1.0 - beta2)));
                let bc1 = 1.0 - beta1.powi(s.step as i32);
                let bc2 = 1.0 - beta2.powi(s.step as i32);
                let denom = (s.exp_avg_sq.sqrt() / bc2.sqrt()) + eps;
                let update = (&s.exp_avg / &denom) * (lr / bc1);
                let _ = s.param.g_sub_(&update);
            }
        });
    }

    /// The moments and step counts, as named CPU tensors for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.to_device(tch::Device::Cpu).contiguous()));
            out.push((format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.to_device(tch::Device::Cpu).contiguous()));
            out.push((format!("step.{}", s.name), Tensor::from_slice(&[s.step]).to_kind(Kind::Int64)));
        }
        out
    }

    /// Restores what [`Adam::state`] saved; every slot must be present.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let map: BTreeMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            for s in &mut self.slots {
                let get = |k: String| {
                    map.get(k.as_str()).copied().ok_or_else(|| anyhow::anyhow!("checkpoint lacks optimizer tensor {k}"))
                };
                s.exp_avg.copy_(get(format!("exp_avg.{}", s.name))?);
                s.exp_avg_sq.copy_(get(format!("exp_avg_sq.{}", s.name))?);
                s.step = get(format!("step.{}", s.name))?.int64_value(&[0]);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pytorch_adam_with_decoupled_decay_by_hand() {
        // One parameter, two steps, computed by hand with PyTorch's formulas.
        let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let cfg = AdamConfig { beta2: 0.99, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = Adam::new(cfg, [("w", &p, 0)]);
        let (lr, b1) = (0.1, 0.9);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            opt.zero_grad();
            let loss = (&p * &p).sum(Kind::Double); // grad = 2p
            loss.backward();
            let g: Vec<f64> = expect.iter().map(|x| 2.0 * x).collect();
            opt.step(&[lr], b1);
            for i in 0..2 {
                expect[i] *= 1.0 - lr * 0.01;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
                let mh = m[i] / (1.0 - b1.powi(step));
                let denom = (v[i] / (1.0 - 0.99f64.powi(step))).sqrt() + 1e-8;
                expect[i] -= lr * mh / denom;
            }
            let got: Vec<f64> = Vec::<f64>::try_from(&p.detach()).unwrap();
            for i in 0..2 {
                assert!((got[i] - expect[i]).abs() < 1e-12, "step {step}: {got:?} vs {expect:?}");
            }
        }
        // state round-trips
        let st = opt.state();
        let mut fresh = Adam::new(cfg, [("w", &p, 0)]);
        fresh.load_state(&st).unwrap();
        assert_eq!(fresh.slots[0].step, 2);
        assert!(fresh.slots[0].exp_avg.equal(&opt.slots[0].exp_avg));
    }
}
