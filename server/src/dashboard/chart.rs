//! A metric across versions, drawn by the server as inline SVG: no script,
//! no chart library, readable in any browser and in a screenshot.

use maud::{Markup, html};

/// One point: a version and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The version number (x).
    pub version: i64,
    /// The metric's value (y).
    pub value: f64,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

/// The chart of `metric` over `points` (sorted by version); `production`
/// is ringed. `None` draws nothing when there is nothing to draw.
pub fn metric_chart(metric: &str, points: &[Point], production: i64) -> Option<Markup> {
    if points.is_empty() {
        return None;
    }
    let (lo, hi) = value_range(points);
    let first = points[0].version as f64;
    let last = points[points.len() - 1].version as f64;
    let x = |v: i64| {
        if last > first {
            LEFT + (v as f64 - first) / (last - first) * (WIDTH - LEFT - RIGHT)
        } else {
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0
        }
    };
    let y = |value: f64| TOP + (hi - value) / (hi - lo) * (HEIGHT - TOP - BOTTOM);
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.version), y(p.value)))
        .collect();
    let ticks = [lo, (lo + hi) / 2.0, hi];
    // At most ~12 version labels, so long histories stay legible.
    let step = points.len().div_ceil(12).max(1);
    let title = format!("{metric} by version");
    Some(html! {
        svg #metric-chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-label=(title) data-metric=(metric) {
            title { (title) }
            @for t in ticks {
                line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(fmt(y(t))) y2=(fmt(y(t))) stroke="#e3e6ea" {}
                text x=(LEFT - 6.0) y=(fmt(y(t) + 4.0)) text-anchor="end" font-size="11" fill="#5b6470" { (value(t)) }
            }
            line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(HEIGHT - BOTTOM) y2=(HEIGHT - BOTTOM) stroke="#9aa3ad" {}
            polyline points=(line.join(" ")) fill="none" stroke="#2f6fb3" stroke-width="2" {}
            @for (i, p) in points.iter().enumerate() {
                @let (cx, cy) = (fmt(x(p.version)), fmt(y(p.value)));
                @if p.version == production {
                    circle cx=(cx) cy=(cy) r="7" fill="none" stroke="#1f8a4c" stroke-width="2" {}
                }
                circle cx=(cx) cy=(cy) r="3.5" fill="#2f6fb3" data-version=(p.version) data-value=(p.value) {
                    title { "v" (p.version) ": " (metric) " " (p.value) }
                }
                @if i % step == 0 || i == points.len() - 1 {
                    text x=(cx) y=(HEIGHT - BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#5b6470" { "v" (p.version) }
                }
            }
        }
    })
}

/// The y range: the values' span with a margin, never empty.
fn value_range(points: &[Point]) -> (f64, f64) {
    let lo = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.value)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    if span > 0.0 {
        (lo - span * 0.1, hi + span * 0.1)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// An axis label: enough digits to tell the ticks apart.
fn value(v: f64) -> String {
    crate::domain::decimal(v, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_point_and_rings_production() {
        let points = [
            Point {
                version: 1,
                value: 0.91,
            },
            Point {
                version: 2,
                value: 0.93,
            },
            Point {
                version: 4,
                value: 0.90,
            },
        ];
        let svg = metric_chart("auc", &points, 2).unwrap().into_string();
        assert!(svg.starts_with("<svg id=\"metric-chart\""));
        assert_eq!(svg.matches("data-version=").count(), 3);
        assert_eq!(svg.matches("stroke=\"#1f8a4c\"").count(), 1, "one ring");
        assert!(svg.contains(">v4<"));
        assert!(metric_chart("auc", &[], 1).is_none());
        // One point or equal values still give a non-empty range.
        let one = metric_chart("auc", &points[..1], 0).unwrap().into_string();
        assert!(!one.contains("NaN") && !one.contains("inf"));
    }

    #[test]
    fn hostile_metric_names_are_escaped() {
        let svg = metric_chart(
            "<script>",
            &[Point {
                version: 1,
                value: 1.0,
            }],
            1,
        )
        .unwrap()
        .into_string();
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"));
    }
}
