//! The static HTML run report: one page, images beside it, nothing fetched from a network. A tiny inline
//! script marks on `<body>` how many images loaded (`data-images`, `data-broken-images`) so a headless
//! browser check can tell a broken picture from a good one.

use crate::metrics::Metrics;
use crate::{Provenance, REPORT_FILE};
use anyhow::Result;
use maskflow_contracts::eval::Robustness;
use maskflow_contracts::index::IndexSummary;
use maskflow_contracts::model::TrainConfig;
use std::fmt::Write;
use std::path::Path;

/// What the page shows besides the metrics.
pub struct Page<'a> {
    pub title_data: &'a str,
    pub index: Option<&'a IndexSummary>,
    pub cfg: &'a TrainConfig,
    pub provenance: &'a Provenance,
}

use maskflow_core::html::esc;

fn img(out_dir: &Path, file: &str, alt: &str) -> String {
    if out_dir.join(file).is_file() {
        format!("<img src=\"{file}\" alt=\"{}\">", esc(alt))
    } else {
        format!("<p class=\"note\">({} not available)</p>", esc(alt))
    }
}

/// Accuracy under corruption: the heat map and the table behind it.
fn robustness_section(h: &mut String, out_dir: &Path, r: &Robustness, classes: &[String]) -> Result<()> {
    write!(
        h,
        "<h2>Robustness</h2><p>The same images under ImageNet-C-style corruptions (deterministic: the same \
         pixels on every run). Clean accuracy <b>{:.4}</b>, mean corruption accuracy <b>{:.4}</b> over {} \
         corruption × severity pairs. Sizes are in pixels of the 224-pixel input: a downscale to 24 px is \
         a face that small in the photo, scaled up.</p>",
        r.clean_accuracy,
        r.mean_corruption_accuracy,
        r.scores.len()
    )?;
    h.push_str(&img(out_dir, crate::robustness::HEATMAP_FILE, "accuracy under corruption"));
    write!(h, "<table><tr><th class=l>corruption</th><th>severity</th><th class=l>level</th><th>accuracy</th><th>log loss</th>")?;
    for c in classes {
        write!(h, "<th>recall {}</th>", esc(c))?;
    }
    h.push_str("</tr>");
    for s in &r.scores {
        write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td class=l>{} {}</td><td>{:.4}</td><td>{:.4}</td>",
            esc(&s.family),
            s.severity,
            s.level,
            esc(&s.unit),
            s.accuracy,
            s.log_loss
        )?;
        for v in &s.recall {
            write!(h, "<td>{v:.4}</td>")?;
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    Ok(())
}

pub fn write(out_dir: &Path, page: &Page, m: &Metrics, cm: &[Vec<u64>], most_confused: &[crate::Confused]) -> Result<()> {
    let mut h = String::new();
    let cfg = page.cfg;
    let title = format!("maskflow report — {} on {}", cfg.arch, page.title_data);
    write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}img{{max-width:100%;border:1px solid #ddd;margin:.3em 0}}\
         pre{{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:12px}}.note{{color:#777}}</style></head><body>",
        esc(&title)
    )?;
    write!(h, "<h1>{}</h1>", esc(&title))?;

    // Data summary.
    h.push_str("<h2>Data</h2>");
    match page.index {
        Some(r) => {
            h.push_str("<table><tr><th class=l>class</th><th>files</th><th>accepted</th><th>train</th><th>valid</th></tr>");
            for (c, v) in &r.per_class {
                write!(
                    h,
                    "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(c),
                    v.files,
                    v.accepted,
                    v.train,
                    v.valid
                )?;
            }
            h.push_str("</table>");
            let reasons: Vec<String> = r.rejected_by_reason.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            write!(
                h,
                "<p>{} files, {} accepted, {} rejected{}. {} exact-duplicate groups ({} files), {} near-duplicate groups \
                 ({} files), {} groups across the split (0 by construction), {} groups spanning classes.</p>",
                r.files,
                r.accepted,
                r.rejected,
                if reasons.is_empty() { String::new() } else { format!(" ({})", esc(&reasons.join(", "))) },
                r.exact_duplicate_groups,
                r.exact_duplicate_files,
                r.near_duplicate_groups,
                r.near_duplicate_files,
                r.groups_across_sides,
                r.groups_across_classes
            )?;
            if let Some(f) = &r.overrides_file {
                write!(
                    h,
                    "<p>Label overrides applied (<code>{}</code>): {} file(s) relabelled, {} excluded — a human's decisions; \
                     the folder itself is unchanged.</p>",
                    esc(f),
                    r.overridden,
                    r.excluded
                )?;
            }
        }
        None => h.push_str("<p class=note>(no index summary was given to this eval)</p>"),
    }
    if out_dir.join("train_show_batch.png").is_file() {
        write!(h, "<h2>show_batch</h2>{}", img(out_dir, "train_show_batch.png", "augmented training batch"))?;
    }

    // Training.
    write!(
        h,
        "<h2>Training</h2><p>{} body with {} weights, {} classes, trained at {}²; the recipe:</p>\
         <table><tr><th class=l>parameter</th><th class=l>value</th></tr>",
        cfg.arch,
        esc(&cfg.pretrained),
        cfg.classes.len(),
        cfg.image_size
    )?;
    for (k, v) in &cfg.recipe {
        write!(h, "<tr><td class=l>{}</td><td class=l>{}</td></tr>", esc(k), esc(v))?;
    }
    h.push_str("</table>");
    if out_dir.join("train_lr_find.png").is_file() {
        h.push_str(&img(out_dir, "train_lr_find.png", "lr finder"));
    }
    h.push_str(&img(out_dir, "train_curves.png", "training curves"));
    if let Ok(metrics) = maskflow_contracts::model::read_epoch_metrics_file(&out_dir.join("train_metrics.jsonl")) {
        h.push_str("<table><tr><th class=l>phase</th><th>epoch</th><th>train loss</th><th>train loss (mean)</th><th>valid loss</th><th>accuracy</th><th>error rate</th><th>seconds</th><th>img/s</th></tr>");
        for e in metrics {
            write!(
                h,
                "<tr><td class=l>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.0}</td><td>{:.1}</td></tr>",
                esc(&e.phase),
                e.epoch,
                e.train_loss_ema,
                e.train_loss_mean,
                e.valid_loss,
                e.accuracy,
                e.error_rate,
                e.seconds,
                e.images_per_second
            )?;
        }
        h.push_str("</table>");
    }

    // Evaluation.
    write!(h, "<h2>Evaluation on {}</h2>", esc(page.title_data))?;
    write!(
        h,
        "<table><tr><th class=l>metric</th><th>value</th></tr>\
         <tr><td class=l>images</td><td>{}</td></tr><tr><td class=l>accuracy</td><td>{:.4}</td></tr>\
         <tr><td class=l>error rate</td><td>{:.4}</td></tr><tr><td class=l>balanced accuracy</td><td>{:.4}</td></tr>\
         <tr><td class=l>macro F1</td><td>{:.4}</td></tr><tr><td class=l>log loss</td><td>{:.4}</td></tr>\
         <tr><td class=l>ROC AUC</td><td>{}</td></tr></table>",
        m.images,
        m.accuracy,
        m.error_rate,
        m.balanced_accuracy,
        m.macro_f1,
        m.log_loss,
        m.roc_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "—".into())
    )?;
    h.push_str("<table><tr><th class=l>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>");
    for c in &m.per_class {
        write!(
            h,
            "<tr><td class=l>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            esc(&c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        )?;
    }
    h.push_str("</table>");
    if !m.classes_without_support.is_empty() {
        write!(
            h,
            "<p class=note>No images of {} in this data: their metrics are reported as 0 with support 0.</p>",
            esc(&m.classes_without_support.join(", "))
        )?;
    }
    h.push_str(&img(out_dir, "confusion_matrix.png", "confusion matrix"));
    h.push_str(&img(out_dir, "confusion_matrix_normalized.png", "confusion matrix, row-normalised"));
    let total: u64 = cm.iter().flatten().sum();
    write!(h, "<p>{} images in the matrix. Most confused (actual → predicted, count): ", total)?;
    if most_confused.is_empty() {
        h.push_str("none.</p>");
    } else {
        let items: Vec<String> = most_confused
            .iter()
            .map(|c| {
                let distinct = if c.distinct as u64 != c.count { format!(" ({} distinct images)", c.distinct) } else { String::new() };
                format!("{} → {}: {}{distinct}", esc(&c.actual), esc(&c.predicted), c.count)
            })
            .collect();
        write!(h, "{}.</p>", items.join("; "))?;
    }
    h.push_str(&img(out_dir, "top_losses.png", "top losses"));
    if page.provenance.params.tta != maskflow_contracts::eval::Tta::None {
        write!(
            h,
            "<p class=note>Every prediction above is test-time augmented (<code>tta = \"{}\"</code>).</p>",
            page.provenance.params.tta.name()
        )?;
    }
    if let Some(r) = &m.robustness {
        robustness_section(&mut h, out_dir, r, &cfg.classes)?;
    }

    // Provenance.
    write!(
        h,
        "<h2>Provenance</h2><p class=note>This result's key, its parameters and the keys of its inputs: exactly what the key covers.</p><pre>{}</pre><p class=note>{}</p>{}</body></html>\n",
        esc(&serde_json::to_string_pretty(page.provenance)?),
        esc(maskflow_core::TOOL_VERSION),
        maskflow_core::html::IMAGES_LOADED_SCRIPT
    )?;
    maskflow_core::fsutil::write_atomic(&out_dir.join(REPORT_FILE), h.as_bytes())?;
    Ok(())
}
