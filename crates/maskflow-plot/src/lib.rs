//! PNG charts for maskflow's reports, drawn with plotters into an RGB buffer (DejaVu Sans embedded, so
//! no system fonts are needed) and written atomically as PNG.

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// One named line.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A labelled point drawn on top of the lines (e.g. an lr-finder suggestion).
pub struct Marker<'a> {
    pub label: &'a str,
    pub x: f64,
    pub y: f64,
}

/// A line chart description.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    pub markers: Vec<Marker<'a>>,
    pub log_x: bool,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn bounds(chart: &LineChart) -> (f64, f64, f64, f64) {
    let pts = chart.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (x0, x1, y0 - pad, y1 + pad)
}

/// Draws `chart` into a `w`×`h` PNG at `path`.
pub fn line_chart(path: &Path, chart: &LineChart, w: u32, h: u32) -> Result<()> {
    fonts();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (x0, x1, y0, y1) = bounds(chart);
        let mut builder = ChartBuilder::on(&root);
        builder.caption(chart.title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(60);
        macro_rules! draw {
            ($cc:expr) => {{
                let mut cc = $cc;
                cc.configure_mesh()
                    .x_desc(chart.x_label)
                    .y_desc(chart.y_label)
                    .label_style(("sans-serif", 13))
                    .draw()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for (i, s) in chart.series.iter().enumerate() {
                    let color = PALETTE[i % PALETTE.len()];
                    let pts: Vec<(f64, f64)> =
                        s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
                    cc.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .label(s.name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                    if pts.len() <= 40 {
                        cc.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
                for m in &chart.markers {
                    if m.x.is_finite() && m.y.is_finite() {
                        cc.draw_series(std::iter::once(Circle::new((m.x, m.y), 6, RED.filled())))
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        cc.draw_series(std::iter::once(Text::new(
                            m.label.to_string(),
                            (m.x, m.y),
                            ("sans-serif", 14).into_font().color(&RED),
                        )))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
                if chart.series.len() > 1 {
                    cc.configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font(("sans-serif", 13))
                        .draw()
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }};
        }
        if chart.log_x {
            draw!(builder
                .build_cartesian_2d((x0.max(1e-12)..x1).log_scale(), y0..y1)
                .map_err(|e| anyhow::anyhow!("{e}"))?);
        } else {
            draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_png(path, &buf, w, h)
}

/// Writes an RGB buffer as PNG, atomically.
pub fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, rgb.to_vec()).context("buffer size does not match the image size")?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    maskflow_core::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_log_chart_with_markers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.png");
        let chart = LineChart {
            title: "lr finder",
            x_label: "learning rate",
            y_label: "loss",
            series: vec![Series {
                name: "loss",
                points: (0..100).map(|i| (1e-7 * 1.2f64.powi(i), 1.0 / (1.0 + i as f64))).collect(),
            }],
            markers: vec![Marker { label: "valley", x: 1e-3, y: 0.1 }],
            log_x: true,
        };
        line_chart(&p, &chart, 640, 400).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 400));
        // Something other than white was drawn: the line's blue and the marker's red.
        assert!(img.pixels().any(|px| px.0 == [31, 119, 180]));
        assert!(img.pixels().any(|px| px.0 == [255, 0, 0]));
    }
}
