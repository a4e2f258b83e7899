//! `review.html`: one entry per suspected group of copies — a thumbnail, every path, the given and
//! the suspected label, the evidence — and the thumbnails beside it in `thumbs/`.

use crate::{Suspect, CSV_FILE, DRAFT_FILE, HTML_FILE};
use anyhow::{Context, Result};
use maskflow_core::fsutil::write_atomic;
use std::fmt::Write;
use std::path::Path;

use maskflow_core::html::esc;

/// A 160-pixel JPEG of data row `row`, as `thumbs/<hash prefix>.jpg`; returns its relative path.
fn thumbnail(out_dir: &Path, data: &maskflow_data::SplitData, s: &Suspect) -> Result<String> {
    let rel = format!("thumbs/{}.jpg", &s.content_hash[..s.content_hash.len().min(16)]);
    let rgb = maskflow_data::data::to_rgb(&data.image(s.row)?);
    let small = image::imageops::resize(&rgb, 160, 160, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 88)
        .encode_image(&small)
        .with_context(|| format!("encoding the thumbnail of {}", s.path))?;
    std::fs::create_dir_all(out_dir.join("thumbs"))?;
    write_atomic(&out_dir.join(&rel), &bytes)?;
    Ok(rel)
}

pub fn write(out_dir: &Path, data: &maskflow_data::SplitData, suspects: &[Suspect]) -> Result<()> {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>maskflow label review</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}\
         .given{color:#b00}.suspected{color:#070;font-weight:bold}.note{color:#777}code{font-size:12px}</style></head><body>\
         <h1>Suspected label problems</h1>",
    );
    let mut groups: Vec<&str> = Vec::new();
    for s in suspects {
        if !groups.contains(&s.group.as_str()) {
            groups.push(&s.group);
        }
    }
    write!(
        h,
        "<p>{} file(s) in {} group(s) of copies. The decisions are a human's: this page only shows the evidence. \
         <code>{CSV_FILE}</code> lists every file; <code>{DRAFT_FILE}</code> holds each suspicion as a commented-out \
         label override — uncomment what you agree with and name the file in <code>[dataset] overrides</code>.</p>",
        suspects.len(),
        groups.len()
    )?;
    if suspects.is_empty() {
        h.push_str("<p>Nothing suspected.</p>");
    } else {
        h.push_str("<table><tr><th>image</th><th>files</th><th>given</th><th>suspected</th><th>evidence</th></tr>");
        for g in &groups {
            let members: Vec<&Suspect> = suspects.iter().filter(|s| s.group == *g).collect();
            let first = members[0];
            let thumb = thumbnail(out_dir, data, first)?;
            let paths: Vec<String> =
                members.iter().map(|s| format!("<code>{}</code> ({}, {})", esc(&s.path), esc(&s.given), esc(&s.split))).collect();
            let times = if first.copies > 1 { format!(" ×{}", first.copies) } else { String::new() };
            write!(
                h,
                "<tr><td><img src=\"{thumb}\" width=160 height=160 alt=\"{}\"></td><td>{}{times}</td><td class=given>{}</td>\
                 <td class=suspected>{}</td><td>{}</td></tr>",
                esc(&first.path),
                paths.join("<br>"),
                esc(&first.given),
                esc(&first.suspected),
                esc(&first.evidence)
            )?;
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    write_atomic(&out_dir.join(HTML_FILE), h.as_bytes())?;
    Ok(())
}
