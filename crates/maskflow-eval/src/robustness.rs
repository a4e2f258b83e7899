//! The robustness section of an eval: the same images under every corruption × severity asked for
//! (`maskflow_data::corrupt`, ImageNet-C style), scored like the clean ones, and drawn as a heat map.

use anyhow::{Context, Result};
use maskflow_contracts::eval::{CorruptionScore, FamilyAccuracy, Robustness, Tta};
use maskflow_data::corrupt::{image_seed, Family};
use maskflow_data::data::SplitData;
use maskflow_data::infer::{self, InferOptions};
use maskflow_models::Classifier;
use std::path::Path;
use std::sync::Arc;

pub const HEATMAP_FILE: &str = "robustness.png";

/// What to score.
pub struct Plan<'a> {
    pub families: &'a [Family],
    pub severities: &'a [u8],
    pub tta: Tta,
    pub progress: bool,
    /// Classes of the model.
    pub classes: usize,
}

/// Scores `data` under each corruption of `plan`; `clean_accuracy` is the clean score to report beside.
pub fn score(model: &Classifier, data: &SplitData, o: &InferOptions, plan: &Plan, clean_accuracy: f64) -> Result<Robustness> {
    let k = plan.classes;
    let bar = if plan.progress {
        maskflow_core::progress::bar((plan.families.len() * plan.severities.len()) as u64, "robustness", "corruptions")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut scores = Vec::new();
    for &family in plan.families {
        for &severity in plan.severities {
            bar.set_message(format!("{} {severity}", family.name()));
            let seeds: Vec<u64> = data.hashes.iter().map(|h| image_seed(h, family, severity)).collect();
            let mut view = o.clone();
            view.view.corruption = Some((family, severity, Arc::new(seeds)));
            let (loss, accuracy, probs) = infer::evaluate_tta(model, data, &view, plan.tta)
                .with_context(|| format!("scoring the {} corruption at severity {severity}", family.name()))?;
            let predicted: Vec<i64> = Vec::<i64>::try_from(probs.argmax(-1, false)).context("reading predictions")?;
            scores.push(CorruptionScore {
                family: family.name().to_string(),
                severity,
                level: family.level(severity),
                unit: family.unit().to_string(),
                accuracy,
                log_loss: loss,
                recall: recall(&data.label_idx, &predicted, k),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(summarise(clean_accuracy, scores))
}

/// Per-class recall; a class with no image gets 0.
fn recall(actual: &[i64], predicted: &[i64], k: usize) -> Vec<f64> {
    let (mut hit, mut n) = (vec![0u64; k], vec![0u64; k]);
    for (&a, &p) in actual.iter().zip(predicted) {
        if let Some(c) = n.get_mut(a as usize) {
            *c += 1;
            hit[a as usize] += u64::from(a == p);
        }
    }
    hit.iter().zip(&n).map(|(&h, &n)| if n == 0 { 0.0 } else { h as f64 / n as f64 }).collect()
}

/// The means over severities (per family) and over everything.
pub fn summarise(clean_accuracy: f64, scores: Vec<CorruptionScore>) -> Robustness {
    let mut per_family: Vec<FamilyAccuracy> = Vec::new();
    for s in &scores {
        if !per_family.iter().any(|f| f.family == s.family) {
            let of: Vec<f64> = scores.iter().filter(|t| t.family == s.family).map(|t| t.accuracy).collect();
            per_family.push(FamilyAccuracy { family: s.family.clone(), accuracy: of.iter().sum::<f64>() / of.len() as f64 });
        }
    }
    let mean = if scores.is_empty() { clean_accuracy } else { scores.iter().map(|s| s.accuracy).sum::<f64>() / scores.len() as f64 };
    Robustness { clean_accuracy, mean_corruption_accuracy: mean, per_family, scores }
}

/// `robustness.png`: families × (clean, severities…, mean), accuracy in each cell.
pub fn heatmap(out_dir: &Path, r: &Robustness) -> Result<()> {
    let mut severities: Vec<u8> = r.scores.iter().map(|s| s.severity).collect();
    severities.sort_unstable();
    severities.dedup();
    let rows: Vec<String> = r.per_family.iter().map(|f| f.family.clone()).collect();
    let mut cols = vec!["clean".to_string()];
    cols.extend(severities.iter().map(|s| format!("severity {s}")));
    cols.push("mean".into());
    let values: Vec<Vec<f64>> = r
        .per_family
        .iter()
        .map(|f| {
            let mut row = vec![r.clean_accuracy];
            for &s in &severities {
                let v = r.scores.iter().find(|x| x.family == f.family && x.severity == s).map_or(f64::NAN, |x| x.accuracy);
                row.push(v);
            }
            row.push(f.accuracy);
            row
        })
        .collect();
    let lo = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(1.0f64, f64::min).min(0.9);
    let title = format!(
        "Accuracy under corruption — clean {:.4}, mean corruption {:.4}",
        r.clean_accuracy, r.mean_corruption_accuracy
    );
    maskflow_plot::heatmap_png(
        &out_dir.join(HEATMAP_FILE),
        &maskflow_plot::Heatmap {
            values: &values,
            rows: &rows,
            cols: &cols,
            title: &title,
            axes: "corruption ↓  severity →",
            decimals: Some(3),
            shading: maskflow_plot::Shading::RedGreen { lo: lo.max(0.5), hi: 1.0 },
        },
    )
}
