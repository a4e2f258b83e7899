//! maskflow's side of `just bench-train`: MobileNetV2 body + fastai head at 224², batch 64, the same
//! three measurements as bench/train_steps.py (inference, frozen step, full step), as one JSON line.
//!
//! usage: bench_steps [THREADS] [ITERS] [--nchw]

use maskflow_models::{Arch, Classifier, HeadConfig};
use maskflow_train::optim::{Adam, AdamConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn timed(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    64.0 * iters as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    maskflow_core::alloc::tune_malloc();
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let iters: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(6);
    let channels_last = !args.iter().any(|a| a == "--nchw");
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let mut model = Classifier::new(Arch::MobilenetV2, 2, &HeadConfig::default(), Device::Cpu);
    let mut x = Tensor::randn([64, 3, 224, 224], (Kind::Float, Device::Cpu));
    if channels_last {
        model.to_channels_last();
        x = maskflow_models::arch::to_channels_last(&x);
    }
    let y = Tensor::randint(2, [64], (Kind::Int64, Device::Cpu));
    let inference = tch::no_grad(|| {
        timed(iters, || {
            let _ = model.forward_t(&x, false);
        })
    });
    // bf16 inference: a bf16 copy of the weights and input (tch exposes autocast for CUDA only).
    let inference_bf16 = {
        let mut m16 = Classifier::new(Arch::MobilenetV2, 2, &HeadConfig::default(), Device::Cpu);
        m16.vs.copy(&model.vs).expect("same architecture");
        if channels_last {
            m16.to_channels_last();
        }
        m16.vs.bfloat16();
        let x16 = x.to_kind(Kind::BFloat16);
        let err = tch::no_grad(|| {
            let a = model.forward_t(&x, false);
            let b = m16.forward_t(&x16, false).to_kind(Kind::Float);
            ((a.softmax(-1, Kind::Float) - b.softmax(-1, Kind::Float)).abs().max()).double_value(&[])
        });
        let rate = tch::no_grad(|| {
            timed(iters, || {
                let _ = m16.forward_t(&x16, false);
            })
        });
        (rate, err)
    };
    let cfg = AdamConfig { beta2: 0.99, eps: 1e-8, weight_decay: 0.01 };
    // A training step: `body_train` false is maskflow's `body_batchnorm = "fixed"` (the body's
    // BatchNorm on running statistics, as facemask.toml's stage 2); `mixed` runs the forward pass in
    // a bf16 autocast region (`precision = "bf16-mixed"`), the weights and Adam in fp32.
    let step_rate = |model: &Classifier, body_train: bool, mixed: bool| {
        let mut opt = Adam::new(cfg, model.params().iter().map(|p| (p.name.as_str(), &p.tensor, p.group)));
        timed(iters, || {
            let logits = maskflow_torchext::autocast::with(Device::Cpu, mixed.then_some(Kind::BFloat16), || {
                model.head_t(&model.features_t(&x, body_train), true)
            })
            .expect("autocast");
            let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
            opt.zero_grad();
            loss.backward();
            opt.step(&[1e-4; 3], 0.9);
        })
    };
    model.freeze();
    let frozen = step_rate(&model, true, false);
    model.unfreeze();
    let full = step_rate(&model, true, false);
    // Alternating twice: full steps in fp32 and bf16-mixed, with the body's BatchNorm fixed and
    // training (the latter is bench/bf16_probe.py's PyTorch configuration).
    let (mut fixed, mut fixed_mixed, mut full_mixed) = ([0.0f64; 2], [0.0f64; 2], [0.0f64; 2]);
    for r in 0..2 {
        fixed[r] = step_rate(&model, false, false);
        fixed_mixed[r] = step_rate(&model, false, true);
        full_mixed[r] = step_rate(&model, true, true);
    }
    println!(
        "{{\"inference\": {inference:.2}, \"inference_bf16\": {:.2}, \"bf16_max_prob_diff\": {:.4}, \"frozen_step\": {frozen:.2}, \"full_step\": {full:.2}, \"fixed_bn_step\": {:?}, \"fixed_bn_step_bf16_mixed\": {:?}, \"full_step_bf16_mixed\": {:?}, \"threads\": {threads}, \"channels_last\": {channels_last}}}",
        inference_bf16.0, inference_bf16.1, fixed.map(|v| (v * 100.0).round() / 100.0), fixed_mixed.map(|v| (v * 100.0).round() / 100.0),
        full_mixed.map(|v| (v * 100.0).round() / 100.0)
    );
}
