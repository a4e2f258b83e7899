//! fastai's learning-rate finder: the sweep's pure parts (smoothing, stop rule, suggestions).

use serde::{Deserialize, Serialize};

/// fastai's `SmoothenValue`: an exponential moving average with bias correction.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Smoother {
    pub beta: f64,
    pub avg: f64,
    pub count: u64,
}

impl Smoother {
    pub fn new(beta: f64) -> Smoother {
        Smoother { beta, avg: 0.0, count: 0 }
    }
    /// Adds a value; returns the smoothed value.
    pub fn add(&mut self, v: f64) -> f64 {
        self.count += 1;
        self.avg = self.beta * self.avg + (1.0 - self.beta) * v;
        self.value()
    }
    pub fn value(&self) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        self.avg / (1.0 - self.beta.powi(self.count.min(i32::MAX as u64) as i32))
    }
}

/// The sweep's rate at iteration `i` of `n`: exponential from `start` to `end`.
pub fn sweep_lr(start: f64, end: f64, i: usize, n: usize) -> f64 {
    start * (end / start).powf(i as f64 / (n.max(2) - 1) as f64)
}

/// fastai's stop rule: tracks the best smoothed loss; says stop when the smoothed loss exceeds
/// `factor` × best or is NaN.
#[derive(Debug, Clone)]
pub struct StopRule {
    pub factor: f64,
    pub best: f64,
}

impl StopRule {
    pub fn new(factor: f64) -> StopRule {
        StopRule { factor, best: f64::INFINITY }
    }
    /// Returns true when the sweep must stop after this smoothed loss.
    pub fn should_stop(&mut self, smoothed: f64) -> bool {
        if smoothed.is_nan() {
            return true;
        }
        if smoothed < self.best {
            self.best = smoothed;
        }
        smoothed > self.factor * self.best
    }
}

/// The suggestions fastai offers, each a learning rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Suggestions {
    /// fastai v2 `valley` (default since it proved the most reliable): from the longest run of
    /// decreasing losses, a point 1/2 of the way past its first third.
    pub valley: f64,
    /// fastai v1's mark: the steepest descent of the smoothed loss.
    pub steep: f64,
    /// The rate of the minimum loss, divided by 10.
    pub minimum_div_10: f64,
}

/// Suggestions from the recorded sweep, skipping the first 10% and the last 5 points as fastai v2 does.
pub fn suggest(lrs: &[f64], losses: &[f64]) -> Option<Suggestions> {
    let n = lrs.len().min(losses.len());
    let start = n / 10;
    let end = n.saturating_sub(5);
    if end < start + 3 {
        return None;
    }
    let (lrs, losses) = (&lrs[start..end], &losses[start..end]);
    let m = losses.len();
    // valley: longest decreasing subsequence ending at each point (O(m²), m ≤ 100).
    let mut lds = vec![1usize; m];
    // (fastai's arithmetic, where max_start may be −1.)
    let (mut max_start, mut max_end) = (0i64, 0usize);
    for i in 1..m {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as i64 - lds[max_end] as i64;
            }
        }
    }
    let sections = (max_end as i64 - max_start) as f64 / 3.0;
    let idx = (max_start + sections as i64 + (sections / 2.0) as i64).clamp(0, m as i64 - 1) as usize;
    // steep: minimum of the loss gradient over log-spaced rates.
    let steep_i = (0..m - 1)
        .min_by(|&a, &b| {
            let g = |i: usize| (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln());
            g(a).total_cmp(&g(b))
        })
        .unwrap_or(0);
    let min_i = (0..m).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap_or(0);
    Some(Suggestions { valley: lrs[idx], steep: lrs[steep_i], minimum_div_10: lrs[min_i] / 10.0 })
}

/// The finished sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFindResult {
    pub lrs: Vec<f64>,
    pub raw_losses: Vec<f64>,
    pub smoothed_losses: Vec<f64>,
    pub stopped_early: bool,
    pub suggestions: Option<Suggestions>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoother_is_bias_corrected() {
        let mut s = Smoother::new(0.98);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        let v = s.add(5.0);
        assert!(v > 2.0 && v < 5.0);
    }

    #[test]
    fn stop_rule_stops_at_four_times_best_or_nan() {
        let mut r = StopRule::new(4.0);
        for l in [1.0, 0.8, 0.5, 0.6, 1.9, 2.0] {
            assert!(!r.should_stop(l), "{l}");
        }
        assert!(r.should_stop(2.01)); // > 4 × 0.5
        let mut r = StopRule::new(4.0);
        assert!(!r.should_stop(1.0));
        assert!(r.should_stop(f64::NAN));
    }

    #[test]
    fn sweep_spans_start_to_end() {
        assert!((sweep_lr(1e-7, 10.0, 0, 100) - 1e-7).abs() < 1e-20);
        assert!((sweep_lr(1e-7, 10.0, 99, 100) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn suggestions_on_a_valley_shaped_curve() {
        // loss falls from lr 1e-5 to 1e-2 then explodes
        let lrs: Vec<f64> = (0..100).map(|i| sweep_lr(1e-7, 10.0, i, 100)).collect();
        let losses: Vec<f64> = lrs
            .iter()
            .map(|&lr| {
                let x = lr.log10();
                if x < -5.0 {
                    1.0
                } else if x < -2.0 {
                    1.0 - 0.3 * (x + 5.0)
                } else {
                    0.1 + 2.0 * (x + 2.0).powi(2)
                }
            })
            .collect();
        let s = suggest(&lrs, &losses).unwrap();
        assert!(s.valley > 1e-5 && s.valley < 1e-2, "{s:?}");
        assert!(s.steep > 1e-5 && s.steep < 1e-2, "{s:?}");
        assert!(s.minimum_div_10 > 5e-4 && s.minimum_div_10 < 2e-3, "{s:?}");
    }
}
