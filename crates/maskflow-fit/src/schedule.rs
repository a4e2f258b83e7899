//! fastai's one-cycle schedule and discriminative learning rates.

use serde::{Deserialize, Serialize};

/// fastai's cosine annealing from `start` to `end` at `pct` ∈ [0, 1].
pub fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

/// `fit_one_cycle` parameters (fastai v1 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OneCycle {
    /// Fraction of the iterations spent warming up (fastai v1 `pct_start=0.3`; v2 uses 0.25).
    pub pct_start: f64,
    /// The rate starts at max/div (fastai `div_factor=25`).
    pub div: f64,
    /// The rate ends at max/(div·final_div) (fastai v1 `final_div=1e4`, i.e. max/(25·1e4)).
    pub final_div: f64,
    /// β1 goes moms[0] → moms[1] during warm-up and back (fastai `moms=(0.95, 0.85)`).
    pub moms: (f64, f64),
}

impl Default for OneCycle {
    fn default() -> Self {
        OneCycle { pct_start: 0.3, div: 25.0, final_div: 1e4, moms: (0.95, 0.85) }
    }
}

impl OneCycle {
    /// (learning-rate multiplier of max_lr, β1) at iteration `i` of `total`.
    pub fn at(&self, i: usize, total: usize) -> (f64, f64) {
        let total = total.max(1) as f64;
        let warm = (total * self.pct_start).floor().max(0.0); // fastai v1: int(n * pct_start)
        let i = i as f64;
        let (lo, hi) = self.moms;
        if i < warm {
            let p = i / warm.max(1.0);
            (annealing_cos(1.0 / self.div, 1.0, p), annealing_cos(lo, hi, p))
        } else {
            let p = (i - warm) / (total - warm).max(1.0);
            (annealing_cos(1.0, 1.0 / (self.div * self.final_div), p), annealing_cos(hi, lo, p))
        }
    }
}

/// A learning rate for the three layer groups: one value, or fastai's `slice(lo, hi)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Lr {
    /// The same rate for every group.
    One(f64),
    /// `slice(lo, hi)`: geometric rates from lo (first group) to hi (head).
    Slice([f64; 2]),
    /// `"find"`: run the lr finder and use its valley suggestion.
    Find(FindTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindTag {
    Find,
}

impl Lr {
    /// Per-group rates (fastai `lr_range`): slice(1e-3, 1e-1) over 3 groups → 1e-3, 1e-2, 1e-1.
    pub fn per_group(&self, groups: usize, found: Option<f64>) -> Vec<f64> {
        match self {
            Lr::One(v) => vec![*v; groups],
            Lr::Slice([lo, hi]) => geometric(*lo, *hi, groups),
            Lr::Find(_) => vec![found.unwrap_or(f64::NAN); groups],
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        match self {
            Lr::One(v) if !ok(*v) => Err(format!("{what}: learning rate {v} must be a positive number")),
            Lr::Slice([lo, hi]) if !(ok(*lo) && ok(*hi) && lo <= hi) => {
                Err(format!("{what}: slice [{lo}, {hi}] needs 0 < lo ≤ hi"))
            }
            _ => Ok(()),
        }
    }
}

/// `n` rates spaced geometrically from `lo` to `hi` (numpy's geomspace, as fastai's `even_mults`).
pub fn geometric(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![hi];
    }
    let step = (hi / lo).powf(1.0 / (n - 1) as f64);
    (0..n).map(|i| lo * step.powi(i as i32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-30)
    }

    #[test]
    fn one_cycle_matches_fastai_formulas() {
        let s = OneCycle::default();
        let total = 100;
        // start: max/25, momentum 0.95
        let (lr, m) = s.at(0, total);
        assert!(close(lr, 1.0 / 25.0) && close(m, 0.95));
        // end of warm-up (iteration 30): max, momentum 0.85
        let (lr, m) = s.at(30, total);
        assert!(close(lr, 1.0) && close(m, 0.85));
        // middle of warm-up: cosine halfway between
        let (lr, m) = s.at(15, total);
        assert!(close(lr, (1.0 / 25.0 + 1.0) / 2.0) && close(m, 0.90), "{lr} {m}");
        // annealing: at the last iteration close to max/(25·1e4)
        let (lr, m) = s.at(99, total);
        let p = 69.0 / 70.0;
        let expect = 1.0 / 25e4 + (1.0 - 1.0 / 25e4) / 2.0 * ((std::f64::consts::PI * p).cos() + 1.0);
        assert!(close(lr, expect), "{lr} vs {expect}");
        assert!(m > 0.949 && m < 0.95);
        // monotone up then down
        let lrs: Vec<f64> = (0..total).map(|i| s.at(i, total).0).collect();
        assert!(lrs[..30].windows(2).all(|w| w[0] < w[1]));
        assert!(lrs[30..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn slices_become_geometric_group_rates() {
        let r = Lr::Slice([1e-3, 1e-1]).per_group(3, None);
        assert!(close(r[0], 1e-3) && close(r[1], 1e-2) && close(r[2], 1e-1), "{r:?}");
        let r = Lr::Slice([1e-4, 1e-3]).per_group(3, None);
        assert!(close(r[1], 10f64.powf(-3.5)), "{r:?}");
        assert_eq!(Lr::One(3e-3).per_group(3, None), vec![3e-3; 3]);
        assert!(Lr::Slice([1e-2, 1e-3]).validate("x").is_err());
        assert!(Lr::One(-1.0).validate("x").is_err());
    }

    #[test]
    fn lr_parses_from_toml_forms() {
        #[derive(Deserialize)]
        struct T {
            a: Lr,
            b: Lr,
            c: Lr,
        }
        let t: T = toml::from_str("a = 3e-3\nb = [1e-5, 1e-4]\nc = \"find\"").unwrap();
        assert_eq!(t.a, Lr::One(3e-3));
        assert_eq!(t.b, Lr::Slice([1e-5, 1e-4]));
        assert_eq!(t.c, Lr::Find(FindTag::Find));
    }
}
