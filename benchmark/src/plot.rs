//! Grouped bars of the macro-benchmark: one group per phase, one bar per deployment
//! (mean, with a ±1 sd whisker and the mean written above). PNG or SVG by the file's
//! extension. Text is drawn with DejaVu Sans embedded in the binary, so the plot needs
//! no system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{MacroReport, fmt_ms};
use crate::workload::PHASES;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 700;
const FONT: &str = "sans-serif";
/// Above this ratio of the largest to the smallest bar, the axis is logarithmic (P2 is
/// two orders of magnitude above P4 in the paper's Table 2).
const LOG_SCALE_RATIO: f64 = 30.0;

/// Tableau-like colours, one per deployment.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn register_fonts() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                result = Err(anyhow::anyhow!("the embedded DejaVu Sans font is invalid"));
            }
        }
    });
    result
}

pub fn write(report: &MacroReport, path: &Path) -> Result<()> {
    register_fonts()?;
    if report.modes.is_empty() {
        bail!("nothing to plot: no mode ran");
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw(report, &root)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw(report, &root)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        _ => bail!("--plot wants a .png or .svg file, not {}", path.display()),
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(report: &MacroReport, root: &DrawingArea<DB, Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let modes = &report.modes;
    let groups = PHASES.len();
    let tops: Vec<f64> = modes
        .iter()
        .flat_map(|m| {
            m.phases
                .iter()
                .map(|p| p.summary.mean_ms + p.summary.stddev_ms)
        })
        .collect();
    let bottoms: Vec<f64> = modes
        .iter()
        .flat_map(|m| m.phases.iter().map(|p| p.summary.mean_ms))
        .filter(|v| *v > 0.0)
        .collect();
    let max = tops.iter().copied().fold(0.0, f64::max).max(1e-3);
    let min = bottoms
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(max);
    let log = max / min > LOG_SCALE_RATIO;

    let title = format!(
        "bftnfs macro-benchmark (paper Table 2): mean latency per phase, {} runs",
        report.runs
    );
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 26).into_font())
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(80);
    let x_range = 0f64..groups as f64;
    let y_caption = if log {
        "latency, ms (log scale; bar = mean, whisker = ±1 sd)"
    } else {
        "latency, ms (bar = mean, whisker = ±1 sd)"
    };
    if log {
        let floor = 10f64.powf((min / 2.0).log10().floor());
        let mut chart = builder
            .build_cartesian_2d(x_range, (floor..max * 3.0).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(y_caption)
            .y_label_formatter(&|v| fmt_ms(*v))
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_err)?;
        bars(report, &mut chart, floor)?;
        labels(root, &chart, floor)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, 0f64..max * 1.15)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(y_caption)
            .y_label_formatter(&|v| fmt_ms(*v))
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_err)?;
        bars(report, &mut chart, 0.0)?;
        labels(root, &chart, 0.0)?;
    }
    Ok(())
}

type Chart<'a, DB, Y> =
    ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn bars<'a, DB, Y>(report: &MacroReport, chart: &mut Chart<'a, DB, Y>, base: f64) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    let modes = &report.modes;
    let width = 0.8 / modes.len() as f64;
    for (j, m) in modes.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let rects = m.phases.iter().enumerate().map(|(i, p)| {
            let x0 = i as f64 + 0.1 + j as f64 * width;
            Rectangle::new(
                [(x0, base), (x0 + width * 0.92, p.summary.mean_ms.max(base))],
                colour.filled(),
            )
        });
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(format!(
                "{} (total {} ms)",
                m.name,
                fmt_ms(m.total().mean_ms)
            ))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        let whiskers = m.phases.iter().enumerate().map(|(i, p)| {
            let x = i as f64 + 0.1 + (j as f64 + 0.46) * width;
            let s = p.summary;
            PathElement::new(
                vec![
                    (x, (s.mean_ms - s.stddev_ms).max(base)),
                    (x, s.mean_ms + s.stddev_ms),
                ],
                BLACK.stroke_width(2),
            )
        });
        chart.draw_series(whiskers).map_err(plot_err)?;
        let value_style = (FONT, 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let values = m.phases.iter().enumerate().map(|(i, p)| {
            let x = i as f64 + 0.1 + (j as f64 + 0.46) * width;
            let s = p.summary;
            EmptyElement::at((x, s.mean_ms + s.stddev_ms))
                + Text::new(fmt_ms(s.mean_ms), (0, -4), value_style.clone())
        });
        chart.draw_series(values).map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 18))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Phase names under each group, in pixels below the plot area.
fn labels<'a, DB, Y>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart<'a, DB, Y>,
    base: f64,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    let name_style = TextStyle::from((FONT, 18).into_font().style(FontStyle::Bold))
        .pos(Pos::new(HPos::Center, VPos::Top));
    let title_style =
        TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, phase) in PHASES.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, base));
        root.draw(&Text::new(phase.name(), (x, y + 8), name_style.clone()))
            .map_err(plot_err)?;
        root.draw(&Text::new(phase.title(), (x, y + 32), title_style.clone()))
            .map_err(plot_err)?;
    }
    Ok(())
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
