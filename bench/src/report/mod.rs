//! Writing a run's results: `results.json`, `report.md` and SVG charts.
//!
//! ```text
//! <dir>/results.json                      the Report, pretty JSON (`read` loads it back)
//! <dir>/report.md                         tables per scenario, skipped peers, chart links
//! <dir>/charts/<scenario>-throughput.svg  median bars with min–max whiskers
//! <dir>/charts/<scenario>-latency.svg     percentile curves (absent without latency data)
//! <dir>/charts/<scenario>-cpu.svg         CPU µs per request or message (absent without CPU data)
//! <dir>/charts/<scenario>-memory.svg      RSS and peak RSS (absent without memory data)
//! <dir>/charts/<scenario>-per-connection.svg  RSS per idle connection (idle scenarios only)
//! ```

mod charts;
mod format;
mod markdown;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::model::{PeerResult, Report, ScenarioResult, SCHEMA_VERSION};

pub use charts::ChartKind;
pub use markdown::markdown;

pub const RESULTS_JSON: &str = "results.json";
pub const REPORT_MD: &str = "report.md";
pub const CHARTS_DIR: &str = "charts";

/// The no-proxy baseline peer.
pub const DIRECT: &str = "direct";
/// The proxy this harness exists for.
pub const EDGEPLANE: &str = "edgeplane";

/// Writes `results.json`, `report.md` and the charts with data into `dir` (created if missing);
/// returns the files written.
pub fn write(report: &Report, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();

    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    let path = dir.join(RESULTS_JSON);
    fs::write(&path, json + "\n")?;
    written.push(path);

    let path = dir.join(REPORT_MD);
    fs::write(&path, markdown(report))?;
    written.push(path);

    let charts_dir = dir.join(CHARTS_DIR);
    for scenario in &report.scenarios {
        for kind in charts::kinds(scenario) {
            let svg = charts::render(scenario, kind)?;
            fs::create_dir_all(&charts_dir)?;
            let path = charts_dir.join(chart_file_name(&scenario.name, kind));
            fs::write(&path, svg)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Loads a `results.json` written by [`write`] (or the one inside a results directory),
/// so that its report and charts can be rendered again.
pub fn read(path: &Path) -> anyhow::Result<Report> {
    let path = if path.is_dir() { path.join(RESULTS_JSON) } else { path.to_path_buf() };
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;

    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let version: Version =
        serde_json::from_str(&text).with_context(|| format!("{}: not a benchmark results file", path.display()))?;
    if version.schema_version != SCHEMA_VERSION {
        bail!(
            "{}: results schema version {}, this harness reads version {SCHEMA_VERSION}",
            path.display(),
            version.schema_version
        );
    }
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `charts/<scenario>-<kind>.svg`, relative to the results directory.
pub fn chart_path(scenario: &str, kind: ChartKind) -> String {
    format!("{CHARTS_DIR}/{}", chart_file_name(scenario, kind))
}

fn chart_file_name(scenario: &str, kind: ChartKind) -> String {
    format!("{}-{}.svg", file_stem(scenario), kind.slug())
}

/// A scenario name as a file name: anything but `[A-Za-z0-9._-]` becomes `-`.
fn file_stem(name: &str) -> String {
    let stem: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    if stem.is_empty() || stem.chars().all(|c| c == '.') {
        "scenario".into()
    } else {
        stem
    }
}

/// Whether the peer's rounds measured per-request latency (bulk transfers don't).
fn has_latency(peer: &PeerResult) -> bool {
    let s = &peer.summary;
    s.p50_us.max > 0.0 || s.p99_us.max > 0.0 || s.p999_us.max > 0.0 || has_curve(peer)
}

fn has_curve(peer: &PeerResult) -> bool {
    peer.summary.curve.iter().any(|&(p, us)| us > 0 && p.is_finite() && p < 100.0)
}

/// Whether the peer has proxy processes whose memory was measured (`direct` has none).
fn has_memory(peer: &PeerResult) -> bool {
    peer.summary.rss_kib.max > 0.0 || peer.summary.peak_rss_kib.max > 0.0
}

fn find<'a>(scenario: &'a ScenarioResult, peer: &str) -> Option<&'a PeerResult> {
    scenario.peers.iter().find(|p| p.peer == peer)
}
