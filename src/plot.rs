//! `runner plot`: learning curves, epoch time per device, and accuracy against epoch time,
//! drawn with plotters as SVG; `.png` outputs are the same SVG rasterised with resvg (text uses
//! the system's fonts; without any, the picture is drawn without its labels).

use std::path::Path;

use plotters::prelude::*;

use crate::compare::{Row, RunRecord};
use crate::error::{Error, Result};

const W: u32 = 900;
const H: u32 = 640;

fn perr<E: std::fmt::Display>(e: E) -> Error {
    Error::Other(format!("plot: {e}"))
}

/// Distinct colours `color` gives (the palette, then 360 hues x 9 lightnesses x 3
/// saturations); series beyond them reuse colours.
pub const DISTINCT_COLORS: usize = 10 + 360 * 27;

/// The colour of series `i`: a ten-colour palette, then every whole-degree hue in a scattered
/// order (137 degrees apart), at 9 lightnesses and 3 saturations: no two of the first
/// `DISTINCT_COLORS` series share one.
fn color(i: usize) -> RGBColor {
    if i >= 10 {
        let j = i - 10;
        let h = ((j * 137) % 360) as f64 / 360.0;
        let k = j / 360;
        let l = 0.33 + 0.03 * (k % 9) as f64;
        let s = [0.65, 0.9, 0.45][(k / 9) % 3];
        let (r, g, b) = hsl_to_rgb(h, s, l);
        return RGBColor(r, g, b);
    }
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// HSL (each in 0..1) to 8-bit RGB.
fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let q = if l < 0.5 {
        l * (1.0 + s)
    } else {
        l + s - l * s
    };
    let p = 2.0 * l - q;
    let channel = |t: f64| {
        let t = t.rem_euclid(1.0);
        let v = if t < 1.0 / 6.0 {
            p + (q - p) * 6.0 * t
        } else if t < 0.5 {
            q
        } else if t < 2.0 / 3.0 {
            p + (q - p) * (2.0 / 3.0 - t) * 6.0
        } else {
            p
        };
        (v * 255.0).round().clamp(0.0, 255.0) as u8
    };
    (channel(h + 1.0 / 3.0), channel(h), channel(h - 1.0 / 3.0))
}

/// Validation accuracy (top) and loss (bottom) per epoch, one line per run.
pub fn curves_svg(runs: &[RunRecord]) -> Result<String> {
    let runs: Vec<&RunRecord> = runs.iter().filter(|r| !r.curve.is_empty()).collect();
    if runs.is_empty() {
        return Err(Error::Other(
            "plot: no run has per-epoch validation metrics".into(),
        ));
    }
    let max_epoch = runs
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.0))
        .fold(1.0, f64::max);
    let max_loss = runs
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.2))
        .filter(|v| v.is_finite())
        .fold(0.1, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let panels = root.split_evenly((2, 1));
        for (p, area) in panels.iter().enumerate() {
            let (title, ymax) = if p == 0 {
                ("validation accuracy", 1.0)
            } else {
                ("validation loss", max_loss * 1.05)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(1.0..max_epoch.max(2.0), 0.0..ymax)
                .map_err(perr)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .draw()
                .map_err(perr)?;
            for (i, r) in runs.iter().enumerate() {
                let pts: Vec<(f64, f64)> = r
                    .curve
                    .iter()
                    .map(|c| (c.0, if p == 0 { c.1 } else { c.2 }))
                    .collect();
                let s = chart
                    .draw_series(LineSeries::new(pts, color(i).stroke_width(2)))
                    .map_err(perr)?;
                if p == 0 {
                    let c = color(i);
                    s.label(r.label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                }
            }
            if p == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(perr)?;
            }
        }
        root.present().map_err(perr)?;
    }
    Ok(svg)
}

/// Median epoch time per row as bars, with min-max whiskers.
pub fn times_svg(rows: &[Row], by: &[String]) -> Result<String> {
    if rows.is_empty() {
        return Err(Error::Other("plot: nothing to draw".into()));
    }
    let ymax = rows
        .iter()
        .map(|r| r.max_epoch_seconds)
        .filter(|v| v.is_finite())
        .fold(1e-6, f64::max)
        * 1.15;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            by.iter()
                .filter_map(|k| r.keys.get(k).cloned())
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let n = rows.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "epoch time (median, min-max over epochs 2..n)",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n as f64, 0.0..ymax)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("seconds")
            .draw()
            .map_err(perr)?;
        for (i, r) in rows.iter().enumerate() {
            let x = i as f64;
            let c = color(i);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, r.median_epoch_seconds)],
                    c.filled(),
                )))
                .map_err(perr)?;
            let mid = x + 0.5;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(mid, r.min_epoch_seconds), (mid, r.max_epoch_seconds)],
                    BLACK.stroke_width(2),
                )))
                .map_err(perr)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    labels[i].clone(),
                    (x + 0.15, -ymax * 0.04),
                    ("sans-serif", 12),
                )))
                .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    Ok(svg)
}

/// Best validation accuracy against median epoch time, one point per run.
pub fn scatter_svg(runs: &[RunRecord]) -> Result<String> {
    let pts: Vec<(f64, f64, String)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                crate::results::median(&r.epoch_seconds),
                r.best_val_acc?,
                r.label.clone(),
            ))
        })
        .collect();
    if pts.is_empty() {
        return Err(Error::Other(
            "plot: no run has a summary with best_val_acc".into(),
        ));
    }
    let xmax = pts.iter().map(|p| p.0).fold(1e-6, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "best validation accuracy vs median epoch time",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, 0.0..1.0)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .x_desc("median epoch seconds")
            .y_desc("best val acc")
            .draw()
            .map_err(perr)?;
        for (i, (x, y, label)) in pts.iter().enumerate() {
            chart
                .draw_series(std::iter::once(Circle::new((*x, *y), 5, color(i).filled())))
                .map_err(perr)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, *y),
                    ("sans-serif", 11),
                )))
                .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    Ok(svg)
}

/// The settings other than the cut point that tell the lines of the layer chart apart.
const LAYER_SERIES_KEYS: &[&str] = &[
    "experiment",
    "freeze",
    "output",
    "lr",
    "hidden",
    "optimizer",
    "batch_size",
    "dtype",
];

/// The key the runs differ in as a cut point: `output` (the layer the head reads), else
/// `freeze`; `None` when they differ in neither.
pub fn layer_key(runs: &[RunRecord]) -> Option<&'static str> {
    ["output", "freeze"].into_iter().find(|k| {
        runs.iter()
            .filter_map(|r| r.keys.get(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    })
}

/// Position of `layer` in `arch`'s network order (unknown names after all known ones).
fn layer_rank(arch: Option<&String>, layer: &str) -> usize {
    arch.and_then(|a| crate::arch::Arch::parse(a))
        .and_then(|a| a.layer_index(layer))
        .unwrap_or(usize::MAX)
}

/// One line of the layer chart: (layer position, best val acc, its test acc) per cut point.
type LayerLine = (String, Vec<(usize, f64, Option<f64>)>);

/// The lines of the layer chart of one backbone's runs: per combination of the other settings
/// that differ (and do not just follow the cut point, as `freeze` follows `output` in a linear
/// probe at each layer), the best validation accuracy (and that run's test accuracy) at each
/// cut point.
fn layer_lines(runs: &[&RunRecord], key: &str, layers: &[String]) -> Vec<LayerLine> {
    let varying: Vec<&str> = LAYER_SERIES_KEYS
        .iter()
        .copied()
        .filter(|k| *k != key)
        .filter(|k| {
            let mut per_layer: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> =
                Default::default();
            for r in runs {
                per_layer
                    .entry(r.keys.get(key))
                    .or_default()
                    .insert(r.keys.get(*k));
            }
            per_layer.values().any(|v| v.len() > 1)
        })
        .collect();
    let mut lines: std::collections::BTreeMap<String, Vec<(usize, f64, Option<f64>)>> =
        Default::default();
    for r in runs {
        let (Some(layer), Some(val)) = (r.keys.get(key), r.best_val_acc) else {
            continue;
        };
        let Some(x) = layers.iter().position(|l| l == layer) else {
            continue;
        };
        let name = varying
            .iter()
            .map(|k| format!("{k}={}", r.keys.get(*k).map_or("-", |v| v.as_str())))
            .collect::<Vec<_>>()
            .join(" ");
        let pts = lines.entry(name).or_default();
        match pts.iter_mut().find(|p| p.0 == x) {
            Some(p) if p.1 >= val => {}
            Some(p) => *p = (x, val, r.test_acc),
            None => pts.push((x, val, r.test_acc)),
        }
    }
    lines
        .into_iter()
        .map(|(name, mut pts)| {
            pts.sort_by_key(|p| p.0);
            (if name.is_empty() { "runs".into() } else { name }, pts)
        })
        .collect()
}

/// Which layer transfers best: best validation accuracy (solid, dots) and test accuracy
/// (dashed) against the cut point the runs' heads read, in network order, one line per
/// combination of the other settings that differ; one chart per backbone, stacked.
pub fn layers_svg(runs: &[RunRecord]) -> Result<String> {
    let key = layer_key(runs)
        .ok_or_else(|| Error::Other("plot: the runs do not differ in their cut point".into()))?;
    let backbones: std::collections::BTreeSet<Option<&String>> =
        runs.iter().map(|r| r.keys.get("backbone")).collect();
    let mut svg = String::new();
    {
        let panel_h = 420u32;
        let root = SVGBackend::with_string(&mut svg, (W, panel_h * backbones.len() as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let areas = root.split_evenly((backbones.len(), 1));
        for (area, arch) in areas.iter().zip(&backbones) {
            let rs: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.keys.get("backbone") == *arch)
                .collect();
            let mut layers: Vec<String> = rs
                .iter()
                .filter_map(|r| r.keys.get(key).cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            layers.sort_by_key(|l| layer_rank(*arch, l));
            let lines = layer_lines(&rs, key, &layers);
            layer_panel(
                area,
                arch.map_or("runs", |a| a.as_str()),
                key,
                &layers,
                &lines,
            )?;
        }
        root.present().map_err(perr)?;
    }
    Ok(svg)
}

/// One backbone's panel of the layer chart.
fn layer_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    arch: &str,
    key: &str,
    layers: &[String],
    lines: &[LayerLine],
) -> Result<()> {
    let accs: Vec<f64> = lines
        .iter()
        .flat_map(|(_, p)| p.iter().flat_map(|q| std::iter::once(q.1).chain(q.2)))
        .collect();
    let lo = (accs.iter().copied().fold(1.0, f64::min) - 0.05).max(0.0);
    let hi = (accs.iter().copied().fold(0.0, f64::max) + 0.05)
        .min(1.0)
        .max(lo + 0.01);
    let n = layers.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{arch}: accuracy by {key} (solid: best validation, dashed: test)"),
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), lo..hi)
        .map_err(perr)?;
    let name = |x: &f64| {
        let i = x.round();
        match (x - i).abs() < 1e-6 && i >= 0.0 {
            true => layers.get(i as usize).cloned().unwrap_or_default(),
            false => String::new(),
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&name)
        .x_desc(format!("backbone.{key}, in network order"))
        .y_desc("accuracy")
        .draw()
        .map_err(perr)?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let c = color(i);
        let val: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.1)).collect();
        chart
            .draw_series(LineSeries::new(val.clone(), c.stroke_width(2)))
            .map_err(perr)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(perr)?;
        let test: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|p| Some((p.0 as f64, p.2?)))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(test, 6, 4, c.stroke_width(1)))
            .map_err(perr)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(perr)?;
    Ok(())
}

/// Write an SVG as `.svg`, or rasterised as `.png`, atomically.
pub fn save(svg: &str, out: &Path) -> Result<()> {
    match out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("svg") => crate::fsio::write_atomic(out, svg.as_bytes()),
        Some("png") => {
            let mut opt = resvg::usvg::Options::default();
            opt.fontdb_mut().load_system_fonts();
            // plotters asks for the generic "sans-serif"; map it to a font most Linux systems have
            let family = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
                .into_iter()
                .find(|f| {
                    opt.fontdb
                        .faces()
                        .any(|face| face.families.iter().any(|(n, _)| n == f))
                });
            if let Some(f) = family {
                opt.fontdb_mut().set_sans_serif_family(f);
                opt.font_family = f.to_string();
            }
            let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(perr)?;
            let size = tree.size().to_int_size();
            let mut pixmap =
                resvg::tiny_skia::Pixmap::new(size.width().max(1), size.height().max(1))
                    .ok_or_else(|| Error::Other("plot: empty picture".into()))?;
            pixmap.fill(resvg::tiny_skia::Color::WHITE);
            resvg::render(
                &tree,
                resvg::tiny_skia::Transform::default(),
                &mut pixmap.as_mut(),
            );
            let png = pixmap.encode_png().map_err(perr)?;
            crate::fsio::write_atomic(out, &png)
        }
        _ => Err(Error::Other(format!(
            "plot: {} must end in .svg or .png",
            out.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_colours_are_all_distinct() {
        let all: std::collections::HashSet<(u8, u8, u8)> = (0..DISTINCT_COLORS)
            .map(|i| {
                let c = color(i);
                (c.0, c.1, c.2)
            })
            .collect();
        assert_eq!(all.len(), DISTINCT_COLORS);
    }
}
