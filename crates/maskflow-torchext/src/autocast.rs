//! Autocast regions: `torch.autocast(device, dtype)` for CPU and CUDA.
//!
//! Inside an [`Autocast`] guard, libtorch casts the inputs of the operators on its lower-precision
//! list (convolution, linear, matmul, …) to the region's dtype and keeps the rest (reductions,
//! losses, BatchNorm statistics, …) in fp32 — the same lists as PyTorch's, because they are
//! PyTorch's. The region is per thread; weights stay fp32, so the gradients and the optimizer state
//! do too (fp32 master weights). The backward pass runs outside the region, as in PyTorch: autograd
//! follows the dtypes the forward pass recorded.

use crate::{check, TorchError};
use std::ffi::c_int;
use tch::{Device, Kind};

/// An active autocast region on this thread; dropping it restores the state before it.
#[must_use = "the region ends when the guard is dropped"]
pub struct Autocast {
    cuda: c_int,
    prev_enabled: c_int,
    prev_type: c_int,
    // Autocast state is thread-local: the guard must end on the thread that began it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Begins a region casting to `kind` (bf16 or f16) for operators on `device`'s type.
    pub fn enter(device: Device, kind: Kind) -> Result<Autocast, TorchError> {
        if !matches!(kind, Kind::BFloat16 | Kind::Half) {
            return Err(TorchError { op: "autocast", message: format!("autocast casts to bf16 or f16, not {kind:?}") });
        }
        let cuda = c_int::from(device.is_cuda());
        let (mut prev_enabled, mut prev_type) = (0, 0);
        // SAFETY: plain ints in and out; the shim catches every C++ exception.
        check("autocast enter", unsafe { crate::mf_autocast_enter(cuda, scalar_type(kind), &mut prev_enabled, &mut prev_type) })?;
        Ok(Autocast { cuda, prev_enabled, prev_type, _not_send: std::marker::PhantomData })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`. Restoring thread-local flags cannot fail in practice; a failure is
        // ignored rather than panicking in drop.
        let _ = unsafe { crate::mf_autocast_exit(self.cuda, self.prev_enabled, self.prev_type) };
    }
}

/// c10::ScalarType's number for the two autocast dtypes.
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Half => 5,
        _ => 15, // BFloat16
    }
}

/// Runs `f` inside an autocast region (or plainly when `kind` is None).
pub fn with<T>(device: Device, kind: Option<Kind>, f: impl FnOnce() -> T) -> Result<T, TorchError> {
    let _guard = match kind {
        Some(k) => Some(Autocast::enter(device, k)?),
        None => None,
    };
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn matmul_runs_in_bf16_inside_the_region_and_fp32_after() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let inside = with(Device::Cpu, Some(Kind::BFloat16), || a.matmul(&b)).unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let diff = (inside.to_kind(Kind::Float) - a.matmul(&b)).abs().max().double_value(&[]);
        assert!(diff < 0.1, "bf16 matmul differs from fp32 by {diff}");
    }

    #[test]
    fn nested_regions_restore_the_outer_state() {
        let a = Tensor::randn([2, 2], (Kind::Float, Device::Cpu));
        let outer = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        {
            let _inner = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        }
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16, "the outer region still casts after the inner one ends");
        drop(outer);
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn gradients_of_fp32_weights_are_fp32() {
        let w = Tensor::randn([8, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let loss = with(Device::Cpu, Some(Kind::BFloat16), || x.matmul(&w).to_kind(Kind::Float).sum(Kind::Float)).unwrap();
        loss.backward();
        assert_eq!(w.grad().kind(), Kind::Float);
    }

    #[test]
    fn other_kinds_are_refused() {
        assert!(Autocast::enter(Device::Cpu, Kind::Float).is_err());
    }
}
