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

/// An axis tick's text: on a log axis the value to three significant digits (`1e-5`, `3e-4`,
/// `0.01`), never the float's full expansion (`9.999999999999e-6`).
pub fn tick_label(x: f64, log: bool) -> String {
    if !log {
        let r = (x * 1e6).round() / 1e6;
        return format!("{r}");
    }
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let e = x.abs().log10().floor() as i32;
    let m = (x / 10f64.powi(e) * 100.0).round() / 100.0;
    let (m, e) = if m.abs() >= 10.0 { (m / 10.0, e + 1) } else { (m, e) };
    if (-2..=2).contains(&e) {
        let v = m * 10f64.powi(e);
        format!("{}", (v * 1e4).round() / 1e4)
    } else if m == 1.0 {
        format!("1e{e}")
    } else {
        format!("{m}e{e}")
    }
}

/// Draws `chart` into a `w`×`h` PNG at `path`, the axes spanning the data.
pub fn line_chart(path: &Path, chart: &LineChart, w: u32, h: u32) -> Result<()> {
    line_chart_within(path, chart, w, h, bounds(chart))
}

/// Draws `chart` with the axes spanning `(x0, x1, y0, y1)` (e.g. a precision–recall chart: 0–1
/// with room for a marker's label).
pub fn line_chart_within(path: &Path, chart: &LineChart, w: u32, h: u32, axes: (f64, f64, f64, f64)) -> Result<()> {
    fonts();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (x0, x1, y0, y1) = axes;
        let mut builder = ChartBuilder::on(&root);
        builder.caption(chart.title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(60);
        macro_rules! draw {
            ($cc:expr) => {{
                let mut cc = $cc;
                cc.configure_mesh()
                    .x_desc(chart.x_label)
                    .y_desc(chart.y_label)
                    .label_style(("sans-serif", 13))
                    .x_label_formatter(&|x: &f64| tick_label(*x, chart.log_x))
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
                // Each marker's label sits above and to the right of its dot, never under it; markers
                // close together stack their labels upwards.
                for (i, m) in chart.markers.iter().enumerate() {
                    if m.x.is_finite() && m.y.is_finite() {
                        let lift = 10 + 16 * i as i32;
                        let el = EmptyElement::at((m.x, m.y))
                            + Circle::new((0, 0), 6, RED.filled())
                            + PathElement::new(vec![(0, 0), (8, -lift + 8)], RED.stroke_width(1))
                            + Text::new(m.label.to_string(), (10, -lift), ("sans-serif", 14).into_font().color(&RED));
                        cc.draw_series(std::iter::once(el)).map_err(|e| anyhow::anyhow!("{e}"))?;
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

/// One cell of an image grid: the picture and its title lines.
pub struct Tile {
    pub image: image::RgbImage,
    pub title: Vec<String>,
}

/// A grid of titled images (show_batch, top losses): `cols` per row, each image scaled to `side`².
/// Returns the PNG's (width, height).
pub fn image_grid(path: &Path, tiles: &[Tile], cols: usize, side: u32, heading: &str) -> Result<(u32, u32)> {
    fonts();
    anyhow::ensure!(cols > 0 && side > 0, "image grid needs cols > 0 and side > 0");
    let rows = tiles.len().div_ceil(cols).max(1) as u32;
    let lines = tiles.iter().map(|t| t.title.len()).max().unwrap_or(0) as u32;
    let (pad, line_h, head_h) = (8u32, 15u32, if heading.is_empty() { 0 } else { 30 });
    let cell_w = side + pad;
    let cell_h = side + lines * line_h + pad;
    let (w, h) = (cols as u32 * cell_w + pad, head_h + rows * cell_h + pad);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    for (i, t) in tiles.iter().enumerate() {
        let (cx, cy) = ((i % cols) as u32 * cell_w + pad, head_h + (i / cols) as u32 * cell_h + pad + lines * line_h);
        let img = image::imageops::resize(&t.image, side, side, image::imageops::FilterType::Triangle);
        for (x, y, px) in img.enumerate_pixels() {
            let o = (((cy + y) * w + cx + x) * 3) as usize;
            buf[o..o + 3].copy_from_slice(&px.0);
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let style = ("sans-serif", 13).into_font().color(&BLACK);
        if !heading.is_empty() {
            root.draw(&Text::new(heading.to_string(), (pad as i32, 6), ("sans-serif", 18).into_font().color(&BLACK)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (i, t) in tiles.iter().enumerate() {
            let (cx, cy) = ((i % cols) as u32 * cell_w + pad, head_h + (i / cols) as u32 * cell_h + pad);
            for (l, line) in t.title.iter().enumerate() {
                root.draw(&Text::new(line.clone(), (cx as i32, (cy + l as u32 * line_h) as i32), style.clone()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_png(path, &buf, w, h)?;
    Ok((w, h))
}

/// A confusion matrix: rows = actual, columns = predicted, each cell shaded by `values` (counts, or
/// row fractions when `normalized`) with its value written in it.
pub fn confusion_png(path: &Path, values: &[Vec<f64>], names: &[String], normalized: bool, title: &str) -> Result<()> {
    let max = values.iter().flatten().copied().fold(0.0f64, f64::max).max(1e-12);
    heatmap_png(
        path,
        &Heatmap {
            values,
            rows: names,
            cols: names,
            title,
            axes: "actual ↓  predicted →",
            decimals: if normalized { Some(3) } else { None },
            shading: Shading::Blues { max },
        },
    )
}

/// How a heat map's cells are coloured.
#[derive(Debug, Clone, Copy)]
pub enum Shading {
    /// White → dark blue as the value goes 0 → `max`.
    Blues { max: f64 },
    /// Red at `lo` (or below) → yellow → green at `hi`: for accuracies, where lower is worse.
    RedGreen { lo: f64, hi: f64 },
}

impl Shading {
    /// The cell colour and whether its text should be white.
    fn colour(self, v: f64) -> (RGBColor, bool) {
        match self {
            Shading::Blues { max } => {
                let t = (v / max.max(1e-12)).clamp(0.0, 1.0);
                let c = |a: f64, b: f64| (a - t * (a - b)) as u8;
                (RGBColor(c(247.0, 8.0), c(251.0, 48.0), c(255.0, 107.0)), t > 0.5)
            }
            Shading::RedGreen { lo, hi } => {
                let t = ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0);
                // red (215, 48, 39) → yellow (254, 224, 139) → green (26, 152, 80)
                let mix = |a: (f64, f64, f64), b: (f64, f64, f64), u: f64| {
                    RGBColor((a.0 + u * (b.0 - a.0)) as u8, (a.1 + u * (b.1 - a.1)) as u8, (a.2 + u * (b.2 - a.2)) as u8)
                };
                let (red, yellow, green) = ((215.0, 48.0, 39.0), (254.0, 224.0, 139.0), (26.0, 152.0, 80.0));
                if t < 0.5 {
                    (mix(red, yellow, t * 2.0), t < 0.15)
                } else {
                    (mix(yellow, green, (t - 0.5) * 2.0), t > 0.85)
                }
            }
        }
    }
}

/// A table of values drawn as coloured cells, each with its value written in it.
pub struct Heatmap<'a> {
    /// `values[row][col]`.
    pub values: &'a [Vec<f64>],
    pub rows: &'a [String],
    pub cols: &'a [String],
    pub title: &'a str,
    /// A note on the axes, above the row names (e.g. "actual ↓  predicted →").
    pub axes: &'a str,
    /// Decimals of the written values; `None` = rounded to an integer.
    pub decimals: Option<usize>,
    pub shading: Shading,
}

/// Draws `map` as a PNG.
pub fn heatmap_png(path: &Path, map: &Heatmap) -> Result<()> {
    fonts();
    let (nr, nc) = (map.rows.len().max(1) as u32, map.cols.len().max(1) as u32);
    let cell = (480 / nr.max(nc)).clamp(40, 140);
    let cell_w = cell.max(64);
    let (left, top, bottom) = (170u32, 60u32, 60u32);
    let (w, h) = ((left + nc * cell_w + 30).max(420), top + nr * cell + bottom);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.draw(&Text::new(map.title.to_string(), (10, 10), ("sans-serif", 18).into_font().color(&BLACK)))
            .map_err(|e| err(&e))?;
        for (r, row) in map.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x0, y0) = ((left + c as u32 * cell_w) as i32, (top + r as u32 * cell) as i32);
                let (colour, white) = map.shading.colour(v);
                let corners = [(x0, y0), (x0 + cell_w as i32, y0 + cell as i32)];
                root.draw(&Rectangle::new(corners, colour.filled())).map_err(|e| err(&e))?;
                root.draw(&Rectangle::new(corners, BLACK.stroke_width(1))).map_err(|e| err(&e))?;
                let label = match map.decimals {
                    Some(d) => format!("{v:.d$}"),
                    None => format!("{}", v.round() as i64),
                };
                let text_colour = if white { WHITE } else { BLACK };
                let text_x = x0 + cell_w as i32 / 2 - 4 * label.chars().count() as i32;
                root.draw(&Text::new(label, (text_x, y0 + cell as i32 / 2 - 8), ("sans-serif", 16).into_font().color(&text_colour)))
                    .map_err(|e| err(&e))?;
            }
        }
        let small = ("sans-serif", 13).into_font().color(&BLACK);
        for (i, n) in map.rows.iter().enumerate() {
            let y = (top + i as u32 * cell + cell / 2 - 7) as i32;
            root.draw(&Text::new(n.clone(), (8, y), small.clone())).map_err(|e| err(&e))?;
        }
        for (i, n) in map.cols.iter().enumerate() {
            let x = (left + i as u32 * cell_w + 4) as i32;
            root.draw(&Text::new(n.clone(), (x, (top + nr * cell + 8) as i32), small.clone())).map_err(|e| err(&e))?;
        }
        root.draw(&Text::new(map.axes.to_string(), (8, (top - 22) as i32), small.clone())).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
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
    #[test]
    fn log_ticks_are_short() {
        use super::tick_label;
        assert_eq!(tick_label(9.999999999999e-6, true), "1e-5");
        assert_eq!(tick_label(9.99999999999e-5, true), "1e-4");
        assert_eq!(tick_label(3.0000000001e-4, true), "3e-4");
        assert_eq!(tick_label(0.01, true), "0.01");
        assert_eq!(tick_label(1.0, true), "1");
        assert_eq!(tick_label(2.5e-7, true), "2.5e-7");
        assert_eq!(tick_label(0.30000000000000004, false), "0.3");
    }

    use super::*;

    #[test]
    fn image_grid_has_the_right_size_and_tiles() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.png");
        let tiles: Vec<Tile> = (0..5u8)
            .map(|i| Tile {
                image: image::RgbImage::from_pixel(30, 30, image::Rgb([i * 40, 0, 200])),
                title: vec![format!("tile {i}"), "second line".into()],
            })
            .collect();
        let (w, h) = image_grid(&p, &tiles, 3, 64, "batch").unwrap();
        // 3 columns × (64 + 8) + 8; 2 rows × (64 + 2·15 + 8) + 8 + 30 heading
        assert_eq!((w, h), (3 * 72 + 8, 30 + 2 * 102 + 8));
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (w, h));
        // Each tile's colour is present at its place: tile 4 is row 1, col 1.
        let (x, y) = (72 + 8 + 32, 30 + 102 + 8 + 30 + 32);
        assert_eq!(img.get_pixel(x, y).0, [160, 0, 200]);
        // The sixth cell is empty (white).
        assert_eq!(img.get_pixel(2 * 72 + 8 + 32, y).0, [255, 255, 255]);
    }

    #[test]
    fn confusion_png_draws_cells() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cm.png");
        let names = vec!["with_mask".to_string(), "without_mask".to_string()];
        confusion_png(&p, &[vec![10.0, 1.0], vec![0.0, 12.0]], &names, false, "confusion").unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert!(img.width() > 300 && img.height() > 300);
    }

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
