//! Classification metrics from (actual, predicted, probabilities): pure functions, tested by hand.


/// `matrix[actual][predicted]` counts (fastai's orientation).
pub fn confusion_matrix(actual: &[usize], predicted: &[usize], classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; classes]; classes];
    for (&a, &p) in actual.iter().zip(predicted) {
        if a < classes && p < classes {
            m[a][p] += 1;
        }
    }
    m
}

pub use maskflow_contracts::eval::{ClassMetrics, Metrics};

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// Every metric. `probs[i]` are the per-class probabilities of image i.
pub fn compute(actual: &[usize], probs: &[Vec<f64>], class_names: &[String]) -> Metrics {
    let k = class_names.len();
    let predicted: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let cm = confusion_matrix(actual, &predicted, k);
    let n = actual.len() as u64;
    let correct: u64 = (0..k).map(|i| cm[i][i]).sum();
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = cm[c][c];
            let support: u64 = cm[c].iter().sum();
            let predicted_c: u64 = (0..k).map(|a| cm[a][c]).sum();
            let precision = ratio(tp, predicted_c);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassMetrics { class: class_names[c].clone(), precision, recall, f1, support }
        })
        .collect();
    let mean = |f: &dyn Fn(&ClassMetrics) -> f64| per_class.iter().map(f).sum::<f64>() / k.max(1) as f64;
    let supported: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let balanced = supported.iter().map(|c| c.recall).sum::<f64>() / supported.len().max(1) as f64;
    let log_loss =
        actual.iter().zip(probs).map(|(&a, p)| -p.get(a).copied().unwrap_or(0.0).clamp(1e-15, 1.0).ln()).sum::<f64>()
            / n.max(1) as f64;
    let roc_auc = if k == 2 {
        let scores: Vec<(f64, bool)> = actual.iter().zip(probs).map(|(&a, p)| (p[1], a == 1)).collect();
        roc_auc(&scores)
    } else {
        None
    };
    Metrics {
        images: n,
        accuracy: ratio(correct, n),
        error_rate: 1.0 - ratio(correct, n),
        macro_precision: mean(&|c| c.precision),
        macro_recall: mean(&|c| c.recall),
        macro_f1: mean(&|c| c.f1),
        balanced_accuracy: balanced,
        log_loss,
        roc_auc,
        classes_without_support: per_class.iter().filter(|c| c.support == 0).map(|c| c.class.clone()).collect(),
        per_class,
        robustness: None,
    }
}

pub fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map(|(i, _)| i).unwrap_or(0)
}

/// ROC AUC by ranks (Mann–Whitney U), ties averaged; None when one side is empty.
pub fn roc_auc(scores: &[(f64, bool)]) -> Option<f64> {
    let pos = scores.iter().filter(|s| s.1).count();
    let neg = scores.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * sorted[i..=j].iter().filter(|s| s.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// fastai's `most_confused`: off-diagonal (actual, predicted, count), largest first.
pub fn most_confused(cm: &[Vec<u64>], names: &[String], min_count: u64) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for (a, row) in cm.iter().enumerate() {
        for (p, &c) in row.iter().enumerate() {
            if a != p && c >= min_count.max(1) {
                out.push((names[a].clone(), names[p].clone(), c));
            }
        }
    }
    out.sort_by(|x, y| y.2.cmp(&x.2).then_with(|| (&x.0, &x.1).cmp(&(&y.0, &y.1))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    fn one_hot(p: &[usize], k: usize) -> Vec<Vec<f64>> {
        p.iter().map(|&i| (0..k).map(|j| if i == j { 0.9 } else { 0.1 / (k - 1) as f64 }).collect()).collect()
    }

    #[test]
    fn confusion_is_actual_by_predicted() {
        let cm = confusion_matrix(&[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0], 2);
        assert_eq!(cm, vec![vec![1, 1], vec![1, 2]]);
        let cm = confusion_matrix(&[0, 0, 0], &[1, 1, 1], 2);
        assert_eq!(cm[0][1], 3, "row = actual, column = predicted");
        assert_eq!(cm[1][0], 0);
    }

    #[test]
    fn hand_computed_three_class_case_with_a_class_of_zero_support() {
        // actual: c0 ×4, c1 ×2, c2 ×0; predicted: c0 c0 c0 c1 | c1 c2
        let actual = [0, 0, 0, 0, 1, 1];
        let pred = [0, 0, 0, 1, 1, 2];
        let m = compute(&actual, &one_hot(&pred, 3), &names(3));
        assert_eq!(m.images, 6);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        let c0 = &m.per_class[0];
        assert_eq!((c0.precision, c0.recall, c0.support), (1.0, 0.75, 4));
        assert!((c0.f1 - 2.0 * 0.75 / 1.75).abs() < 1e-12);
        let c1 = &m.per_class[1];
        assert_eq!((c1.precision, c1.recall, c1.support), (0.5, 0.5, 2));
        let c2 = &m.per_class[2];
        assert_eq!((c2.precision, c2.recall, c2.f1, c2.support), (0.0, 0.0, 0.0, 0));
        assert_eq!(m.classes_without_support, vec!["c2".to_string()]);
        assert!((m.balanced_accuracy - (0.75 + 0.5) / 2.0).abs() < 1e-12, "only classes with support");
        assert!((m.macro_recall - (0.75 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert!((m.log_loss - (-(0.9f64.ln()) * 4.0 - (0.05f64.ln()) * 2.0) / 6.0).abs() < 1e-12);
        assert_eq!(m.roc_auc, None);
        let mc = most_confused(&confusion_matrix(&actual, &pred, 3), &names(3), 1);
        assert_eq!(mc, vec![("c0".into(), "c1".into(), 1), ("c1".into(), "c2".into(), 1)]);
    }

    #[test]
    fn roc_auc_by_hand() {
        // positives 0.8, 0.4; negatives 0.5, 0.1 → pairs (pos > neg): 0.8>0.5, 0.8>0.1, 0.4>0.1 = 3 of 4
        let s = [(0.8, true), (0.4, true), (0.5, false), (0.1, false)];
        assert_eq!(roc_auc(&s), Some(0.75));
        // a tie counts one half
        assert_eq!(roc_auc(&[(0.5, true), (0.5, false)]), Some(0.5));
        assert_eq!(roc_auc(&[(0.5, true)]), None);
    }
}
