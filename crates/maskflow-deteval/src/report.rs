//! The deteval stage's pictures and page: `pr_curve.png`, the worst photos drawn under `worst/`, and
//! `report.html` (static, nothing fetched).

use crate::score::{match_photo, Classes, Outcome, PhotoBoxes};
use crate::{Curve, DetEvalParams};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use maskflow_annotations::metrics::Summary;
use maskflow_contracts::detection::{DetectionResult, PR_CURVE_FILE, REPORT_FILE, WORST_DIR};
use std::fmt::Write;
use std::path::Path;

const FOUND: Rgb<u8> = Rgb([0, 190, 70]);
const WRONG_LABEL: Rgb<u8> = Rgb([240, 150, 0]);
const FALSE_POSITIVE: Rgb<u8> = Rgb([230, 30, 30]);
const MISSED: Rgb<u8> = Rgb([220, 0, 220]);
const DIFFICULT: Rgb<u8> = Rgb([150, 150, 150]);
const NOT_SCORED: Rgb<u8> = Rgb([30, 110, 240]);
/// Drawn photos are scaled to at most this on their longer side.
const MAX_SIDE: u32 = 1000;
/// Boxes narrower than this (drawn pixels) get no tag.
const MIN_TAGGED: i32 = 36;

/// Writes the PR curve, the worst photos and the page; returns the result with each drawn photo's
/// file filled in.
pub fn write(out: &Path, images: &Path, p: &DetEvalParams, mut r: DetectionResult, boxes: &[PhotoBoxes], curves: &[Curve]) -> Result<DetectionResult> {
    let chart = maskflow_plot::LineChart {
        title: "Precision–recall at IoU 0.5",
        x_label: "recall",
        y_label: "precision",
        series: curves.iter().map(|(n, pts)| maskflow_plot::Series { name: n, points: pts.clone() }).collect(),
        markers: vec![maskflow_plot::Marker { label: "at the threshold", x: r.operating.recall, y: r.operating.precision }],
        log_x: false,
    };
    maskflow_plot::line_chart_within(&out.join(PR_CURVE_FILE), &chart, 760, 480, (0.0, 1.25, 0.0, 1.05))?;
    let classes = Classes { truth: r.classes.clone(), labels: r.labels.predicted.clone() };
    for (i, m) in r.worst.iter_mut().take(p.worst).enumerate() {
        let Some(b) = boxes.iter().find(|b| b.image == m.image) else { continue };
        let Ok(photo) = maskflow_imaging::read_photo(&images.join(&m.image)) else { continue };
        let file = format!("{WORST_DIR}/{i:02}.jpg");
        let drawn = draw(&photo, b, &classes, p);
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85).encode_image(&drawn)?;
        maskflow_core::fsutil::write_atomic(&out.join(&file), &bytes).with_context(|| format!("writing {file}"))?;
        m.file = Some(file);
    }
    let html = page(&r, p)?;
    maskflow_core::fsutil::write_atomic(&out.join(REPORT_FILE), html.as_bytes()).context("writing report.html")?;
    Ok(r)
}

/// The photo scaled down, every face and detection above the threshold drawn in the colour of
/// what happened to it, with a tag.
fn draw(photo: &RgbImage, b: &PhotoBoxes, classes: &Classes, p: &DetEvalParams) -> RgbImage {
    use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_text_mut, text_size};
    use imageproc::rect::Rect;
    let (w, h) = photo.dimensions();
    // Large photos scaled down, small ones up to twice their size, so that boxes and tags read.
    let s = (MAX_SIDE as f64 / w.max(h) as f64).min(2.0);
    let mut img = if s != 1.0 {
        image::imageops::resize(photo, ((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1), image::imageops::FilterType::Triangle)
    } else {
        photo.clone()
    };
    let font = ab_glyph::FontRef::try_from_slice(dejavu::sans::bold()).ok();
    let px = (img.width().min(img.height()) as f32 / 40.0).clamp(11.0, 22.0);
    let boxed = |img: &mut RgbImage, bb: &[f64; 4], colour: Rgb<u8>, tag: &str| {
        let [x1, y1, x2, y2] = bb.map(|v| (v * s).round() as i32);
        for t in 0..2 {
            let (rw, rh) = ((x2 - x1 + 2 * t).max(1) as u32, (y2 - y1 + 2 * t).max(1) as u32);
            draw_hollow_rect_mut(img, Rect::at(x1 - t, y1 - t).of_size(rw, rh), colour);
        }
        let Some(font) = &font else { return };
        // Faces too small to carry a readable tag keep the colour of their box only.
        if tag.is_empty() || x2 - x1 < MIN_TAGGED {
            return;
        }
        let (tw, th) = text_size(px, font, tag);
        let top = if y1 - th as i32 - 6 >= 0 { y1 - th as i32 - 6 } else { y2 + 2 };
        draw_filled_rect_mut(img, Rect::at(x1, top).of_size(tw + 6, th + 4), colour);
        draw_text_mut(img, Rgb([255, 255, 255]), x1 + 3, top + 2, px, font, tag);
    };
    let m = match_photo(b, classes, p.operating_threshold() as f64, p.match_iou);
    let name = |names: &[String], c: usize| names.get(c).cloned().unwrap_or_else(|| "?".into());
    for (f, (bb, class, difficult)) in b.faces.iter().enumerate() {
        match (m.face_found_by[f], difficult) {
            (_, true) => boxed(&mut img, bb, DIFFICULT, ""),
            (None, false) => boxed(&mut img, bb, MISSED, &format!("missed {}", name(&classes.truth, *class))),
            (Some(_), false) => {}
        }
    }
    for (d, (bb, score, label)) in b.detections.iter().enumerate() {
        let tag = format!("{} {score:.2}", name(&classes.labels, *label));
        match m.detections[d] {
            Outcome::Skipped | Outcome::Difficult => {}
            Outcome::Found { right: Some(true), .. } => boxed(&mut img, bb, FOUND, &tag),
            Outcome::Found { right: Some(false), face } => {
                boxed(&mut img, bb, WRONG_LABEL, &format!("{tag} (is {})", name(&classes.truth, b.faces[face].1)))
            }
            Outcome::Found { right: None, face } => {
                boxed(&mut img, bb, NOT_SCORED, &format!("{tag} (is {})", name(&classes.truth, b.faces[face].1)))
            }
            Outcome::FalsePositive => boxed(&mut img, bb, FALSE_POSITIVE, &tag),
        }
    }
    img
}

use maskflow_core::html::esc;

fn fig(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
}

fn summary_row(h: &mut String, name: &str, s: &Summary) -> std::fmt::Result {
    write!(h, "<tr><td class=l>{}</td>", esc(name))?;
    for v in [s.ap, s.ap50, s.ap75, s.ap_small, s.ap_medium, s.ap_large, s.ar] {
        write!(h, "<td>{}</td>", fig(v))?;
    }
    h.push_str("</tr>");
    Ok(())
}

fn page(r: &DetectionResult, p: &DetEvalParams) -> Result<String> {
    let mut h = String::new();
    let title = format!("maskflow detection report — {} + {} labels", r.detector, r.labeller);
    write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}img{{max-width:100%;border:1px solid #ddd;margin:.3em 0}}\
         .note{{color:#777}}.k{{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}}</style></head><body><h1>{t}</h1>",
        t = esc(&title)
    )?;
    let rejected: Vec<String> = r.rejected.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    write!(
        h,
        "<h2>Data</h2><p>{} annotated photos scored ({} part{}), faces per class: {}. Rejected by the annotation reader: {}. \
         Unreadable photos (their faces count as missed): {}.</p>",
        r.photos,
        esc(&r.part),
        if r.part == "valid" { format!(": {:.0}% held out by content, seed {}", p.valid_pct * 100.0, p.seed) } else { String::new() },
        esc(&r.faces_per_class.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")),
        if rejected.is_empty() { "none".into() } else { esc(&rejected.join(", ")) },
        if r.unreadable.is_empty() { "none".into() } else { esc(&r.unreadable.join("; ")) },
    )?;
    h.push_str(
        "<h2>Average precision</h2><p>COCO's: 101-point interpolated, up to 100 detections per photo; sizes by box area \
         (small &lt; 32², large &gt; 96² px). <i>faces</i> takes every face as one class (how well faces are found); \
         each class row needs the right label too.</p><table><tr><th class=l></th><th>AP@[.5:.95]</th><th>AP@.5</th>\
         <th>AP@.75</th><th>AP small</th><th>AP medium</th><th>AP large</th><th>recall (AR@100)</th></tr>",
    );
    summary_row(&mut h, "faces", &r.faces)?;
    for (c, s) in &r.per_class {
        summary_row(&mut h, c, s)?;
    }
    summary_row(&mut h, "mean over classes", &r.mean)?;
    h.push_str("</table>");
    write!(h, "<img src=\"{PR_CURVE_FILE}\" alt=\"precision-recall curves\">")?;
    let o = &r.operating;
    write!(
        h,
        "<h2>At the operating threshold</h2><p>Detections scoring above {}; a face is found at IoU ≥ {}.</p><table>\
         <tr><th class=l>faces</th><td>{}</td></tr><tr><th class=l>found (recall)</th><td>{} ({:.4})</td></tr>\
         <tr><th class=l>faces ≥ {} px (shorter side)</th><td>{}</td></tr><tr><th class=l>found (recall)</th><td>{} ({:.4})</td></tr>\
         <tr><th class=l>detections</th><td>{}</td></tr><tr><th class=l>precision</th><td>{:.4}</td></tr>",
        o.threshold, o.iou, o.faces, o.found, o.recall, o.min_side, o.faces_min_side, o.found_min_side, o.recall_min_side, o.detections, o.precision
    )?;
    for (size, (n, f)) in &o.by_size {
        write!(h, "<tr><th class=l>{} faces found</th><td>{f} / {n}</td></tr>", esc(size))?;
    }
    h.push_str("</table>");
    let l = &r.labels;
    write!(
        h,
        "<h2>Labels on the faces found</h2><p>Balanced accuracy <b>{}</b>, accuracy {}{}.</p>\
         <table><tr><th class=l>truth \\ predicted</th>",
        fig(l.balanced_accuracy),
        fig(l.accuracy),
        if l.not_scored.is_empty() {
            String::new()
        } else {
            format!("; the labeller has no class for {}: those rows show how it labels them and count in neither", esc(&l.not_scored.join(", ")))
        }
    )?;
    for c in &l.predicted {
        write!(h, "<th>{}</th>", esc(c))?;
    }
    h.push_str("</tr>");
    for (c, row) in l.classes.iter().zip(&l.matrix) {
        write!(h, "<tr><th class=l>{}</th>", esc(c))?;
        for v in row {
            write!(h, "<td>{v}</td>")?;
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let key = |c: Rgb<u8>| format!("<span class=k style=\"background:rgb({},{},{})\"></span>", c[0], c[1], c[2]);
    write!(
        h,
        "<h2>Worst photos</h2><p>{} photo(s) with a mistake; the most first. {}found, labelled right {}found, wrong label \
         {}found, a class the labeller lacks {}false positive {}missed face {}difficult (not counted).</p>",
        r.worst.len(),
        key(FOUND),
        key(WRONG_LABEL),
        key(NOT_SCORED),
        key(FALSE_POSITIVE),
        key(MISSED),
        key(DIFFICULT)
    )?;
    for m in r.worst.iter().filter(|m| m.file.is_some()) {
        let file = m.file.as_deref().unwrap_or_default();
        write!(
            h,
            "<h3>{}</h3><p>{} missed, {} false positive(s), {} wrong label(s)</p><img src=\"{}\" alt=\"{}\">",
            esc(&m.image),
            m.missed,
            m.false_positives,
            m.wrong_labels,
            esc(file),
            esc(&m.image)
        )?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}
