//! `maskflow predict --bundle DIR PATH...`: the output formats and the exit code.

use anyhow::{bail, Result};
use maskflow_predict::{self as predict, Outcome};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns: path, label, one probability per class.
    Table,
    /// One JSON object per line.
    Jsonl,
    Csv,
}

pub struct Options<'a> {
    pub classifier: Classifier<'a>,
    pub inputs: &'a [String],
    pub format: Format,
    pub tta: predict::Tta,
}

/// The bundle, its decision rule and where it runs (predict, detect).
pub struct Classifier<'a> {
    pub bundle: &'a Path,
    pub threshold: Option<f64>,
    pub positive: Option<&'a str>,
    /// Images per forward pass.
    pub batch: usize,
    pub compute: crate::session::Compute,
}

impl Classifier<'_> {
    /// Sets libtorch's threads, loads the bundle and checks the decision rule against its classes.
    pub fn open(&self) -> Result<(predict::Bundle, predict::Threshold)> {
        tch::set_num_threads(self.compute.threads.max(1) as i32);
        let bundle = predict::load(self.bundle, self.compute.device)?;
        let threshold = decision(&bundle.card.classes, self.threshold, self.positive)?;
        Ok((bundle, threshold))
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `--threshold` / `--positive` as a decision rule (none given: the most probable class).
fn decision(classes: &[String], threshold: Option<f64>, positive: Option<&str>) -> Result<predict::Threshold> {
    Ok(match (threshold, positive) {
        (None, None) => None,
        (t, pos) => {
            let t = t.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&t) {
                bail!("--threshold {t}: must be in [0, 1]");
            }
            let name = pos.map(str::to_owned).unwrap_or_else(|| classes.last().cloned().unwrap_or_default());
            let idx = classes
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| anyhow::anyhow!("--positive {name:?}: the model's classes are {classes:?}"))?;
            Some((idx, t))
        }
    })
}

/// Runs the prediction; returns the number of inputs that failed.
pub fn run(o: &Options) -> Result<usize> {
    let (bundle, threshold) = o.classifier.open()?;
    let classes = bundle.card.classes.clone();
    let (files, mut failed) = predict::expand(o.inputs);
    let mut results = predict::predict_tta(&bundle, &files, o.classifier.batch, threshold, o.tta)?;
    results.append(&mut failed);
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match o.format {
        Format::Table => {
            let width = results
                .iter()
                .map(|r| match r {
                    Outcome::Ok { path, .. } | Outcome::Failed { path, .. } => path.chars().count(),
                })
                .max()
                .unwrap_or(4)
                .max(4);
            let lw = classes.iter().map(String::len).max().unwrap_or(5).max(5);
            write!(w, "{:<width$}  {:<lw$}", "path", "label")?;
            for c in &classes {
                write!(w, "  {:>w2$}", c, w2 = c.len().max(8))?;
            }
            writeln!(w)?;
            for r in &results {
                match r {
                    Outcome::Ok { path, label, probs } => {
                        write!(w, "{path:<width$}  {label:<lw$}")?;
                        for (c, p) in classes.iter().zip(probs) {
                            write!(w, "  {:>w2$.4}", p, w2 = c.len().max(8))?;
                        }
                        writeln!(w)?;
                    }
                    Outcome::Failed { path, reason } => writeln!(w, "{path:<width$}  ERROR  {reason}")?,
                }
            }
        }
        Format::Jsonl => {
            for r in &results {
                let v = match r {
                    Outcome::Ok { path, label, probs } => {
                        let p: serde_json::Map<String, serde_json::Value> =
                            classes.iter().zip(probs).map(|(c, p)| (c.clone(), serde_json::json!(p))).collect();
                        serde_json::json!({"path": path, "label": label, "probabilities": p})
                    }
                    Outcome::Failed { path, reason } => serde_json::json!({"path": path, "error": reason}),
                };
                writeln!(w, "{v}")?;
            }
        }
        Format::Csv => {
            writeln!(w, "path,label,{},error", classes.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","))?;
            for r in &results {
                match r {
                    Outcome::Ok { path, label, probs } => writeln!(
                        w,
                        "{},{},{},",
                        csv_field(path),
                        csv_field(label),
                        probs.iter().map(|p| format!("{p:.6}")).collect::<Vec<_>>().join(",")
                    )?,
                    Outcome::Failed { path, reason } => {
                        writeln!(w, "{},,{}{}", csv_field(path), ",".repeat(classes.len()), csv_field(reason))?
                    }
                }
            }
        }
    }
    let bad = results.iter().filter(|r| !r.is_ok()).count();
    if bad > 0 {
        eprintln!("predict: {bad} of {} input(s) failed (see their lines)", results.len());
    }
    Ok(bad)
}
