//! The demo's chart: the picture from incident write-ups — the server's memory
//! climbing while its connection count stays flat — drawn from the observer's
//! own metrics, one scrape per second.
//!
//! Three panels over one time axis, so lines of very different scales stay
//! readable: RSS against ESTABLISHED (two y-axes), zombie and stalled sockets,
//! and the bytes stuck in send queues.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

/// Size of the written PNG, in pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 900;

/// Fonts tried in order (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const MIB: f64 = 1024.0 * 1024.0;

/// One scrape of the observer. A figure is `None` when the scrape lacked it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the demo started.
    pub t: f64,
    pub rss_bytes: Option<f64>,
    pub established: Option<f64>,
    /// All reasons together (dead_peer, close_wait, orphaned).
    pub zombies: Option<f64>,
    pub stalled: Option<f64>,
    pub unsent_bytes: Option<f64>,
    pub send_queue_bytes: Option<f64>,
}

impl Sample {
    /// Reads the figures the chart draws from a Prometheus text exposition.
    pub fn from_exposition(t: f64, text: &str) -> Sample {
        Sample {
            t,
            rss_bytes: sum(text, "observer_target_rss_bytes", None),
            established: sum(text, "observer_tcp_sockets", Some(("state", "established"))),
            zombies: sum(text, "observer_zombie_sockets", None),
            stalled: sum(text, "observer_stalled_sockets", None),
            unsent_bytes: sum(text, "observer_unsent_bytes", None),
            send_queue_bytes: sum(text, "observer_send_queue_bytes", None),
        }
    }
}

/// Sum of every series of `name` (optionally only those with one label value);
/// `None` if there is none, so a missing metric is not drawn as zero.
pub fn sum(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.as_bytes().first() {
            Some(b'{') => match rest.split_once('}') {
                Some((labels, value)) => (&labels[1..], value),
                None => continue,
            },
            Some(b' ') => ("", rest),
            // A longer metric name sharing this prefix.
            _ => continue,
        };
        if let Some(w) = &wanted
            && !labels.split(',').any(|l| l == w)
        {
            continue;
        }
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf found (Debian: apt-get install fonts-dejavu-core)"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // plotters keeps fonts for the life of the process; one font, leaked once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// One line of a panel: legend, colour, which figure, and its scale.
struct Line {
    name: &'static str,
    color: RGBColor,
    pick: fn(&Sample) -> Option<f64>,
    scale: f64,
}

impl Line {
    fn points(&self, samples: &[Sample]) -> Vec<(f64, f64)> {
        samples.iter().filter_map(|s| (self.pick)(s).map(|v| (s.t, v / self.scale))).collect()
    }

    fn max(&self, samples: &[Sample]) -> f64 {
        self.points(samples).iter().map(|p| p.1).fold(0.0, f64::max)
    }

    fn style(&self) -> ShapeStyle {
        self.color.stroke_width(3)
    }

    fn legend(&self) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> + use<> {
        let style = self.style();
        move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
    }
}

const RSS: RGBColor = RGBColor(200, 30, 30);
const ESTABLISHED: RGBColor = RGBColor(30, 90, 200);
const ZOMBIES: RGBColor = RGBColor(150, 40, 160);
const STALLED: RGBColor = RGBColor(230, 130, 0);
const SEND_Q: RGBColor = RGBColor(20, 140, 60);
const UNSENT: RGBColor = RGBColor(110, 110, 110);

/// Headroom above the largest value — a third of the panel, where the legend
/// sits — and never a zero-height axis.
fn top(max: f64, min_top: f64) -> f64 {
    (max * 1.5).max(min_top)
}

/// Writes the chart. `title` names the run (target, thresholds).
pub fn write(path: &Path, title: &str, samples: &[Sample]) -> Result<()> {
    if samples.is_empty() {
        bail!("no samples to chart (the observer never answered a scrape)");
    }
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    render(&root, title, samples)
        .and_then(|()| Ok(root.present()?))
        .map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Room for tick labels; every panel reserves both sides, so the time axes line up.
const X_LABELS: u32 = 28;
const Y_LABELS: u32 = 64;
const LABEL_SIZE: u32 = 14;
const CAPTION_SIZE: u32 = 17;

fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

/// Tick labels with one decimal only where the axis is short.
fn ticks_for(top: f64) -> fn(&f64) -> String {
    if top > 10.0 { whole } else { |v| format!("{v:.1}") }
}

fn render(root: &Area<'_>, title: &str, samples: &[Sample]) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));
    // A second past the last sample, so the lines' ends are not clipped.
    let t_end = samples.iter().map(|s| s.t).fold(1.0, f64::max).ceil() + 1.0;
    let label = ("sans-serif", LABEL_SIZE);

    // The tell: memory against connections, each on its own axis.
    let rss = Line { name: "target RSS (MiB, left axis)", color: RSS, pick: |s| s.rss_bytes, scale: MIB };
    let est =
        Line { name: "ESTABLISHED sockets (right axis)", color: ESTABLISHED, pick: |s| s.established, scale: 1.0 };
    let rss_top = top(rss.max(samples), 1.0);
    let mut c = ChartBuilder::on(&panels[0])
        .caption("memory climbs while connections stay flat", ("sans-serif", CAPTION_SIZE))
        .margin(8)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(Y_LABELS)
        .right_y_label_area_size(Y_LABELS)
        .build_cartesian_2d(0.0..t_end, 0.0..rss_top)?
        .set_secondary_coord(0.0..t_end, 0.0..top(est.max(samples), 5.0));
    c.configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&whole)
        .y_label_formatter(&ticks_for(rss_top))
        .y_desc("MiB")
        .label_style(label)
        .draw()?;
    c.configure_secondary_axes().y_label_formatter(&whole).y_desc("sockets").label_style(label).draw()?;
    c.draw_series(LineSeries::new(rss.points(samples), rss.style()))?.label(rss.name).legend(rss.legend());
    c.draw_secondary_series(LineSeries::new(est.points(samples), est.style()))?.label(est.name).legend(est.legend());
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(label)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;

    let sockets = [
        Line {
            name: "zombie sockets (dead_peer + close_wait + orphaned)",
            color: ZOMBIES,
            pick: |s| s.zombies,
            scale: 1.0,
        },
        Line { name: "stalled sockets (zero window)", color: STALLED, pick: |s| s.stalled, scale: 1.0 },
    ];
    let sockets_panel =
        Panel { caption: "sockets that will not make progress", unit: "sockets", min_top: 5.0, counts: true };
    sockets_panel.draw(&panels[1], &sockets, samples, t_end, None)?;
    let bytes = [
        Line { name: "send queue (unsent + unacked)", color: SEND_Q, pick: |s| s.send_queue_bytes, scale: MIB },
        Line { name: "unsent", color: UNSENT, pick: |s| s.unsent_bytes, scale: MIB },
    ];
    let bytes_panel =
        Panel { caption: "bytes stuck in the kernel's send queues", unit: "MiB", min_top: 0.1, counts: false };
    bytes_panel.draw(&panels[2], &bytes, samples, t_end, Some("seconds since the demo started"))?;
    Ok(())
}

/// A panel of lines sharing one y-axis.
struct Panel {
    caption: &'static str,
    unit: &'static str,
    min_top: f64,
    /// Whole numbers on the y-axis.
    counts: bool,
}

impl Panel {
    fn draw(
        &self,
        area: &Area<'_>,
        lines: &[Line],
        samples: &[Sample],
        t_end: f64,
        x_desc: Option<&str>,
    ) -> DrawResult {
        let label = ("sans-serif", LABEL_SIZE);
        let y_top = top(lines.iter().map(|l| l.max(samples)).fold(0.0, f64::max), self.min_top);
        let mut c = ChartBuilder::on(area)
            .caption(self.caption, ("sans-serif", CAPTION_SIZE))
            .margin(8)
            // The right margin stands in for the top panel's second axis.
            .margin_right(8 + Y_LABELS)
            .x_label_area_size(if x_desc.is_some() { X_LABELS + 18 } else { X_LABELS })
            .y_label_area_size(Y_LABELS)
            .build_cartesian_2d(0.0..t_end, 0.0..y_top)?;
        let mut mesh = c.configure_mesh();
        mesh.light_line_style(TRANSPARENT).x_label_formatter(&whole).y_desc(self.unit).label_style(label);
        let ticks = if self.counts { whole } else { ticks_for(y_top) };
        mesh.y_label_formatter(&ticks);
        if let Some(d) = x_desc {
            mesh.x_desc(d);
        }
        mesh.draw()?;
        for line in lines {
            c.draw_series(LineSeries::new(line.points(samples), line.style()))?.label(line.name).legend(line.legend());
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(label)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP observer_zombie_sockets Zombie sockets.
# TYPE observer_zombie_sockets gauge
observer_zombie_sockets{reason=\"dead_peer\"} 2
observer_zombie_sockets{reason=\"close_wait\"} 3
observer_zombie_sockets{reason=\"orphaned\"} 1
observer_zombie_queued_bytes{reason=\"dead_peer\"} 999
observer_tcp_sockets{state=\"established\"} 7
observer_tcp_sockets{state=\"close_wait\"} 3
observer_target_rss_bytes 12582912
observer_target_rss_anon_bytes 1
observer_send_queue_bytes 4096
";

    #[test]
    fn sums_series_by_name_and_label_only() {
        let s = Sample::from_exposition(4.0, SCRAPE);
        assert_eq!(s.zombies, Some(6.0), "zombie_queued_bytes must not count as zombies");
        assert_eq!(s.established, Some(7.0));
        assert_eq!(s.rss_bytes, Some(12582912.0), "rss_anon must not be added to rss");
        assert_eq!(s.send_queue_bytes, Some(4096.0));
        assert_eq!(s.stalled, None, "absent metrics are absent, not zero");
        assert_eq!(s.unsent_bytes, None);
    }

    /// Width and height from a PNG's IHDR chunk, which must come first.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    /// Memory climbing, connections flat, zombies appearing after 10 s.
    fn synthetic() -> Vec<Sample> {
        (0..60)
            .map(|i| {
                let t = i as f64;
                Sample {
                    t,
                    rss_bytes: Some((4.0 + 0.5 * t) * MIB),
                    established: Some(10.0),
                    zombies: Some(if t < 10.0 { 0.0 } else { 5.0 }),
                    stalled: (i % 7 != 0).then_some(2.0),
                    unsent_bytes: Some(t * 30_000.0),
                    send_queue_bytes: Some(t * 50_000.0),
                }
            })
            .collect()
    }

    #[test]
    fn writes_a_png_of_the_promised_size_from_synthetic_series() {
        let path = std::env::temp_dir().join(format!("xtask-chart-test-{}.png", std::process::id()));
        let result = write(&path, "synthetic", &synthetic());
        let bytes = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        result.expect("chart written");
        let bytes = bytes.expect("PNG exists");
        assert_eq!(png_size(&bytes), (WIDTH, HEIGHT));
        // A blank white image of this size compresses to a few KiB.
        assert!(bytes.len() > 20_000, "PNG suspiciously small: {} bytes", bytes.len());
    }

    /// Pixels of exactly this colour in an RGB buffer.
    fn count(buf: &[u8], c: RGBColor) -> usize {
        buf.chunks_exact(3).filter(|p| p == &[c.0, c.1, c.2]).count()
    }

    fn render_to_buffer(samples: &[Sample]) -> Vec<u8> {
        register_font().expect("font");
        let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
            render(&root, "synthetic", samples).expect("rendered");
            root.present().expect("presented");
        }
        buf
    }

    #[test]
    fn draws_every_series_and_only_legends_for_absent_ones() {
        // A series across the plot is a few thousand pixels of its colour; its
        // legend swatch alone is 60.
        const DRAWN: usize = 1000;
        let buf = render_to_buffer(&synthetic());
        for (name, c) in [
            ("rss", RSS),
            ("established", ESTABLISHED),
            ("zombies", ZOMBIES),
            ("stalled", STALLED),
            ("send queue", SEND_Q),
            ("unsent", UNSENT),
        ] {
            let n = count(&buf, c);
            assert!(n > DRAWN, "{name}: only {n} pixels of its colour");
        }
        let without: Vec<Sample> = synthetic().into_iter().map(|s| Sample { zombies: None, ..s }).collect();
        let buf = render_to_buffer(&without);
        let n = count(&buf, ZOMBIES);
        assert!(n > 0 && n < DRAWN, "zombies absent: expected only the legend swatch, got {n} pixels");
    }

    #[test]
    fn refuses_to_draw_nothing() {
        let path = std::env::temp_dir().join(format!("xtask-chart-empty-{}.png", std::process::id()));
        assert!(write(&path, "empty", &[]).is_err());
        assert!(!path.exists());
    }
}
