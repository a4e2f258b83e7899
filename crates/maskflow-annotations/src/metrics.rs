//! Detection metrics as COCO computes them (pycocotools' `COCOeval` for boxes: `evaluateImg`, then
//! `accumulate`, then `summarize`), so that figures compare with the published ones.
//!
//! Per class, area range and IoU threshold (0.50, 0.55, …, 0.95): each photo's detections, highest
//! score first (at most `max_dets`), take the best-overlapping face not yet taken with IoU ≥ the
//! threshold, preferring faces inside the area range; a detection matched to a crowd/difficult or
//! out-of-range face, or unmatched and itself out of range, is ignored. Over all photos, by score:
//! precision made monotone, read at 101 recall points (0, 0.01, …, 1) → AP. A class with no face in
//! the range has no AP (`None`), and means are over the classes that have one.
//!
//! Area ranges are COCO's (by box area): small < 32², medium 32²–96², large > 96² — faces narrower
//! than 32 px, 32–96 px, wider.

use serde::{Deserialize, Serialize};

/// An annotated face: photo index, class index, `[x1, y1, x2, y2]`, crowd/difficult.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub photo: usize,
    pub class: usize,
    pub bbox: [f64; 4],
    pub crowd: bool,
}

/// A detection: photo index, class index, `[x1, y1, x2, y2]`, score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub photo: usize,
    pub class: usize,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// COCO's area ranges, in that order.
pub const AREAS: [(&str, f64, f64); 4] =
    [("all", 0.0, 1e10), ("small", 0.0, 32.0 * 32.0), ("medium", 32.0 * 32.0, 96.0 * 96.0), ("large", 96.0 * 96.0, 1e10)];

/// numpy's `linspace(start, stop, n)` to the last bit (`i · step + start`, the end exactly `stop`):
/// the recall points are compared with recalls such as 7/100 exactly, so 0.07 and 7 × 0.01 differ.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { stop } else { i as f64 * step + start }).collect()
}

/// The IoU thresholds 0.50, 0.55, …, 0.95.
pub fn iou_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, 10)
}

/// The 101 recall points 0, 0.01, …, 1.
pub fn recall_points() -> Vec<f64> {
    linspace(0.0, 1.0, 101)
}

/// Precision at each IoU threshold × recall point × class × area range (`None` where a class has
/// no face in the range), and the recall reached at each IoU threshold × class × area range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accumulated {
    pub classes: usize,
    pub max_dets: usize,
    /// `[t][r][k][a]`.
    pub precision: Vec<Vec<Vec<Vec<Option<f64>>>>>,
    /// `[t][k][a]`.
    pub recall: Vec<Vec<Vec<Option<f64>>>>,
    /// Detection scores at each precision point, `[t][r][k][a]` (what a PR curve is drawn with).
    pub scores: Vec<Vec<Vec<Vec<Option<f64>>>>>,
}

fn area(b: &[f64; 4]) -> f64 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// pycocotools' IoU for boxes `[x1, y1, x2, y2]`: for a crowd face, the intersection over the
/// detection's area.
pub fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2].min(g[2]) - d[0].max(g[0])).max(0.0);
    let h = (d[3].min(g[3]) - d[1].max(g[1])).max(0.0);
    let inter = w * h;
    let union = if crowd { area(d) } else { area(d) + area(g) - inter };
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// One photo, class and area range: per IoU threshold, each (kept) detection's score, whether it
/// matched, whether it is ignored; and how many faces count.
struct PhotoEval {
    scores: Vec<f64>,
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    faces: usize,
}

fn evaluate_photo(gts: &[&Truth], dts: &[&Detection], range: (f64, f64), max_dets: usize, thresholds: &[f64]) -> Option<PhotoEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let out_of = |a: f64| a < range.0 || a > range.1;
    // Faces inside the range first (a stable sort, as numpy's mergesort).
    let mut g: Vec<(&Truth, bool)> = gts.iter().map(|t| (*t, t.crowd || out_of(area(&t.bbox)))).collect();
    g.sort_by_key(|(_, ignore)| *ignore);
    let mut d: Vec<&Detection> = dts.to_vec();
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
    d.truncate(max_dets);
    let ious: Vec<Vec<f64>> = d.iter().map(|det| g.iter().map(|(t, _)| iou(&det.bbox, &t.bbox, t.crowd)).collect()).collect();
    let mut matched = vec![vec![false; d.len()]; thresholds.len()];
    let mut ignored = vec![vec![false; d.len()]; thresholds.len()];
    for (ti, &t) in thresholds.iter().enumerate() {
        let mut taken = vec![false; g.len()];
        for di in 0..d.len() {
            let mut best = t.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for gi in 0..g.len() {
                if taken[gi] && !g[gi].0.crowd {
                    continue;
                }
                if let Some(mi) = m {
                    if !g[mi].1 && g[gi].1 {
                        break;
                    }
                }
                if ious[di][gi] < best {
                    continue;
                }
                best = ious[di][gi];
                m = Some(gi);
            }
            if let Some(mi) = m {
                ignored[ti][di] = g[mi].1;
                matched[ti][di] = true;
                taken[mi] = true;
            }
        }
        for di in 0..d.len() {
            if !matched[ti][di] && out_of(area(&d[di].bbox)) {
                ignored[ti][di] = true;
            }
        }
    }
    Some(PhotoEval { scores: d.iter().map(|x| x.score).collect(), matched, ignored, faces: g.iter().filter(|(_, i)| !*i).count() })
}

/// `evaluateImg` over every photo, class and area range, then `accumulate`.
pub fn accumulate(truth: &[Truth], dets: &[Detection], photos: usize, classes: usize, max_dets: usize) -> Accumulated {
    let thresholds = iou_thresholds();
    let points = recall_points();
    let (nt, nr, na) = (thresholds.len(), points.len(), AREAS.len());
    let mut precision = vec![vec![vec![vec![None; na]; classes]; nr]; nt];
    let mut scores_at = vec![vec![vec![vec![None; na]; classes]; nr]; nt];
    let mut recall = vec![vec![vec![None; na]; classes]; nt];
    let mut gt_by: Vec<Vec<Vec<&Truth>>> = vec![vec![Vec::new(); classes]; photos];
    for t in truth.iter().filter(|t| t.photo < photos && t.class < classes) {
        gt_by[t.photo][t.class].push(t);
    }
    let mut dt_by: Vec<Vec<Vec<&Detection>>> = vec![vec![Vec::new(); classes]; photos];
    for d in dets.iter().filter(|d| d.photo < photos && d.class < classes) {
        dt_by[d.photo][d.class].push(d);
    }
    for k in 0..classes {
        for (a, &(_, lo, hi)) in AREAS.iter().enumerate() {
            let evals: Vec<PhotoEval> =
                (0..photos).filter_map(|p| evaluate_photo(&gt_by[p][k], &dt_by[p][k], (lo, hi), max_dets, &thresholds)).collect();
            let faces: usize = evals.iter().map(|e| e.faces).sum();
            if faces == 0 {
                continue;
            }
            // All photos' detections by score, ties in photo order (numpy's stable mergesort).
            let mut order: Vec<(f64, usize, usize)> = Vec::new();
            for (e, ev) in evals.iter().enumerate() {
                order.extend(ev.scores.iter().enumerate().map(|(i, s)| (*s, e, i)));
            }
            order.sort_by(|x, y| y.0.total_cmp(&x.0));
            for ti in 0..nt {
                let (mut tp, mut fp) = (0f64, 0f64);
                let mut rc = Vec::with_capacity(order.len());
                let mut pr = Vec::with_capacity(order.len());
                let mut sc = Vec::with_capacity(order.len());
                for &(s, e, i) in &order {
                    if evals[e].ignored[ti][i] {
                        continue;
                    }
                    if evals[e].matched[ti][i] {
                        tp += 1.0;
                    } else {
                        fp += 1.0;
                    }
                    rc.push(tp / faces as f64);
                    pr.push(tp / (tp + fp + f64::EPSILON));
                    sc.push(s);
                }
                recall[ti][k][a] = Some(rc.last().copied().unwrap_or(0.0));
                for i in (1..pr.len()).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for (ri, &r) in points.iter().enumerate() {
                    // numpy.searchsorted(rc, r, side="left")
                    let pi = rc.partition_point(|&x| x < r);
                    precision[ti][ri][k][a] = Some(pr.get(pi).copied().unwrap_or(0.0));
                    scores_at[ti][ri][k][a] = Some(sc.get(pi).copied().unwrap_or(0.0));
                }
            }
        }
    }
    Accumulated { classes, max_dets, precision, recall, scores: scores_at }
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (s, n) = v.flatten().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl Accumulated {
    /// AP over the IoU thresholds `ts` (indices), classes `ks` and area range `a`: the mean of the
    /// precision points that exist (`summarize`), `None` where none does.
    pub fn ap(&self, ts: &[usize], ks: &[usize], a: usize) -> Option<f64> {
        mean(ts.iter().flat_map(|&t| self.precision[t].iter().flat_map(move |r| ks.iter().map(move |&k| r[k][a]))))
    }

    /// Recall reached, averaged like [`Accumulated::ap`].
    pub fn ar(&self, ts: &[usize], ks: &[usize], a: usize) -> Option<f64> {
        mean(ts.iter().flat_map(|&t| ks.iter().map(move |&k| self.recall[t][k][a])))
    }

    /// COCO's headline numbers for these classes (all of them: `0..classes`).
    pub fn summary(&self, ks: &[usize]) -> Summary {
        let all: Vec<usize> = (0..10).collect();
        Summary {
            ap: self.ap(&all, ks, 0),
            ap50: self.ap(&[0], ks, 0),
            ap75: self.ap(&[5], ks, 0),
            ap_small: self.ap(&all, ks, 1),
            ap_medium: self.ap(&all, ks, 2),
            ap_large: self.ap(&all, ks, 3),
            ar: self.ar(&all, ks, 0),
            ar_small: self.ar(&all, ks, 1),
            ar_medium: self.ar(&all, ks, 2),
            ar_large: self.ar(&all, ks, 3),
        }
    }
}

/// AP@[.5:.95], AP@.5, AP@.75, AP per face size, and recall (at `max_dets` detections per photo):
/// `None` where no face counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub ap75: Option<f64>,
    pub ap_small: Option<f64>,
    pub ap_medium: Option<f64>,
    pub ap_large: Option<f64>,
    pub ar: Option<f64>,
    pub ar_small: Option<f64>,
    pub ar_medium: Option<f64>,
    pub ar_large: Option<f64>,
}
