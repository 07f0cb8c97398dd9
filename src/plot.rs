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

/// One measured variant for [`measured_vs_variant`].
pub struct MeasuredPoint {
    pub label: String,
    /// Decode tokens/s measured on this CPU, and the H100 roofline estimate.
    pub decode_measured: f64,
    pub decode_estimate: f64,
    /// KV cache + state bytes: what the engine allocates, and the estimate.
    pub memory_measured: f64,
    pub memory_estimate: f64,
}

/// What `explore --measure --plot` draws.
pub struct MeasuredSeries {
    pub title: String,
    pub points: Vec<MeasuredPoint>,
}

/// Two panels against the variants (the swept key's values, in sweep order): decode
/// tokens/s (log scale: a CPU measurement beside an H100 estimate) and KV cache + state
/// memory, each with the measured and the estimated series.
pub fn measured_vs_variant(path: &Path, s: &MeasuredSeries) -> CliResult<()> {
    let fail = |e: String| CliError::input(format!("cannot write plot `{}`: {e}", path.display()));
    if s.points.is_empty() {
        return Err(fail("no variant was measured".into()));
    }
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let root = root
        .titled(&s.title, ("sans-serif", 18))
        .map_err(|e| fail(e.to_string()))?;
    let (left, right) = root.split_horizontally(600);
    let labels: Vec<String> = s.points.iter().map(|p| p.label.clone()).collect();
    let mib = (1u64 << 20) as f64;
    let decode = Panel {
        caption: "decode tokens/s: this CPU (measured), H100 (roofline estimate)",
        y_desc: "tokens/s (log scale)",
        log: true,
        measured: s.points.iter().map(|p| p.decode_measured).collect(),
        estimated: s.points.iter().map(|p| p.decode_estimate).collect(),
    };
    let memory = Panel {
        caption: "KV cache + state per sequence: engine, estimate",
        y_desc: "MiB",
        log: false,
        measured: s.points.iter().map(|p| p.memory_measured / mib).collect(),
        estimated: s.points.iter().map(|p| p.memory_estimate / mib).collect(),
    };
    decode.draw(&left, &labels).map_err(fail)?;
    memory.draw(&right, &labels).map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// One panel of [`measured_vs_variant`].
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    log: bool,
    measured: Vec<f64>,
    estimated: Vec<f64>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

impl Panel {
    fn draw(&self, area: &Area<'_>, labels: &[String]) -> Result<(), String> {
        let n = labels.len();
        let all = self.measured.iter().chain(&self.estimated);
        let lo = all.clone().fold(f64::MAX, |a, &b| a.min(b)).max(1e-6);
        let hi = all.fold(0.0f64, |a, &b| a.max(b)).max(1e-6) * 1.3;
        let x_label = |i: &usize| labels.get(*i).cloned().unwrap_or_default();
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(self.caption, ("sans-serif", 14))
            .margin(16)
            .margin_right(56)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let m: Vec<(usize, f64)> = self.measured.iter().copied().enumerate().collect();
        let e: Vec<(usize, f64)> = self.estimated.iter().copied().enumerate().collect();
        let (mc, ec) = (Palette99::pick(0).to_rgba(), Palette99::pick(1).to_rgba());
        let err = |x: &dyn std::fmt::Display| x.to_string();
        macro_rules! series {
            ($chart:expr) => {{
                $chart
                    .configure_mesh()
                    .x_labels(n)
                    .x_label_formatter(&x_label)
                    .y_desc(self.y_desc)
                    .y_label_formatter(&|v: &f64| crate::fmt::si(*v))
                    .draw()
                    .map_err(|x| err(&x))?;
                $chart
                    .draw_series(LineSeries::new(m.clone(), mc.stroke_width(2)))
                    .map_err(|x| err(&x))?
                    .label("measured")
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], mc.stroke_width(2))
                    });
                $chart
                    .draw_series(m.iter().map(|p| Circle::new(*p, 5, mc.filled())))
                    .map_err(|x| err(&x))?;
                $chart
                    .draw_series(LineSeries::new(e.clone(), ec.stroke_width(2)))
                    .map_err(|x| err(&x))?
                    .label("estimate")
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], ec.stroke_width(2))
                    });
                $chart
                    .draw_series(e.iter().map(|p| Circle::new(*p, 5, ec.stroke_width(2))))
                    .map_err(|x| err(&x))?;
                $chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::MiddleRight)
                    .draw()
                    .map_err(|x| err(&x))?;
            }};
        }
        // The first variant on the left edge, the last on the right.
        let xs = 0usize..n.max(2) - 1;
        if self.log {
            // Whole decades, so both series have labelled ticks around them.
            let (lo, hi) = (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil()),
            );
            let mut chart = builder
                .build_cartesian_2d(xs, (lo..hi).log_scale())
                .map_err(|x| err(&x))?;
            series!(chart);
        } else {
            let mut chart = builder
                .build_cartesian_2d(xs, 0f64..hi)
                .map_err(|x| err(&x))?;
            series!(chart);
        }
        Ok(())
    }
}
