//! The two training phases of a fastai transfer-learning run (the word "stage" is kept for pipeline
//! stages).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The body frozen (BatchNorm still training, or a fixed body's features): `fit_one_cycle` on the head.
    Frozen,
    /// Everything trains, with discriminative learning rates per layer group.
    Unfrozen,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Frozen => "frozen",
            Phase::Unfrozen => "unfrozen",
        }
    }

    /// The phase's number in seed streams (0, 1).
    pub fn number(self) -> u64 {
        match self {
            Phase::Frozen => 0,
            Phase::Unfrozen => 1,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
