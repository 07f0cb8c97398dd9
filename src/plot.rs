//! SVG plot for `zambac explore --plot`: per-sequence KV-cache + recurrent-state memory
//! against context length, one line per variant and one for the transformer baseline.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{CliError, CliResult};

/// What to plot: each series is (label, KV bytes per token, constant state bytes).
pub struct KvSeries {
    pub title: String,
    pub max_context: usize,
    pub series: Vec<(String, f64, f64)>,
}

/// Draws `s` into an SVG file at `path`.
pub fn kv_vs_context(path: &Path, s: &KvSeries) -> CliResult<()> {
    let fail = |e: String| CliError::input(format!("cannot write plot `{}`: {e}", path.display()));
    let gib = (1u64 << 30) as f64;
    let ymax = s
        .series
        .iter()
        .map(|(_, per_tok, state)| (per_tok * s.max_context as f64 + state) / gib)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0usize..s.max_context, 0f64..ymax)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("context length (tokens)")
        .y_desc("GiB per sequence (f32)")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    let steps = 64;
    for (i, (label, per_tok, state)) in s.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = (0..=steps).map(|k| {
            let c = s.max_context * k / steps;
            (c, (per_tok * c as f64 + state) / gib)
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
