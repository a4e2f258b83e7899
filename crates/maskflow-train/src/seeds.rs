//! Every random stream of a training run, by name. A run is a pure function of `train.seed` and
//! these names: an epoch's image order, its augmentation draws and libtorch's generator (dropout)
//! can each be recomputed alone, which is what a resumed run needs.
//!
//! The numbers behind the names are the ones maskflow has always used (so results do not change);
//! the test below checks that no two streams share one.

use crate::phase::Phase;
use maskflow_core::rng::SplitMix64;

/// The order in which an epoch visits the training images (`data::epoch_order` / `stream_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Epoch { phase: Phase, epoch: usize },
    LrFind { pass: usize },
}

impl Order {
    /// The (stream, epoch) coordinates the data crate's orders take.
    pub fn coords(self) -> (u64, u64) {
        match self {
            Order::Epoch { phase, epoch } => (phase.number(), epoch as u64),
            Order::LrFind { pass } => (7, pass as u64),
        }
    }
}

/// The augmentation draws of a pass over the training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Augment {
    Epoch { phase: Phase, epoch: usize },
    LrFind { pass: usize },
    /// Augmented copy `view` (≥ 1) of the training set whose fixed-body features stage 1 uses.
    FeatureView { view: usize },
}

impl Augment {
    /// The stream number the augmentation's draws are seeded with (with `train.seed`).
    pub fn stream(self) -> u64 {
        match self {
            Augment::Epoch { phase, epoch } => phase.number() * 100_000 + epoch as u64,
            Augment::LrFind { pass } => 800_000 + pass as u64,
            Augment::FeatureView { view } => 900_000 + view as u64,
        }
    }
}

/// libtorch's global generator (dropout, the head's initialisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Torch {
    HeadInit,
    Epoch { phase: Phase, epoch: usize },
    LrFind { pass: usize },
}

impl Torch {
    /// The seed for `tch::manual_seed`.
    pub fn seed(self, seed: u64) -> i64 {
        let parts: Vec<u64> = match self {
            Torch::HeadInit => vec![0x6d6f64656c],
            Torch::Epoch { phase, epoch } => vec![0xd50, phase.number(), epoch as u64],
            Torch::LrFind { pass } => vec![0x1f, pass as u64],
        };
        (SplitMix64::derive(seed, &parts).next_u64() >> 1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_two_streams_share_numbers() {
        let phases = [Phase::Frozen, Phase::Unfrozen];
        let mut aug = HashSet::new();
        let mut torch = HashSet::new();
        let mut order = HashSet::new();
        for e in 0..500 {
            for phase in phases {
                assert!(aug.insert(Augment::Epoch { phase, epoch: e }.stream()));
                assert!(torch.insert(Torch::Epoch { phase, epoch: e }.seed(42)));
                assert!(order.insert(Order::Epoch { phase, epoch: e }.coords()));
            }
            assert!(aug.insert(Augment::LrFind { pass: e }.stream()));
            assert!(aug.insert(Augment::FeatureView { view: e + 1 }.stream()));
            assert!(torch.insert(Torch::LrFind { pass: e }.seed(42)));
            assert!(order.insert(Order::LrFind { pass: e }.coords()));
        }
        assert!(torch.insert(Torch::HeadInit.seed(42)));
    }
}
