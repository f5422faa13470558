//! Small self-contained SVG charts for the simulator's and the benchmarks' reports: time series with shaded
//! windows and event markers, and histograms. Hand-written rather than plotters: plotters
//! needs a font library to lay out text, and these reports must render on an offline box with
//! no fonts installed; an SVG `<text>` element is laid out by whatever opens the file.

use std::fmt::Write as _;

/// One line of a time series.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub color: &'static str,
    /// (x, y) points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A shaded x range (an outage, an AZ loss).
pub struct Band {
    /// Start.
    pub from: f64,
    /// End.
    pub to: f64,
    /// Label drawn at the top.
    pub label: String,
}

/// A vertical line at `x` (a leader change).
pub struct Marker {
    /// Position.
    pub x: f64,
    /// Label (shown on hover).
    pub label: String,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// XML-escapes `text`.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` ticks over `range`.
fn tick_step(range: f64, target: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::MIN_POSITIVE)
}

fn format_tick(value: f64) -> String {
    if value.abs() >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value.abs() >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, x: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (x / self.x_max).clamp(0.0, 1.0)
    }
    fn y(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (y / self.y_max).clamp(0.0, 1.0)
    }
}

fn open(svg: &mut String, title: &str) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
}

fn axes(svg: &mut String, frame: &Frame, x_label: &str, y_label: &str, x_ticks: bool) {
    let step = tick_step(frame.y_max, 5.0);
    let mut y = 0.0;
    while y <= frame.y_max + step * 1e-9 {
        let py = frame.y(y);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            format_tick(y)
        );
        y += step;
    }
    if x_ticks {
        let step = tick_step(frame.x_max, 10.0);
        let mut x = 0.0;
        while x <= frame.x_max + step * 1e-9 {
            let px = frame.x(x);
            let _ = write!(
                svg,
                r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
                HEIGHT - BOTTOM + 16.0,
                format_tick(x)
            );
            x += step;
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#333"/><line x1="{LEFT}" x2="{}" y1="{b}" y2="{b}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(y_label),
        b = HEIGHT - BOTTOM,
    );
}

/// A line chart of `series` over a shared x axis, with shaded `bands` and vertical `markers`.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    bands: &[Band],
    markers: &[Marker],
) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points
        .clone()
        .map(|p| p.0)
        .chain(bands.iter().map(|b| b.to))
        .fold(0.0, f64::max)
        .max(1.0);
    let y_max = points.map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.08;
    let frame = Frame { x_max, y_max };
    let mut svg = String::new();
    open(&mut svg, title);
    for band in bands {
        let (x1, x2) = (frame.x(band.from), frame.x(band.to));
        let _ = write!(
            svg,
            r##"<rect x="{x1:.1}" y="{TOP}" width="{:.1}" height="{}" fill="#f6d5d5" opacity="0.7"><title>{}</title></rect><text x="{:.1}" y="{}" font-size="11" fill="#a33">{}</text>"##,
            (x2 - x1).max(1.0),
            HEIGHT - TOP - BOTTOM,
            escape(&band.label),
            x1 + 3.0,
            TOP + 12.0,
            escape(&band.label)
        );
    }
    axes(&mut svg, &frame, x_label, y_label, true);
    for marker in markers {
        let px = frame.x(marker.x);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#7a4" stroke-dasharray="4 3"><title>{}</title></line>"##,
            HEIGHT - BOTTOM,
            escape(&marker.label)
        );
    }
    for (n, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", frame.x(*x), frame.y(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/><rect x="{}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            s.color,
            path.join(" "),
            WIDTH - RIGHT - 210.0,
            TOP + 8.0 + 16.0 * n as f64,
            s.color,
            WIDTH - RIGHT - 192.0,
            TOP + 12.0 + 16.0 * n as f64,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart (a histogram): one bar per labelled bucket.
pub fn bar_chart(title: &str, x_label: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let y_max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.08;
    let frame = Frame {
        x_max: bars.len().max(1) as f64,
        y_max,
    };
    let mut svg = String::new();
    open(&mut svg, title);
    axes(&mut svg, &frame, x_label, y_label, false);
    let width = (WIDTH - LEFT - RIGHT) / frame.x_max;
    for (n, (label, value)) in bars.iter().enumerate() {
        let x = frame.x(n as f64);
        let y = frame.y(*value);
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#4a7ab7"><title>{}: {}</title></rect><text x="{:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"##,
            x + 2.0,
            (width - 4.0).max(1.0),
            HEIGHT - BOTTOM - y,
            escape(label),
            value,
            x + width / 2.0,
            HEIGHT - BOTTOM + 14.0,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(7.0, 5.0), 2.0);
        assert_eq!(tick_step(0.3, 5.0), 0.1);
        assert_eq!(tick_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let chart = line_chart(
            "a <b> & c",
            "seconds",
            "machines",
            &[Series {
                name: "assigned".into(),
                color: "#000",
                points: vec![(0.0, 1.0), (1.0, 3.0)],
            }],
            &[Band {
                from: 0.2,
                to: 0.5,
                label: "outage".into(),
            }],
            &[Marker {
                x: 0.7,
                label: "leader 2".into(),
            }],
        );
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert!(chart.contains("a &lt;b&gt; &amp; c"));
        assert!(chart.contains("<polyline") && chart.contains("outage"));
        let bars = bar_chart("h", "ms", "writes", &[("1".into(), 3.0), ("2".into(), 0.0)]);
        assert_eq!(bars.matches("<rect x=").count(), 2);
    }
}
