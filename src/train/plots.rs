//! `loss_curves.png` and `ppo_reward.png`, redrawn from `metrics.jsonl` each epoch.

use std::path::Path;

use plotters::prelude::*;

use crate::viz::ensure_font;

fn err(path: &Path, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("{}: cannot draw: {e:?}", path.display())
}

/// Draw named series of (x, y) points into a PNG with a title and axis labels.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    ensure_font();
    let pts: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|p| p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in &pts {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace('.', "_"))
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}-{}-partial.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(path, e))?;
        for (i, (label, s)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.iter().cloned().filter(|p| p.1.is_finite()),
                    colour.stroke_width(2),
                ))
                .map_err(|e| err(path, e))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| err(path, e))?;
        root.present().map_err(|e| err(path, e))?;
    }
    crate::io::rename_durably(&tmp, path)
        .map_err(|e| anyhow::anyhow!("{}: cannot move into place: {e}", path.display()))
}

/// Moving average over `w` points.
pub fn smooth(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(w.saturating_sub(1));
            let s = &points[lo..=i];
            (
                points[i].0,
                s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64,
            )
        })
        .collect()
}
