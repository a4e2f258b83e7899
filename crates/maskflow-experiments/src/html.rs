//! `runs.html`: the runs table, the training curves of the runs overlaid, their confusion matrices
//! side by side, and links to each run's report pages. Static and offline (PNG charts beside it,
//! no outside resources); once loaded, a script marks on `<body>` how many images loaded
//! (`data-images`, `data-broken-images`), which the Chromium check reads.

use crate::rows::Row;
use crate::table::{self, Line};
use anyhow::{Context, Result};
use maskflow_plot::{LineChart, Series};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// The folder of charts beside a page `runs.html` (`runs-files/`).
pub fn files_dir(page: &Path) -> PathBuf {
    let stem = page.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "runs".into());
    page.with_file_name(format!("{stem}-files"))
}

use maskflow_core::html::esc;

/// A row's name in legends: the sweep point's label and values, else the run's id.
pub fn label(r: &Row) -> String {
    match &r.point {
        Some(values) => {
            let last = r.id.rsplit('/').next().unwrap_or(&r.id);
            let vals: Vec<String> = values.iter().map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k))).collect();
            format!("{last} {}", vals.join(" "))
        }
        None => r.id.clone(),
    }
}

/// `to` relative to the folder `from` (both made absolute), for links that survive moving the
/// store; the absolute path when there is no relative one.
fn relative(from: &Path, to: &Path) -> String {
    let (Ok(from), Ok(to)) = (std::fs::canonicalize(from), std::fs::canonicalize(to)) else { return to.display().to_string() };
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out.display().to_string()
}

/// Writes `page` (and its charts into [`files_dir`]) for `rows`. Returns how many charts it drew.
pub fn write(page: &Path, title: &str, rows: &[Row]) -> Result<usize> {
    let dir = page.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let files = files_dir(page);
    let files_name = files.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The charts go to a fresh folder that replaces the old one whole.
    let tmp = dir.join(format!(".{files_name}-tmp-{}", maskflow_core::fsutil::unique_suffix()));
    std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
    let drawn = (|| -> Result<(String, usize)> {
        let mut body = String::new();
        let mut charts = 0;
        write_table(&mut body, dir, rows)?;
        charts += write_curves(&mut body, &tmp, &files_name, rows)?;
        charts += write_confusions(&mut body, &tmp, &files_name, rows)?;
        Ok((body, charts))
    })();
    let (body, charts) = match drawn {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if files.exists() {
        std::fs::remove_dir_all(&files).with_context(|| files.display().to_string())?;
    }
    std::fs::rename(&tmp, &files).with_context(|| files.display().to_string())?;
    let mut h = String::new();
    write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:14px}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f3f3f3}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         .row{{display:flex;flex-wrap:wrap;gap:16px}}.row figure{{margin:0}}.cm img{{width:330px}}.note{{color:#555;font-size:13px}}\
         </style></head><body><h1>{t}</h1>",
        t = esc(title)
    )?;
    h.push_str(&body);
    h.push_str(maskflow_core::html::IMAGES_LOADED_SCRIPT);
    h.push_str("</body></html>\n");
    maskflow_core::fsutil::write_atomic(page, h.as_bytes()).with_context(|| page.display().to_string())?;
    Ok(charts)
}

fn write_table(h: &mut String, dir: &Path, rows: &[Row]) -> Result<()> {
    let lines: Vec<Line> = table::lines(rows);
    h.push_str("<h2>Runs</h2><p class=note>Params shown are those that differ between these runs; metrics are the stages' headline figures.</p><table><tr><th>run</th><th>when (UTC)</th><th>commit</th><th>built</th>");
    if let Some(first) = lines.first() {
        for (p, _) in &first.params {
            write!(h, "<th>{}</th>", esc(p))?;
        }
        for (m, _) in &first.metrics {
            write!(h, "<th>{}</th>", esc(m))?;
        }
    }
    h.push_str("<th>reports</th></tr>");
    for (l, r) in lines.iter().zip(rows) {
        write!(h, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>", esc(&l.id), esc(&l.when), esc(&l.commit), esc(&l.built_text().replace(',', ", ")))?;
        for (_, v) in &l.params {
            write!(h, "<td>{}</td>", esc(v.trim_matches('"')))?;
        }
        for (m, v) in &l.metrics {
            write!(h, "<td class=n>{}</td>", table::metric_text(m, *v))?;
        }
        let links: Vec<String> = r
            .stages
            .iter()
            .filter_map(|s| s.report.as_ref().map(|p| format!("<a href=\"{}\">{}</a>", esc(&relative(dir, p)), esc(&s.name))))
            .collect();
        write!(h, "<td>{}</td></tr>", links.join(" "))?;
    }
    h.push_str("</table>");
    Ok(())
}

/// One chart per (instance, curve), every row a line.
fn write_curves(h: &mut String, files: &Path, files_name: &str, rows: &[Row]) -> Result<usize> {
    let mut by_chart: BTreeMap<(String, &str), Vec<(String, Vec<(f64, f64)>, &str)>> = BTreeMap::new();
    for r in rows {
        for (instance, c) in &r.curves {
            by_chart.entry((instance.clone(), c.name)).or_default().push((label(r), c.points.clone(), c.x_label));
        }
    }
    if by_chart.is_empty() {
        return Ok(0);
    }
    h.push_str("<h2>Training curves</h2><div class=row>");
    for (i, ((instance, name), lines)) in by_chart.iter().enumerate() {
        let file = format!("curve-{i}.png");
        let title = format!("{instance} · {name}");
        let chart = LineChart {
            title: &title,
            x_label: lines[0].2,
            y_label: name,
            series: lines.iter().map(|(label, points, _)| Series { name: label, points: points.clone() }).collect(),
            markers: Vec::new(),
            log_x: false,
        };
        maskflow_plot::line_chart(&files.join(&file), &chart, 560, 380)?;
        write!(h, "<figure><img src=\"{files_name}/{file}\" width=560 height=380 alt=\"{}\"></figure>", esc(&title))?;
    }
    h.push_str("</div>");
    Ok(by_chart.len())
}

/// Each row's confusion matrices, side by side.
fn write_confusions(h: &mut String, files: &Path, files_name: &str, rows: &[Row]) -> Result<usize> {
    let mut n = 0;
    let mut figures = String::new();
    for r in rows {
        for (instance, c) in &r.confusions {
            let file = format!("confusion-{n}.png");
            let title = format!("{} · {instance}", label(r));
            let values: Vec<Vec<f64>> = c.counts.iter().map(|row| row.iter().map(|&v| v as f64).collect()).collect();
            maskflow_plot::confusion_png(&files.join(&file), &values, &c.classes, false, &title)?;
            write!(figures, "<figure class=cm><img src=\"{files_name}/{file}\" alt=\"{}\"></figure>", esc(&title))?;
            n += 1;
        }
    }
    if n > 0 {
        write!(h, "<h2>Confusion matrices</h2><div class=row>{figures}</div>")?;
    }
    Ok(n)
}
