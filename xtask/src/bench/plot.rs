//! One compact PNG for the scale benchmark: times and agent memory against
//! the number of target sockets.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

/// Fonts tried in order; the plot is skipped (with a message) if none exists.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// One measured level.
#[derive(Debug, Clone, Copy)]
pub struct ScalePoint {
    pub sockets: f64,
    pub sweep_ms: f64,
    /// CPU time of one sweep: what the sweep costs without the machine's other load.
    pub sweep_cpu_ms: f64,
    pub scrape_ms: f64,
    pub ss_ms: f64,
    pub rss_mb: f64,
}

/// Legend name, colour, and which figure of a point it draws.
type Series = (&'static str, RGBColor, fn(&ScalePoint) -> f64);

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf found (Debian: apt-get install fonts-dejavu-core)"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // The font registry wants 'static bytes; one font per run, leaked on purpose.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

pub fn scale(path: &Path, points: &[ScalePoint], sweep_target_ms: f64, rss_target_mb: f64) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (960, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(560);
    let max_x = points.iter().map(|p| p.sockets).fold(1.0, f64::max) / 1000.0 * 1.05;
    let max_ms = points
        .iter()
        .flat_map(|p| [p.sweep_ms, p.scrape_ms, p.ss_ms])
        .filter(|v| v.is_finite())
        .fold(sweep_target_ms, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&left)
        .caption("time per pass (ms)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..max_x, 0.0..max_ms)
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("target sockets (thousands)")
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series: [Series; 4] = [
        ("observer sweep", BLUE, |p| p.sweep_ms),
        ("observer sweep, CPU time", RGBColor(120, 170, 255), |p| p.sweep_cpu_ms),
        ("ss -tin (same sockets)", RED, |p| p.ss_ms),
        ("GET /metrics", GREEN, |p| p.scrape_ms),
    ];
    for (name, color, f) in series {
        let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.sockets / 1000.0, f(p))).collect();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    let target = RGBColor(120, 120, 120).stroke_width(2);
    c.draw_series(LineSeries::new(vec![(0.0, sweep_target_ms), (max_x, sweep_target_ms)], target))
        .map_err(|e| anyhow!("{e}"))?
        .label(format!("target {sweep_target_ms} ms"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], target));
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    let max_mb = points.iter().map(|p| p.rss_mb).filter(|v| v.is_finite()).fold(rss_target_mb, f64::max) * 1.1;
    let mut m = ChartBuilder::on(&right)
        .caption("agent RSS (MB)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(0.0..max_x, 0.0..max_mb)
        .map_err(|e| anyhow!("{e}"))?;
    m.configure_mesh()
        .x_desc("target sockets (thousands)")
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.sockets / 1000.0, p.rss_mb)).collect();
    m.draw_series(LineSeries::new(pts.clone(), MAGENTA.stroke_width(2))).map_err(|e| anyhow!("{e}"))?;
    m.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, MAGENTA.filled()))).map_err(|e| anyhow!("{e}"))?;
    m.draw_series(LineSeries::new(vec![(0.0, rss_target_mb), (max_x, rss_target_mb)], target))
        .map_err(|e| anyhow!("{e}"))?
        .label(format!("target {rss_target_mb} MB"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], target));
    m.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
