//! SVG charts, one file per scenario and kind of figure.
//!
//! Every chart keeps its legend in a panel to the right of the plot, so it never covers a bar or
//! a curve, and every peer keeps its color across all charts (see [`peer_color`]).

use std::error::Error;
use std::io;
use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{format, has_curve, has_memory, DIRECT, EDGEPLANE};
use crate::model::{PeerResult, ScenarioResult, Spread};

type DrawResult<T> = Result<T, Box<dyn Error + Send + Sync>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const SIZE: (u32, u32) = (960, 540);
const LEGEND_WIDTH: u32 = 210;
const FONT: &str = "sans-serif";

/// The figures drawn for a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartKind {
    /// Median throughput per peer, with min–max whiskers.
    Throughput,
    /// Latency percentile curves per peer.
    Latency,
    /// CPU µs per request per peer.
    Cpu,
    /// RSS at the end of a round and peak RSS per peer.
    Memory,
    /// Resident memory per idle connection held.
    PerConnection,
}

impl ChartKind {
    pub const ALL: [ChartKind; 5] =
        [ChartKind::Throughput, ChartKind::Latency, ChartKind::Cpu, ChartKind::Memory, ChartKind::PerConnection];

    /// The file name suffix: `<scenario>-<slug>.svg`.
    pub fn slug(self) -> &'static str {
        match self {
            ChartKind::Throughput => "throughput",
            ChartKind::Latency => "latency",
            ChartKind::Cpu => "cpu",
            ChartKind::Memory => "memory",
            ChartKind::PerConnection => "per-connection",
        }
    }

    pub fn link_text(self) -> &'static str {
        match self {
            ChartKind::Throughput => "throughput",
            ChartKind::Latency => "latency percentiles",
            ChartKind::Cpu => "CPU per request",
            ChartKind::Memory => "memory",
            ChartKind::PerConnection => "memory per connection",
        }
    }
}

/// The charts `scenario` has data for, in the order they are linked.
pub(super) fn kinds(scenario: &ScenarioResult) -> Vec<ChartKind> {
    ChartKind::ALL.into_iter().filter(|&kind| !peers_for(scenario, kind).is_empty()).collect()
}

/// The peers that have something to show on a chart.
fn peers_for(scenario: &ScenarioResult, kind: ChartKind) -> Vec<&PeerResult> {
    let wanted = |p: &&PeerResult| match kind {
        ChartKind::Throughput => true,
        ChartKind::Latency => has_curve(p),
        ChartKind::Cpu => p.summary.cpu_us_per_request.is_some(),
        ChartKind::Memory => has_memory(p),
        ChartKind::PerConnection => p.summary.bytes_per_connection.is_some(),
    };
    scenario.peers.iter().filter(wanted).collect()
}

/// The chart as an SVG document.
pub(super) fn render(scenario: &ScenarioResult, kind: ChartKind) -> io::Result<String> {
    let peers = peers_for(scenario, kind);
    let drawn = match kind {
        ChartKind::Throughput => throughput(scenario, &peers),
        ChartKind::Latency => latency(scenario, &peers),
        ChartKind::Cpu => cpu(scenario, &peers),
        ChartKind::Memory => memory(scenario, &peers),
        ChartKind::PerConnection => per_connection(scenario, &peers),
    };
    drawn.map_err(|e| io::Error::other(format!("drawing the {} chart of {}: {e}", kind.slug(), scenario.name)))
}

/// A peer's color on every chart. The known peers have fixed colors from the Okabe–Ito palette
/// (readable with the common kinds of color blindness); edgeplane is always vermillion and the
/// `direct` baseline grey. Other names get a color from their name, so it is stable across charts
/// and runs.
pub(super) fn peer_color(name: &str) -> RGBColor {
    const OTHERS: [RGBColor; 5] = [
        RGBColor(86, 180, 233),
        RGBColor(140, 86, 75),
        RGBColor(128, 128, 0),
        RGBColor(40, 40, 40),
        RGBColor(23, 160, 180),
    ];
    match name.to_ascii_lowercase().as_str() {
        EDGEPLANE => RGBColor(213, 94, 0),
        DIRECT => RGBColor(128, 128, 128),
        "nginx" => RGBColor(0, 158, 115),
        "haproxy" => RGBColor(0, 114, 178),
        "envoy" => RGBColor(204, 121, 167),
        "pipy" => RGBColor(230, 159, 0),
        other => {
            // FNV-1a: stable across runs, unlike std's randomly seeded hasher.
            let hash =
                other.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            OTHERS[(hash % OTHERS.len() as u64) as usize]
        }
    }
}

/// The same hue, washed out: the second bar of a group.
fn light(color: RGBColor) -> RGBColor {
    let wash = |c: u8| (f64::from(c) * 0.4 + 255.0 * 0.6).round() as u8;
    RGBColor(wash(color.0), wash(color.1), wash(color.2))
}

/// What CPU time is counted per: a request, a message (MQTT) or a TLS handshake.
fn per_what(scenario: &ScenarioResult) -> &'static str {
    match scenario.unit.as_str() {
        "msg/s" => "message",
        "handshakes/s" => "handshake",
        _ => "request",
    }
}

fn title(scenario: &ScenarioResult, what: &str) -> String {
    format!("{} — {what}", scenario.name)
}

fn rounds_note(peers: &[&PeerResult]) -> String {
    let rounds = peers.iter().map(|p| p.rounds.len()).max().unwrap_or(0);
    format!("peer (bar: median, whisker: min–max over {})", format::plural(rounds, "round", "rounds"))
}

fn throughput(scenario: &ScenarioResult, peers: &[&PeerResult]) -> DrawResult<String> {
    let bars = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Bar::single(i, p, p.summary.throughput, format::amount(p.summary.throughput.median)))
        .collect::<Vec<_>>();
    let offered: Vec<(usize, f64)> = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Spread::of(p.rounds.iter().filter_map(|r| r.offered_rate)).map(|s| (i, s.median)))
        .collect();
    let mut legend = peer_legend(peers, Swatch::Box);
    if !offered.is_empty() {
        legend.push(Legend { swatch: Swatch::Dashed(BLACK, 2), text: "offered rate".into() });
    }
    let unit = if scenario.unit.is_empty() { "per second" } else { scenario.unit.as_str() };
    let chart = BarChart {
        title: title(scenario, "throughput"),
        x_desc: rounds_note(peers),
        y_desc: format!("throughput, {unit}"),
        categories: peers.iter().map(|p| p.peer.as_str()).collect(),
        bars,
        offered,
        legend,
        y_tick: &format::compact,
    };
    chart.draw()
}

fn per_connection(scenario: &ScenarioResult, peers: &[&PeerResult]) -> DrawResult<String> {
    let bars = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let bytes = p.summary.bytes_per_connection?;
            Some(Bar::single(i, p, bytes, format::amount(bytes.median)))
        })
        .collect();
    let chart = BarChart {
        title: title(scenario, "memory per idle connection"),
        x_desc: rounds_note(peers),
        y_desc: "resident memory added per connection, bytes".into(),
        categories: peers.iter().map(|p| p.peer.as_str()).collect(),
        bars,
        offered: Vec::new(),
        legend: peer_legend(peers, Swatch::Box),
        y_tick: &format::compact,
    };
    chart.draw()
}

fn cpu(scenario: &ScenarioResult, peers: &[&PeerResult]) -> DrawResult<String> {
    let bars = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let cpu = p.summary.cpu_us_per_request?;
            Some(Bar::single(i, p, cpu, format::amount(cpu.median)))
        })
        .collect();
    let chart = BarChart {
        title: title(scenario, &format!("CPU per {}", per_what(scenario))),
        x_desc: rounds_note(peers),
        y_desc: format!("proxy CPU (user + system), µs per {}", per_what(scenario)),
        categories: peers.iter().map(|p| p.peer.as_str()).collect(),
        bars,
        offered: Vec::new(),
        legend: peer_legend(peers, Swatch::Box),
        y_tick: &format::trim,
    };
    chart.draw()
}

fn memory(scenario: &ScenarioResult, peers: &[&PeerResult]) -> DrawResult<String> {
    let to_mib = |s: Spread| Spread { median: s.median / 1024.0, min: s.min / 1024.0, max: s.max / 1024.0 };
    let mut bars = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let color = peer_color(&p.peer);
        for (offset, spread, light) in [(0.3, p.summary.rss_kib, false), (0.7, p.summary.peak_rss_kib, true)] {
            let spread = to_mib(spread);
            let label = format!("{:.1}", spread.median);
            bars.push(Bar { center: i as f64 + offset, half_width: 0.17, spread, color, light, label });
        }
    }
    let mut legend = peer_legend(peers, Swatch::Box);
    legend.push(Legend { swatch: Swatch::Box(RGBColor(110, 110, 110)), text: "RSS at end of round".into() });
    legend.push(Legend { swatch: Swatch::LightBox(RGBColor(110, 110, 110)), text: "peak RSS (high-water)".into() });
    let chart = BarChart {
        title: title(scenario, "memory"),
        x_desc: rounds_note(peers),
        y_desc: "proxy resident memory, MiB".into(),
        categories: peers.iter().map(|p| p.peer.as_str()).collect(),
        bars,
        offered: Vec::new(),
        legend,
        y_tick: &format::trim,
    };
    chart.draw()
}

/// `x` for a percentile on the HDR "nines" scale: 0 at 0%, 1 at 90%, 2 at 99%, 3 at 99.9%...
fn nines(percentile: f64) -> f64 {
    (100.0 / (100.0 - percentile.max(0.0))).log10()
}

/// The tick label for a whole number of nines: `0%`, `90%`, `99%`, `99.9%`, `99.99%`.
fn nines_label(x: f64) -> String {
    match x.round() as usize {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99{}{}%", if n > 2 { "." } else { "" }, "9".repeat(n.saturating_sub(2))),
    }
}

/// The 1-2-5 value at or below `v` (`below`), or at or above it.
fn nice(v: f64, below: bool) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    if below {
        steps.iter().rev().map(|s| s * decade).find(|&c| c <= v * (1.0 + 1e-9)).unwrap_or(decade)
    } else {
        steps.iter().map(|s| s * decade).find(|&c| c >= v * (1.0 - 1e-9)).unwrap_or(10.0 * decade)
    }
}

/// Tick values for a log axis from `lo` to `hi`: 1-2-5 per decade, or every 1..9 on a short range.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |steps: &[f64]| {
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            ticks
                .extend(steps.iter().map(|s| s * decade).filter(|&t| t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9)));
            decade *= 10.0;
        }
        ticks
    };
    let ticks = within(&[1.0, 2.0, 5.0]);
    if ticks.len() >= 4 {
        ticks
    } else {
        within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

fn latency(scenario: &ScenarioResult, peers: &[&PeerResult]) -> DrawResult<String> {
    // edgeplane's curve is drawn last, so it is on top where curves cross.
    let mut order: Vec<&PeerResult> = peers.to_vec();
    order.sort_by_key(|p| p.peer == EDGEPLANE);
    let curves: Vec<(&str, Vec<(f64, f64)>)> = order
        .iter()
        .map(|p| {
            let points = p
                .summary
                .curve
                .iter()
                .filter(|(pct, _)| pct.is_finite() && *pct < 100.0)
                .map(|&(pct, us)| (nines(pct), us.max(1) as f64))
                .collect();
            (p.peer.as_str(), points)
        })
        .collect();
    let all = || curves.iter().flat_map(|(_, points)| points.iter());
    let x_max = (all().map(|p| p.0).fold(0.0, f64::max) - 1e-6).ceil().clamp(4.0, 7.0);
    let y_lo = nice(all().map(|p| p.1).fold(f64::INFINITY, f64::min), true);
    let mut y_hi = nice(all().map(|p| p.1).fold(1.0, f64::max), false);
    if y_hi <= y_lo {
        y_hi = nice(y_lo * 1.5, false);
    }

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let x_ticks: Vec<f64> = (0..=x_max as usize).map(|n| n as f64).collect();
        // Log latency axis: with several peers the tail (p99.9 and beyond) is commonly 10-100x the
        // median, so a linear axis squeezes every peer's body of the distribution into one flat line
        // at the bottom, where the peers differ most often. On a log axis both the median and the
        // tail stay readable, and a given ratio between two peers is the same vertical gap anywhere.
        let mut chart = ChartBuilder::on(&plot)
            .caption(title(scenario, "latency percentiles"), (FONT, 22))
            .margin(16)
            .x_label_area_size(60)
            .y_label_area_size(76)
            .build_cartesian_2d(
                TickedAxis::new(0.0..x_max, x_ticks),
                (y_lo..y_hi).log_scale().with_key_points(log_ticks(y_lo, y_hi)),
            )?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|y| format::micros_tick(*y))
            .x_desc("percentile (HDR \"nines\" scale)")
            .y_desc("latency (log scale)")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        for (name, points) in &curves {
            let color = peer_color(name);
            if *name == DIRECT {
                chart.draw_series(DashedLineSeries::new(points.iter().copied(), 10, 6, color.stroke_width(2)))?;
            } else {
                let width = if *name == EDGEPLANE { 3 } else { 2 };
                chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(width)))?;
            }
        }
        let legend: Vec<Legend> = peers
            .iter()
            .map(|p| {
                let color = peer_color(&p.peer);
                let swatch = match p.peer.as_str() {
                    DIRECT => Swatch::Dashed(color, 2),
                    EDGEPLANE => Swatch::Line(color, 3),
                    _ => Swatch::Line(color, 2),
                };
                Legend { swatch, text: p.peer.clone() }
            })
            .collect();
        draw_legend(&side, &legend)?;
        root.present()?;
    }
    Ok(svg)
}

/// A linear axis with ticks exactly where given: at the peers' bars, at whole nines. (plotters'
/// `with_key_points` over an `f64` range leaves the axis without a label formatter.)
struct TickedAxis {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl TickedAxis {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> TickedAxis {
        TickedAxis { linear: range.into(), ticks }
    }
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold ticks: no minor grid lines between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

/// One bar: a median with its min–max whisker.
struct Bar {
    center: f64,
    half_width: f64,
    spread: Spread,
    color: RGBColor,
    /// Washed-out fill with an outline: the second bar of a group.
    light: bool,
    /// Printed above the bar.
    label: String,
}

impl Bar {
    /// The only bar of the peer at index `i`.
    fn single(i: usize, peer: &PeerResult, spread: Spread, label: String) -> Bar {
        Bar { center: i as f64 + 0.5, half_width: 0.3, spread, color: peer_color(&peer.peer), light: false, label }
    }

    fn top(&self) -> f64 {
        self.spread.max.max(self.spread.median)
    }
}

enum Swatch {
    Box(RGBColor),
    LightBox(RGBColor),
    Line(RGBColor, u32),
    Dashed(RGBColor, u32),
}

struct Legend {
    swatch: Swatch,
    text: String,
}

fn peer_legend(peers: &[&PeerResult], swatch: fn(RGBColor) -> Swatch) -> Vec<Legend> {
    peers.iter().map(|p| Legend { swatch: swatch(peer_color(&p.peer)), text: p.peer.clone() }).collect()
}

/// Bars over peer categories along x (category `i` spans `i..i + 1`).
struct BarChart<'a> {
    title: String,
    x_desc: String,
    y_desc: String,
    categories: Vec<&'a str>,
    bars: Vec<Bar>,
    /// Open-loop rates, drawn as a dashed line across category `i`.
    offered: Vec<(usize, f64)>,
    legend: Vec<Legend>,
    y_tick: &'a dyn Fn(f64) -> String,
}

impl BarChart<'_> {
    fn draw(&self) -> DrawResult<String> {
        let top = self.bars.iter().map(Bar::top).chain(self.offered.iter().map(|o| o.1)).fold(0.0, f64::max);
        // Headroom for the value labels above the tallest bar.
        let y_max = if top > 0.0 && top.is_finite() { top * 1.15 } else { 1.0 };
        let n = self.categories.len().max(1);
        let centers: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let (plot, side) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
            let mut chart = ChartBuilder::on(&plot)
                .caption(&self.title, (FONT, 22))
                .margin(16)
                .x_label_area_size(60)
                .y_label_area_size(76)
                .build_cartesian_2d(TickedAxis::new(0.0..n as f64, centers), 0.0..y_max)?;
            let category = |x: &f64| self.categories.get(x.floor() as usize).map(|c| c.to_string()).unwrap_or_default();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&category)
                .y_labels(8)
                .y_label_formatter(&|y| (self.y_tick)(*y))
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .bold_line_style(BLACK.mix(0.12))
                .light_line_style(BLACK.mix(0.04))
                .draw()?;

            let corners = |b: &Bar| [(b.center - b.half_width, 0.0), (b.center + b.half_width, b.spread.median)];
            chart.draw_series(self.bars.iter().map(|b| {
                let fill = if b.light { light(b.color) } else { b.color };
                Rectangle::new(corners(b), fill.filled())
            }))?;
            chart.draw_series(
                self.bars.iter().filter(|b| b.light).map(|b| Rectangle::new(corners(b), b.color.stroke_width(1))),
            )?;

            let whisker = BLACK.stroke_width(1);
            for b in self.bars.iter().filter(|b| b.spread.max > b.spread.min) {
                let (x, cap) = (b.center, b.half_width * 0.35);
                chart.draw_series([
                    PathElement::new(vec![(x, b.spread.min), (x, b.spread.max)], whisker),
                    PathElement::new(vec![(x - cap, b.spread.min), (x + cap, b.spread.min)], whisker),
                    PathElement::new(vec![(x - cap, b.spread.max), (x + cap, b.spread.max)], whisker),
                ])?;
            }

            for &(i, rate) in &self.offered {
                let points = [(i as f64 + 0.08, rate), (i as f64 + 0.92, rate)];
                chart.draw_series(DashedLineSeries::new(points, 8, 5, BLACK.stroke_width(2)))?;
            }

            let value = TextStyle::from((FONT, 13).into_font()).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            // Above the whisker, and above the offered-rate line where there is one.
            let label_at = |b: &Bar| {
                let category = b.center.floor() as usize;
                self.offered.iter().filter(|o| o.0 == category).map(|o| o.1).fold(b.top(), f64::max)
            };
            chart.draw_series(self.bars.iter().map(|b| {
                EmptyElement::at((b.center, label_at(b))) + Text::new(b.label.clone(), (0, -4), value.clone())
            }))?;

            draw_legend(&side, &self.legend)?;
            root.present()?;
        }
        Ok(svg)
    }
}

/// The legend panel, in the area's pixels.
fn draw_legend(area: &Area<'_>, entries: &[Legend]) -> DrawResult<()> {
    let text = TextStyle::from((FONT, 14).into_font()).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, entry) in entries.iter().enumerate() {
        let y = 64 + 24 * i as i32;
        match entry.swatch {
            Swatch::Box(color) => area.draw(&Rectangle::new([(8, y - 7), (28, y + 7)], color.filled()))?,
            Swatch::LightBox(color) => {
                area.draw(&Rectangle::new([(8, y - 7), (28, y + 7)], light(color).filled()))?;
                area.draw(&Rectangle::new([(8, y - 7), (28, y + 7)], color.stroke_width(1)))?;
            }
            Swatch::Line(color, width) => {
                area.draw(&PathElement::new(vec![(4, y), (32, y)], color.stroke_width(width)))?
            }
            Swatch::Dashed(color, width) => {
                for x in [4, 16, 28] {
                    area.draw(&PathElement::new(vec![(x, y), (x + 7, y)], color.stroke_width(width)))?;
                }
            }
        }
        area.draw(&Text::new(entry.text.clone(), (40, y), text.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        let labels: Vec<String> = (0..=5).map(|n| nines_label(n as f64)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn log_axis() {
        assert_eq!(nice(85.0, true), 50.0);
        assert_eq!(nice(85.0, false), 100.0);
        assert_eq!(nice(1_240.0, false), 2_000.0);
        assert_eq!(nice(100.0, true), 100.0);
        assert_eq!(log_ticks(50.0, 2_000.0), [50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0]);
        assert_eq!(log_ticks(50.0, 200.0), [50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0]);
    }

    #[test]
    fn colors_are_stable() {
        assert_eq!(peer_color("edgeplane"), RGBColor(213, 94, 0));
        assert_eq!(peer_color("someproxy"), peer_color("someproxy"));
        assert_ne!(peer_color("edgeplane"), peer_color("nginx"));
    }
}
